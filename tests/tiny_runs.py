"""Shared builders of tiny untrained runs for the tests (no Ray): perturbed models and the saved-run layout.

Imported by the sampling, serve and video-serve test helpers. ``tests/`` is on ``sys.path`` because
``tests/conftest.py`` lives there (pytest's rootdir conftest), so any test module can import it.
"""
from __future__ import annotations

import textwrap

import torch

from atoll.models.checkpoint import save_pretrained
from atoll.spec import loads
from atoll.store import open_store


def tiny_job(store: str, name: str, k: int, *, experts: str = "model: DiT-XXS/2", extra: str = ""):
    """The digits job a tiny run is saved under: ``experts`` is the inside of the experts block,
    ``extra`` more spec-level YAML (e.g. a ``serve:`` or ``sample:`` block)."""
    return loads(textwrap.dedent(f"""
        apiVersion: atoll/v1
        kind: Job
        metadata: {{name: {name}}}
        spec:
          store: {{uri: "{store}"}}
          data: {{source: {{type: digits}}}}
          partition: {{k: {k}, fineClusters: 16}}
          experts: {{{experts}}}
          router: {{model: Router-XS}}
        """) + textwrap.indent(textwrap.dedent(extra), "  "))


def perturbed(model: torch.nn.Module, seed: int, scale: float) -> torch.nn.Module:
    """Adds seeded noise to every weight (adaLN-Zero starts at a zero velocity, which would hide
    differences between experts, or between a served and a library result)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def write_run(root: str, job, experts: list[torch.nn.Module], router: torch.nn.Module | None, *,
              class_names: list[str], count: int = 0, partition: dict | None = None):
    """Writes ``<root>/<job.name>/`` like a trained run: job.json, the data manifest (and a partition
    manifest when given), ``experts/00k/model`` + their manifests, ``router/model``. Returns the run store."""
    run = open_store(root).sub(job.name)
    run.put_json("job.json", {"spec": job.model_dump(mode="json", by_alias=True)})
    run.commit("data", {"count": count, "num_classes": len(class_names), "class_names": class_names, "shards": []})
    if partition is not None:
        run.commit("partition", partition)
    for i, e in enumerate(experts):
        save_pretrained(e, run, f"experts/{i:03d}/model")
        run.commit(f"experts/{i:03d}", {"name": f"expert-{i:03d}"})
    if router is not None:
        save_pretrained(router, run, "router/model")
        run.commit("router", {"name": "router"})
    return run


def grow_by_hand(run, num_experts: int, seed: int = 1) -> dict:
    """Version 2 of a saved run as ``atoll add-experts`` leaves it, without training: expert ``num_experts``
    (a perturbed copy of expert 0), the router widened by one head, the registry naming both."""
    from atoll.experts_registry import REGISTRY, implicit
    from atoll.models.checkpoint import from_pretrained
    from atoll.models.router import with_heads

    new = num_experts
    save_pretrained(perturbed(from_pretrained(run, "experts/000/model"), seed, 0.05), run, f"experts/{new:03d}/model")
    run.commit(f"experts/{new:03d}", {"name": f"expert-{new:03d}"})
    wide = with_heads(from_pretrained(run, "router/model"), list(range(num_experts)) + [None], seed=seed)
    save_pretrained(wide, run, "router/versions/v2/model")
    reg = implicit(run, num_experts)
    reg.update(version=2, router="router/versions/v2/model",
               experts=reg["experts"] + [{**reg["experts"][0], "id": new, "prefix": f"experts/{new:03d}", "version": 2}])
    run.put_json(REGISTRY, reg)  # last, atomically: loaders see version 1 or version 2
    return reg
