"""A tiny untrained K=2 TEXT-conditioned run (8x8 DiT-XXS/2 experts on MiniLM states + an unconditional
router) in a file store; no Ray."""
from __future__ import annotations

from tiny_runs import perturbed, tiny_job, write_run

from atoll.models.dit import DiTConfig
from atoll.models.router import RouterConfig

CLASS_NAMES = ["zero", "one", "two", "three"]


def text_job(store: str, name: str, k: int, serve: str = ""):
    return tiny_job(store, name, k, experts="model: DiT-XXS/2, conditioning: text", extra=serve)


def save_text_run(root: str, name: str, k: int = 2, *, serve: str = "") -> tuple[object, object]:
    """Writes ``<root>/<name>/`` in the run layout; the experts' text conditioning gets real weight."""
    job = text_job(root, name, k, serve)
    experts = [perturbed(DiTConfig("DiT-XXS/2", 8, 1, text_dim=384).build(), 10 + i, 0.03) for i in range(k)]
    router = perturbed(RouterConfig("Router-XS", 8, 1, num_experts=k).build(), 200, 0.05)
    run = write_run(root, job, experts, router, class_names=CLASS_NAMES, count=40,
                    partition={"k": k, "cluster_sizes": [25, 15] + [0] * (k - 2)})
    return job, run
