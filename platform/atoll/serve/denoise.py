"""One request's denoising loop, as the ingress runs it: per step router -> chosen experts -> combine -> Euler.

Pure asyncio + torch: the router and the experts are async callables (``DeploymentHandle``
calls in the app, plain functions in tests). With every expert healthy this computes what
``Ensemble.sample`` computes, with the same pieces (``initial_noise``, ``select``,
``group_rows``, ``combine``, ``EulerSampler``). Experts that are down are left out: the
router's probabilities are restricted to the healthy experts and renormalised, ``topN``
becomes ``top(min(N, healthy))``, and the step is retried when an expert call fails.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import torch

from atoll.models.samplers import make_sampler
from atoll.sampling.ensemble import combine, group_rows
from atoll.sampling.noise import initial_noise
from atoll.sampling.strategies import select

RouteFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], Awaitable[torch.Tensor]]
ExpertFn = Callable[[int, torch.Tensor, torch.Tensor, "torch.Tensor | None", float], Awaitable[torch.Tensor]]


class NoHealthyExpert(RuntimeError):
    """Every expert is down: the request cannot be served now (503)."""


class Health:
    """Which experts may get rows: marked down on a failed call for ``retry_after_s``, or by a status poll."""

    def __init__(self, num_experts: int, retry_after_s: float = 2.0):
        self.num_experts, self.retry_after_s = num_experts, retry_after_s
        self._down_until = [0.0] * num_experts
        self._status_down: set[int] = set()

    def mark_failed(self, k: int) -> None:
        self._down_until[k] = time.monotonic() + self.retry_after_s

    def set_status_down(self, down: set[int]) -> None:
        self._status_down = set(down)

    def healthy(self) -> list[int]:
        now = time.monotonic()
        return [k for k in range(self.num_experts) if self._down_until[k] <= now and k not in self._status_down]


@dataclass
class Outcome:
    images: torch.Tensor                       # float [N, C, H, W] (video: [N, C, T, H, W]) in model space
    expert_rows: list[int]                     # rows each expert evaluated (over all steps)
    experts_per_step: list[list[int]]          # experts that got rows at each step
    degraded: set[int] = field(default_factory=set)
    router_s: float = 0.0
    experts_s: float = 0.0


def restrict(probs: torch.Tensor, strategy: str, healthy: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``select`` over the healthy experts only; with all healthy, exactly ``select(probs, strategy)``."""
    K = probs.shape[1]
    if len(healthy) == K:
        return select(probs, strategy)
    if not healthy:
        raise NoHealthyExpert("no expert is healthy; Serve is restarting them, retry in a few seconds")
    sub = probs[:, healthy]
    sub = sub / sub.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    if strategy != "full":
        strategy = f"top{min(int(strategy[3:]), len(healthy))}"
    idx, w = select(sub, strategy)
    return torch.tensor(healthy, dtype=torch.long)[idx], w


async def velocity(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, guidance: float, strategy: str,
                   route: RouteFn, expert: ExpertFn, health: Health, out: Outcome) -> torch.Tensor:
    """The ensemble velocity of one step, leaving failed experts out (retried at most K times)."""
    t0 = time.perf_counter()
    probs = await route(x, t, y)
    out.router_s += time.perf_counter() - t0
    K = probs.shape[1]
    for _ in range(K):
        healthy = health.healthy()
        idx, w = restrict(probs, strategy, healthy)
        groups = group_rows(idx, K)
        t1 = time.perf_counter()
        results = await asyncio.gather(*[expert(k, x[rows], t[rows], None if y is None else y[rows], guidance)
                                         for k, rows, _ in groups], return_exceptions=True)
        out.experts_s += time.perf_counter() - t1
        failed = [k for (k, _, _), r in zip(groups, results) if isinstance(r, BaseException)]
        out.degraded.update(k for k in range(K) if k not in healthy)
        if not failed:
            for k, rows, _ in groups:
                out.expert_rows[k] += rows.numel()
            out.experts_per_step.append([k for k, _, _ in groups])
            return combine(x, w, groups, results)
        for k in failed:
            health.mark_failed(k)
        out.degraded.update(failed)
    raise NoHealthyExpert(f"experts {sorted(out.degraded)} failed; retry in a few seconds")


async def denoise(shape: tuple[int, ...], n: int, label: int | None, *, steps: int, guidance: float,
                  seed: int, strategy: str, num_experts: int, route: RouteFn, expert: ExpertFn,
                  health: Health) -> Outcome:
    """Samples ``n`` images (``shape`` ``(C, H, W)``) or clips (``(C, T, H, W)``) from noise seeded by
    ``(seed, i)``; returns them in model space ``[-1, 1]``."""
    x = initial_noise(shape, seed, range(n))
    y = None if label is None else torch.full((n,), label, dtype=torch.long)
    out = Outcome(images=x, expert_rows=[0] * num_experts, experts_per_step=[])
    s = make_sampler("euler")
    s.set_timesteps(steps)
    for i in range(s.num_steps):
        v = await velocity(x, s.t_batch(i, x), y, guidance, strategy, route, expert, health, out)
        x = s.step(v, i, x)
    out.images = x.float()
    return out
