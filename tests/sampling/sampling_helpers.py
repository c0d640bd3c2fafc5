"""Tiny untrained (but perturbed, so outputs differ) experts and routers, and saved runs in a file store.

No Ray: models are built in-process and written with ``save_pretrained``.
"""
from __future__ import annotations

import textwrap

import torch

from atoll.models.checkpoint import save_pretrained
from atoll.models.dit import DiTConfig
from atoll.models.router import RouterConfig
from atoll.spec import loads
from atoll.store import open_store

NUM_CLASSES = 4
CLASS_NAMES = [f"c{i}" for i in range(NUM_CLASSES)]


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.03) -> torch.nn.Module:
    """Adds noise to every weight (adaLN-Zero starts at a zero velocity, which would hide differences)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def make_experts(k: int, num_classes: int = NUM_CLASSES, seed: int = 0) -> list[torch.nn.Module]:
    return [perturbed(DiTConfig("DiT-XXS/2", 8, 1, num_classes=num_classes).build(), seed + i) for i in range(k)]


def make_router(k: int, seed: int = 100) -> torch.nn.Module:
    return perturbed(RouterConfig("Router-XS", 8, 1, num_experts=k).build(), seed, scale=0.05)


def job_yaml(store: str, name: str, k: int, mode: str = "ensemble", strategies: str = "[top1, full]") -> object:
    return loads(textwrap.dedent(f"""
        apiVersion: atoll/v1
        kind: Job
        metadata: {{name: {name}}}
        spec:
          store: {{uri: "{store}"}}
          data: {{source: {{type: digits}}}}
          partition: {{k: {k}, fineClusters: 16}}
          experts: {{model: DiT-XXS/2, mode: {mode}}}
          router: {{model: Router-XS}}
          sample: {{strategies: {strategies}, numPerClass: 2, steps: 3, guidance: 1.5, seed: 0}}
        """))


def save_run(root: str, name: str, k: int, *, monolith: bool = False, router: bool = True) -> tuple[object, object]:
    """Writes ``<root>/<name>/`` like a trained run: job.json, data manifest, experts, router. Returns (job, run)."""
    job = job_yaml(root, name, k, mode="monolith" if monolith else "ensemble")
    run = open_store(root).sub(name)
    run.put_json("job.json", {"spec": job.model_dump(mode="json", by_alias=True)})
    run.commit("data", {"count": 0, "num_classes": NUM_CLASSES, "class_names": CLASS_NAMES, "shards": []})
    for i, e in enumerate(make_experts(1 if monolith else k)):
        save_pretrained(e, run, f"experts/{i:03d}/model")
        run.commit(f"experts/{i:03d}", {"name": f"expert-{i:03d}"})
    if router and not monolith:
        save_pretrained(make_router(k), run, "router/model")
        run.commit("router", {"name": "router"})
    return job, run


