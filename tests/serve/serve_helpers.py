"""A tiny untrained K=2 run (perturbed DiT-XXS/2 experts + a router) in a file store; no Ray."""
from __future__ import annotations

from tiny_runs import perturbed, tiny_job, write_run

from atoll.models.dit import DiTConfig
from atoll.models.router import RouterConfig

CLASS_NAMES = ["zero", "one", "two", "three"]


def serve_job(store: str, name: str, k: int, size: str = "DiT-XXS/2", image: int = 8, serve: str = ""):
    return tiny_job(store, name, k, experts=f"model: {size}", extra=serve)


def save_tiny_run(root: str, name: str, k: int = 2, *, size: str = "DiT-XXS/2", image: int = 8,
                  channels: int = 1, serve: str = "") -> tuple[object, object]:
    """Writes ``<root>/<name>/`` in the run layout (job.json, data + partition manifests, experts, router)."""
    job = serve_job(root, name, k, size, image, serve)
    experts = [perturbed(DiTConfig(size, image, channels, num_classes=len(CLASS_NAMES)).build(), i, 0.03)
               for i in range(k)]
    router = perturbed(RouterConfig("Router-XS", image, channels, num_experts=k).build(), 100, 0.05)
    partition = {"k": k, "cluster_sizes": [30, 10] + [0] * (k - 2),
                 "agreement": {"label_histogram": [[20, 10, 0, 0], [0, 0, 4, 6]] + [[0] * 4] * (k - 2)}}
    run = write_run(root, job, experts, router, class_names=CLASS_NAMES, count=40, partition=partition)
    return job, run



