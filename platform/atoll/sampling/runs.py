"""Locating and loading a trained run: its experts, its router and its class names.

A run is ``<store>/<name>/`` with ``experts/000/model/`` ... (committed
checkpoints), ``router/model/`` (absent for a monolith), ``data/manifest.json``
(``num_classes``, ``class_names``) and ``job.json`` (``{"spec": ...}``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from atoll.sampling.errors import RunNotFound
from atoll.store import S3Config, Store, open_store

_EXPERT_DIR = re.compile(r"experts/(\d{3})/")


@dataclass
class RunInfo:
    """What a run holds: ``num_experts``, whether it is a monolith, its classes."""

    store: Store
    num_experts: int             # the experts served: the registry's active ones (all K without a registry)
    monolith: bool
    class_names: list[str] = field(default_factory=list)
    num_classes: int = 0
    job: dict | None = None
    latents: dict | None = None  # latent space: the encode stage's manifest (VAE, shapes)
    expert_ids: list[int] = field(default_factory=list)  # served expert i is experts/<expert_ids[i]>
    router_prefix: str = "router/model"
    total_experts: int = 0       # every expert the run has had (retired ones too)
    version: int = 1             # experts/registry.json's version (1: as trained)

    def expert_prefix(self, i: int) -> str:
        """The checkpoint of served expert ``i`` (``experts/00k/model``)."""
        return checkpoint_prefix(self.expert_ids[i])


def open_run_uri(run: str | Store, s3: S3Config | None = None) -> Store:
    """A run URI (``./runs/quickstart``, ``file:///...``, ``s3://b/p/quickstart``), a job YAML, or a Store."""
    if isinstance(run, Store):
        return run
    if run.endswith((".yaml", ".yml")) and Path(run).is_file():
        from atoll.run_store import open_run
        from atoll.spec import load

        return open_run(load(run), s3=s3)
    return open_store(run, s3)


def _expert_count(store: Store, job: dict | None) -> tuple[int, bool]:
    spec = (job or {}).get("spec", {}).get("spec", {})
    if spec:
        monolith = spec.get("experts", {}).get("mode") == "monolith"
        return (1 if monolith else int(spec.get("partition", {}).get("k", 0))), monolith
    ids = {int(m.group(1)) for k in store.list("experts") if (m := _EXPERT_DIR.match(k))}
    n = max(ids) + 1 if ids else 0
    return n, n == 1 and not store.exists("router/model/manifest.json")


def data_store(store: Store, body: dict) -> Store:
    """The run whose data the run at ``store`` was trained on: itself, or a distilled student's teacher
    (``experts.distillFrom``, a run in the same store; the student holds no data of its own)."""
    teacher = body.get("experts", {}).get("distillFrom")
    if not teacher:
        return store
    from atoll.run_store import sibling_run

    return sibling_run(store, teacher)


def inspect_run(store: Store) -> RunInfo:
    """Reads the run's layout; raises ``RunNotFound`` (naming the URI and the fix) when it is not a run."""
    job = store.get_json("job.json") if store.exists("job.json") else None
    n, monolith = _expert_count(store, job)
    if n < 1:
        raise RunNotFound(f"no Atoll run at {store.uri}: found no job.json and no experts/000/; pass the run folder "
                          "(<store>/<job name>, e.g. ./runs/quickstart or s3://bucket/prefix/quickstart) or the job "
                          "YAML, and train it first with `atoll run JOB.yaml`")
    body = (job or {}).get("spec", {}).get("spec", {})
    facts = data_store(store, body)
    data = facts.manifest("data") or {}
    names = list(data.get("class_names") or [])
    enabled = body.get("latents", {}).get("enabled", False)
    latents = facts.manifest("latents") if enabled else None
    if enabled and latents is None:
        raise RunNotFound(f"the run at {store.uri} trains on latents, but latents/ is not committed; run its "
                          "encode stage (`atoll run JOB.yaml`)")
    from atoll.experts_registry import active, load

    reg = load(store, n) if not monolith else None
    ids = active(reg) if reg else list(range(n))
    return RunInfo(store=store, num_experts=len(ids), monolith=monolith, class_names=names,
                   num_classes=int(data.get("num_classes") or len(names)), job=job, latents=latents,
                   expert_ids=ids, router_prefix=reg["router"] if reg else "router/model",
                   total_experts=len(reg["experts"]) if reg else n,
                   version=reg["version"] if reg else 1)


def checkpoint_prefix(k: int | None) -> str:
    """``experts/00k/model`` for expert ``k``; ``router/model`` for ``None``."""
    return "router/model" if k is None else f"experts/{k:03d}/model"


def snapshot_prefix(k: int, step: int) -> str:
    """``experts/00k/snapshots/step-00NNNN``: expert ``k``'s EMA weights at ``step`` (training.snapshotEvery)."""
    return f"experts/{k:03d}/snapshots/step-{step:06d}"


def snapshot_steps(store: Store, k: int = 0) -> list[int]:
    """The committed snapshot steps of expert ``k``, ascending."""
    found = re.compile(rf"experts/{k:03d}/snapshots/step-(\d{{6,}})/manifest\.json$")
    return sorted(int(m.group(1)) for key in store.list(f"experts/{k:03d}/snapshots") if (m := found.match(key)))


def require_checkpoint(store: Store, k: int | None, num_experts: int, step: int | None = None,
                       router_prefix: str = "router/model") -> str:
    """The checkpoint prefix if it is committed, else ``RunNotFound`` naming its URI and the fix.

    ``k``: an expert id, or None for the router (at ``router_prefix``: ``RunInfo.router_prefix``).
    ``step``: an expert's training snapshot instead of its final model (the router is always final).
    """
    if step is not None and k is not None:
        prefix = snapshot_prefix(k, step)
        if store.manifest(prefix) is None:
            have = snapshot_steps(store, k)
            raise RunNotFound(f"expert {k} has no snapshot at step {step} ({store.url(prefix)}); its snapshots: "
                              f"{have or 'none'}. Snapshots are written when the job sets "
                              "experts.training.snapshotEvery; pick one of the steps listed")
        return prefix
    prefix = router_prefix if k is None else checkpoint_prefix(k)
    if store.manifest(prefix) is None:
        what = "the router" if k is None else f"expert {k} (of {num_experts})"
        raise RunNotFound(f"{what} has no committed checkpoint at {store.url(prefix)} (no manifest.json): "
                          "the run is not trained that far; run `atoll run JOB.yaml` to finish it "
                          "(completed stages are skipped), or check the run URI")
    return prefix
