"""A tiny untrained K=2 run (perturbed DiT-XXS/2 experts + a router) in a file store; no Ray."""
from __future__ import annotations

import textwrap

import torch

from atoll.models.checkpoint import save_pretrained
from atoll.models.dit import DiTConfig
from atoll.models.router import RouterConfig
from atoll.spec import loads
from atoll.store import open_store

CLASS_NAMES = ["zero", "one", "two", "three"]


def _perturbed(model: torch.nn.Module, seed: int, scale: float) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def serve_job(store: str, name: str, k: int, size: str = "DiT-XXS/2", image: int = 8, serve: str = ""):
    return loads(textwrap.dedent(f"""
        apiVersion: atoll/v1
        kind: Job
        metadata: {{name: {name}}}
        spec:
          store: {{uri: "{store}"}}
          data: {{source: {{type: digits}}}}
          partition: {{k: {k}, fineClusters: 16}}
          experts: {{model: {size}}}
          router: {{model: Router-XS}}
        """) + textwrap.indent(textwrap.dedent(serve), "  "))


def save_tiny_run(root: str, name: str, k: int = 2, *, size: str = "DiT-XXS/2", image: int = 8,
                  channels: int = 1, serve: str = "") -> tuple[object, object]:
    """Writes ``<root>/<name>/`` in the run layout (job.json, data + partition manifests, experts, router)."""
    job = serve_job(root, name, k, size, image, serve)
    run = open_store(root).sub(name)
    run.put_json("job.json", {"spec": job.model_dump(mode="json", by_alias=True)})
    run.commit("data", {"count": 40, "num_classes": len(CLASS_NAMES), "class_names": CLASS_NAMES, "shards": []})
    run.commit("partition", {"k": k, "cluster_sizes": [30, 10] + [0] * (k - 2),
                             "agreement": {"label_histogram": [[20, 10, 0, 0], [0, 0, 4, 6]] + [[0] * 4] * (k - 2)}})
    for i in range(k):
        e = _perturbed(DiTConfig(size, image, channels, num_classes=len(CLASS_NAMES)).build(), i, 0.03)
        save_pretrained(e, run, f"experts/{i:03d}/model")
        run.commit(f"experts/{i:03d}", {"name": f"expert-{i:03d}"})
    save_pretrained(_perturbed(RouterConfig("Router-XS", image, channels, num_experts=k).build(), 100, 0.05),
                    run, "router/model")
    run.commit("router", {"name": "router"})
    return job, run


