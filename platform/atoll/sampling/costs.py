"""Analytic sampling cost: GFLOPs per image for a strategy (from ``atoll.models.flops``).

Per model evaluation: the router once (none for a single expert) plus each
selected expert once, twice with classifier-free guidance (conditional and
null-class passes). Per image: that times the evaluations (Euler: ``steps``,
Heun: ``2 * steps``).
"""
from __future__ import annotations

from atoll.models.flops import forward_flops
from atoll.sampling.strategies import num_selected


def evaluations(steps: int, sampler: str) -> int:
    """Model evaluations of one sampling run: Euler 1 per step, Heun 2 per step."""
    return steps * (2 if sampler == "heun" else 1)


def flops_per_evaluation(expert_configs: list, router_config, strategy: str, cfg: bool) -> float:
    """FLOPs of one ensemble evaluation of one sample (the experts are assumed the same size)."""
    k = num_selected(strategy, len(expert_configs))
    expert = forward_flops(expert_configs[0])
    router = forward_flops(router_config) if router_config is not None and len(expert_configs) > 1 else 0
    return router + k * expert * (2 if cfg else 1)


def gflops_per_image(expert_configs: list, router_config, strategy: str, *, steps: int, sampler: str,
                     cfg: bool) -> float:
    """GFLOPs to sample one image with ``strategy``."""
    return evaluations(steps, sampler) * flops_per_evaluation(expert_configs, router_config, strategy, cfg) / 1e9
