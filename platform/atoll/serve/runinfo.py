"""What the ingress needs to know about a run, read from the store without loading any weights."""
from __future__ import annotations

from dataclasses import dataclass

from atoll.sampling.runs import inspect_run, open_run_uri, require_checkpoint
from atoll.serve.schema import RunFacts
from atoll.store import S3Config, Store


@dataclass(frozen=True)
class RunSource:
    """Where the run is: a run URI or job YAML, plus S3 settings (picklable; every replica opens it itself)."""

    uri: str
    s3: S3Config | None = None

    def open(self) -> Store:
        return open_run_uri(self.uri, self.s3)


def expert_name(k: int) -> str:
    return f"expert-{k:03d}"


def deployment_name(k: int) -> str:
    """The Serve deployment of expert ``k`` (the Helm chart and Serve config use the same names)."""
    return f"Expert-{k:03d}"


def run_facts(store: Store) -> RunFacts:
    """Experts, classes and the sample shape (from expert 0's ``config.json``). ``RunNotFound`` if not a run.

    A video run (``frames`` in the config) has ``image_shape = (C, T, H, W)`` and ``frames = T``.
    """
    from atoll.models.checkpoint import load_config

    info = inspect_run(store)
    for k in info.expert_ids:
        require_checkpoint(store, k, info.total_experts)
    if info.num_experts > 1:
        require_checkpoint(store, None, info.num_experts, router_prefix=info.router_prefix)
    cfg = load_config(store, info.expert_prefix(0))["config"]
    size, chans = int(cfg["input_size"]), int(cfg["in_channels"])
    num_classes = int(cfg.get("num_classes") or 0)
    names = info.class_names or [str(i) for i in range(num_classes)]
    frames = int(cfg.get("frames") or 0)
    shape = (chans, frames, size, size) if frames else (chans, size, size)
    latent = None
    if info.latents is not None:  # the models sample latents; clients get the decoded images
        latent, shape = shape, tuple(int(v) for v in info.latents["data_image_shape"])
    return RunFacts(num_experts=info.num_experts, num_classes=num_classes, class_names=tuple(names),
                    image_shape=shape, text_conditioned=cfg.get("text_dim") is not None, frames=frames,
                    latent_shape=latent, expert_ids=tuple(info.expert_ids), version=info.version)


def expert_heads(store: Store, k: int = 0) -> int:
    """Attention heads of expert ``k`` (from its ``config.json``): what a sequence-parallel degree must divide."""
    from atoll.models.checkpoint import load_config
    from atoll.models.dit import DIT_SIZES
    from atoll.models.video_dit import VDIT_SIZES

    size = load_config(store, inspect_run(store).expert_prefix(k))["config"]["size"]
    return int({**DIT_SIZES, **VDIT_SIZES}[size]["num_heads"])


def experts_summary(store: Store, facts: RunFacts) -> list[dict]:
    """Per served expert ``k``: name, deployment, ``expert`` (its id in the run, i.e. its folder
    ``experts/00N``: served experts are numbered 0..K-1, and after a retire (``experts/registry.json``)
    the served numbers close up while the run's ids stay), partition size and top labels (when the run
    has a partition manifest)."""
    part = store.manifest("partition") or {}
    sizes = part.get("cluster_sizes") or []
    hist = (part.get("agreement") or {}).get("label_histogram") or []
    ids = list(facts.expert_ids) or list(range(facts.num_experts))
    out = []
    for k in range(facts.num_experts):
        e = ids[k]
        row = {"id": k, "name": expert_name(k), "deployment": deployment_name(k), "expert": e,
               "partition_size": sizes[e] if e < len(sizes) else None, "top_labels": []}
        if e < len(hist) and sum(hist[e]):
            h, total = hist[e], sum(hist[e])
            order = sorted(range(len(h)), key=lambda i: -h[i])[:3]
            row["top_labels"] = [{"class": facts.class_names[i] if i < len(facts.class_names) else str(i),
                                  "fraction": round(h[i] / total, 4)} for i in order if h[i]]
        out.append(row)
    return out
