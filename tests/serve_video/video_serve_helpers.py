"""A tiny untrained K=2 VIDEO run (perturbed VDiT-XXS/4 experts + a class-conditional router) in a file store.

No Ray here. adaLN-Zero initialises the experts to an exactly zero velocity, so every parameter
gets seeded noise: without it the served and the library videos would agree whatever the code did.
"""
from __future__ import annotations

import textwrap

import torch
from tiny_runs import perturbed, write_run

from atoll.models.router import RouterConfig
from atoll.models.video_dit import VDIT_SIZES, VideoDiTConfig
from atoll.spec import loads

SIZE = "VDiT-XXS/4"
FRAMES, SIDE, CHANNELS = 4, 16, 1
CLASS_NAMES = [f"digit-{i}" for i in range(10)]
ROUTER_SEED = 101  # with it, top1 sends the test request's rows to both experts


def build(config, seed: int, scale: float) -> torch.nn.Module:
    """``config.build()`` with a seeded init (the default init draws from torch's global RNG), then perturbed."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = config.build()
    return perturbed(model, seed, scale)


def video_job(store: str, name: str, k: int = 2, serve: str = ""):
    return loads(textwrap.dedent(f"""
        apiVersion: atoll/v1
        kind: Job
        metadata: {{name: {name}}}
        spec:
          store: {{uri: "{store}"}}
          data: {{source: {{type: moving-clips, images: digits, numClips: 64, frames: {FRAMES}, size: {SIDE}}}}}
          partition: {{k: {k}, fineClusters: 16}}
          experts: {{model: {SIZE}}}
          router: {{model: Router-XS}}
        """) + textwrap.indent(textwrap.dedent(serve), "  "))


def expert_config() -> VideoDiTConfig:
    return VideoDiTConfig(SIZE, input_size=SIDE, frames=FRAMES, in_channels=CHANNELS, num_classes=len(CLASS_NAMES),
                          temporal_patch=VDIT_SIZES[SIZE].get("temporal_patch", 1))


def save_video_run(root: str, name: str, k: int = 2, *, serve: str = "") -> tuple[object, object]:
    """Writes ``<root>/<name>/`` in the run layout (job.json, data + partition manifests, experts, router)."""
    job = video_job(root, name, k, serve)
    experts = [build(expert_config(), 10 + i, 0.05) for i in range(k)]
    router = RouterConfig(size="Router-XS", input_size=SIDE, in_channels=CHANNELS, num_experts=k,
                          num_classes=len(CLASS_NAMES))
    run = write_run(root, job, experts, build(router, ROUTER_SEED, 0.05), class_names=CLASS_NAMES, count=64,
                    partition={"k": k, "cluster_sizes": [40, 24] + [0] * (k - 2)})
    return job, run
