"""Where the scheduler's models run: the router here, each expert here or behind an async call (no Ray).

``LocalEngine(router, experts, ...)``: the router (None for one expert) is an ``nn.Module`` on this
process's device; each expert is either an ``nn.Module`` on the same device (the ensemble
replica) or an async callable ``(ExpertBatch) -> velocity`` (a sequence-parallel rank group, or a
remote expert deployment in distributed mode). Module work runs on the event loop itself: a
worker thread would keep the loop free during a tick, but on a busy CPU every hand-over to it
waits for the OS to wake it (measured: +10-15% per request on the loaded 2-core machine, two
hand-overs per tick), and requests that arrive during a tick only join at the next tick boundary
anyway (the scheduler yields between ticks). Async experts of one tick run concurrently.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import torch
from torch import nn

from atoll.sampling.ensemble import route_probs
from atoll.serve.expert_batch import ExpertBatch, batch_velocity

AsyncExpert = Callable[[ExpertBatch], Awaitable[torch.Tensor]]


class LocalEngine:
    """Router + experts for a ``Scheduler`` (see the module docstring)."""

    def __init__(self, router: nn.Module | None, experts: Sequence[nn.Module | AsyncExpert], *,
                 device: torch.device, num_classes: int, image_shape: tuple[int, ...],
                 text_encoder: Callable[[], object] | None = None):
        if len(experts) > 1 and router is None:
            raise ValueError(f"{len(experts)} experts need a router")
        self.router, self.experts = router, list(experts)
        self.device, self.num_classes, self.image_shape = torch.device(device), int(num_classes), tuple(image_shape)
        self.num_experts = len(self.experts)
        self._make_encoder, self._encoder = text_encoder, None

    async def route(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return route_probs(self.router, x, t, y)

    def _local(self, batches: dict[int, ExpertBatch]) -> dict:
        out: dict = {}
        for k, b in batches.items():
            try:
                out[k] = batch_velocity(self.experts[k], b, self.num_classes)
            except Exception as e:  # reported per expert; the scheduler decides
                out[k] = e
        return out

    async def velocities(self, batches: dict[int, ExpertBatch]) -> dict:
        local = {k: b for k, b in batches.items() if isinstance(self.experts[k], nn.Module)}
        calls = {k: asyncio.ensure_future(self.experts[k](b)) for k, b in batches.items() if k not in local}
        out = self._local(local) if local else {}
        for k, fut in calls.items():
            try:
                out[k] = (await fut).to(self.device)
            except Exception as e:
                out[k] = e
        return out

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._make_encoder is None:
            raise ValueError("this run is not text-conditioned; pass a class instead of a prompt")
        if self._encoder is None:
            self._encoder = self._make_encoder()
        return self._encoder.encode(prompts)

    async def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """MiniLM states and masks of ``prompts`` (the encoder loads on first use), as ``Ensemble.encode_prompts``."""
        return self._encode(list(prompts))
