"""Which experts may take rows, and the routing over the healthy ones (pure torch, no Ray).

``Health`` marks an expert down for ``retry_after_s`` after a failed call, or while Serve's status
shows no running replica of it. ``restrict(probs, strategy, healthy)`` is ``select`` over the
healthy experts only: with every expert healthy it IS ``select(probs, strategy)``; otherwise the
router's probabilities are restricted to the healthy experts and renormalised, and ``topN``
becomes ``top(min(N, healthy))`` (``serve.onExpertFailure: reroute``).
"""
from __future__ import annotations

import time

import torch

from atoll.sampling.strategies import select


class Unavailable(RuntimeError):
    """The request cannot be served now (HTTP 503 with ``Retry-After``)."""

    def __init__(self, message: str, retry_after_s: float = 2.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NoHealthyExpert(Unavailable):
    """Every expert is down (or every expert a request needs, with ``onExpertFailure: fail``)."""


class ExpertDown(RuntimeError):
    """An expert call failed for a reason outside the request (its replica or rank group died, or it timed out)."""

    def __init__(self, k: int, message: str):
        super().__init__(message)
        self.k = k


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
    return torch.tensor(healthy, dtype=torch.long, device=probs.device)[idx], w


def cause_of(err: BaseException) -> BaseException:
    """The exception raised in a replica, under Ray's ``RayTaskError`` wrapper (``err`` itself otherwise)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err
