"""Tiny untrained (but perturbed, so outputs differ) experts and routers, and saved runs in a file store.

No Ray: models are built in-process and written with ``save_pretrained``.
"""
from __future__ import annotations

import torch

from tiny_runs import perturbed as _perturbed
from tiny_runs import tiny_job, write_run

from atoll.models.dit import DiTConfig
from atoll.models.router import RouterConfig

NUM_CLASSES = 4
CLASS_NAMES = [f"c{i}" for i in range(NUM_CLASSES)]


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.03) -> torch.nn.Module:
    """``tiny_runs.perturbed`` with this module's default scale."""
    return _perturbed(model, seed, scale)


def make_experts(k: int, num_classes: int = NUM_CLASSES, seed: int = 0) -> list[torch.nn.Module]:
    return [perturbed(DiTConfig("DiT-XXS/2", 8, 1, num_classes=num_classes).build(), seed + i) for i in range(k)]


def make_router(k: int, seed: int = 100) -> torch.nn.Module:
    return perturbed(RouterConfig("Router-XS", 8, 1, num_experts=k).build(), seed, scale=0.05)


def job_yaml(store: str, name: str, k: int, mode: str = "ensemble", strategies: str = "[top1, full]") -> object:
    return tiny_job(store, name, k, experts=f"model: DiT-XXS/2, mode: {mode}",
                    extra=f"sample: {{strategies: {strategies}, numPerClass: 2, steps: 3, guidance: 1.5, seed: 0}}")


def save_run(root: str, name: str, k: int, *, monolith: bool = False, router: bool = True) -> tuple[object, object]:
    """Writes ``<root>/<name>/`` like a trained run: job.json, data manifest, experts, router. Returns (job, run)."""
    job = job_yaml(root, name, k, mode="monolith" if monolith else "ensemble")
    run = write_run(root, job, make_experts(1 if monolith else k), make_router(k) if router and not monolith else None,
                    class_names=CLASS_NAMES)
    return job, run


