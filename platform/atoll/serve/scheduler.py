"""Iteration-level (continuous) batching of denoising requests: pure asyncio + torch, no Ray.

``Scheduler(engine).generate(Work) -> Outcome`` queues one request; a single loop runs *ticks*
while requests are in flight. One tick takes every in-flight row of every request, whatever its
step (the models take a per-row ``t``), and

1. runs the router once on all rows (``engine.route``);
2. selects each request's experts with its own strategy (``routing.restrict`` = ``select`` while every
   expert is healthy), groups the rows by expert (``group_rows``);
3. runs each chosen expert once on its rows (``engine.velocities``: CFG rows fused, guidance per row,
   see ``expert_batch``), combines the velocities (``combine``);
4. takes each request's own sampler step (``EulerSampler.step``).

Finished requests leave and queued ones join at tick boundaries (at most ``max_rows`` rows per
tick; a request larger than that runs alone). When nothing is in flight the loop stops; the next
request starts it at once (no batch-wait timer). For one request alone every call is the
library's, so the result equals ``Ensemble.sample`` with the same seed bit for bit; in a mixed
batch the same rows meet other rows in the matmuls, which can change the last float bits
(docs/serving.md).

Expert failures (``ExpertDown`` from the engine): the expert is marked down in ``Health`` and the
tick is redone without it: ``on_expert_failure="reroute"`` renormalises the routing over the healthy
experts (the request records it in ``degraded``); ``"fail"`` fails the requests that needed it with
``Unavailable`` (HTTP 503). Any other error fails the requests of the tick, never hangs them.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from atoll.models.samplers import make_sampler
from atoll.sampling.ensemble import combine, group_rows
from atoll.sampling.grid import to_uint8
from atoll.sampling.noise import initial_noise
from atoll.sampling.strategies import select
from atoll.serve.expert_batch import ExpertBatch
from atoll.serve.layout import lay_out
from atoll.serve.routing import ExpertDown, Health, NoHealthyExpert, Unavailable, restrict
from atoll.serve.stats import Counters

log = logging.getLogger("atoll.serve")


@dataclass(frozen=True)
class Work:
    """One request as a replica gets it (already checked against the run and the limits)."""

    n: int
    label: int | None = None
    prompt: str | None = None
    steps: int = 32
    guidance: float = 1.0
    seed: int = 0
    strategy: str = "top1"


@dataclass(repr=False)
class Outcome:
    images: torch.Tensor               # uint8 [n, C, H, W] (video: [n, C, T, H, W])
    expert_rows: list[int]             # request rows each expert evaluated, over all steps
    experts_per_step: list[list[int]]  # experts this request's rows used at each step
    degraded: list[int]                # experts it would have used that were down (rerouted)
    queue_s: float = 0.0               # submitted -> first tick
    wall_s: float = 0.0                # first tick -> done
    mean_tick_rows: float = 0.0        # rows of the ticks it took part in (its own and others')

    def __repr__(self) -> str:  # never the pixels (asyncio and logs repr results)
        return (f"Outcome(images={list(self.images.shape)}, steps={len(self.experts_per_step)}, "
                f"degraded={self.degraded}, wall_s={self.wall_s:.3f})")


class Engine(Protocol):
    """Where the models run: in this process (ensemble replica) or behind handles (distributed)."""

    device: torch.device
    num_experts: int
    num_classes: int
    image_shape: tuple[int, ...]

    async def route(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor: ...

    async def velocities(self, batches: dict[int, ExpertBatch]) -> dict[int, "torch.Tensor | BaseException"]: ...

    async def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(eq=False, repr=False)
class _Job:
    work: Work
    x: torch.Tensor
    y: torch.Tensor | None
    text: tuple[torch.Tensor, torch.Tensor] | None
    future: asyncio.Future
    num_experts: int
    sampler: object = None
    i: int = 0
    probs: torch.Tensor | None = None
    t_submit: float = field(default_factory=time.perf_counter)
    t_admit: float = 0.0
    tick_rows: int = 0
    ticks: int = 0
    cancelled: bool = False
    degraded: set = field(default_factory=set)
    per_step: list = field(default_factory=list)
    rows: list = field(default_factory=list)

    def __post_init__(self):
        self.sampler = make_sampler("euler")
        self.sampler.set_timesteps(self.work.steps)
        self.rows = [0] * self.num_experts

    @property
    def n(self) -> int:
        return self.work.n

    @property
    def cfg(self) -> bool:
        return (self.y is not None or self.text is not None) and self.work.guidance != 1.0

    @property
    def done(self) -> bool:
        return self.i >= self.sampler.num_steps


class Scheduler:
    """Owns the in-flight requests of one replica and runs their ticks (see the module docstring)."""

    def __init__(self, engine: Engine, *, max_rows: int = 64, on_expert_failure: str = "reroute",
                 health: Health | None = None, decode=None):
        if on_expert_failure not in ("reroute", "fail"):
            raise ValueError(f"on_expert_failure must be 'reroute' or 'fail', got {on_expert_failure!r}")
        self.engine, self.max_rows, self.policy = engine, int(max_rows), on_expert_failure
        self.decode = decode  # latent space: model-space latents -> images in [-1, 1] (the run's VAE)
        self.health = health or Health(engine.num_experts)
        self.counters = Counters(engine.num_experts)
        self._pending: deque[_Job] = deque()
        self._active: list[_Job] = []
        self._task: asyncio.Task | None = None

    # -- requests ----------------------------------------------------------------
    async def generate(self, work: Work) -> Outcome:
        """Queues ``work``, returns its images when its last step is done (cancellation drops it)."""
        e = self.engine
        x = initial_noise(e.image_shape, work.seed, range(work.n)).to(e.device)
        y = None if work.label is None else torch.full((work.n,), int(work.label), dtype=torch.long, device=e.device)
        text = None
        if work.prompt is not None:
            states, mask = await e.encode([work.prompt] * work.n)
            text = (states.to(e.device), mask.to(e.device))
        job = _Job(work, x, y, text, asyncio.get_running_loop().create_future(), e.num_experts)
        self._pending.append(job)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            self.counters.cancelled += 1
            raise

    @property
    def in_flight(self) -> int:
        return len(self._active)

    @property
    def queued(self) -> int:
        return len(self._pending)

    def stats(self) -> dict:
        return {**self.counters.summary(), "in_flight": self.in_flight, "queued": self.queued,
                "max_rows": self.max_rows, "on_expert_failure": self.policy,
                "healthy_experts": self.health.healthy()}

    # -- the loop ------------------------------------------------------------------
    def _admit(self) -> None:
        self._active = [j for j in self._active if not j.cancelled]
        rows = sum(j.n for j in self._active)
        while self._pending:
            job = self._pending[0]
            if job.cancelled:
                self._pending.popleft()
                continue
            if self._active and rows + job.n > self.max_rows:
                break
            self._pending.popleft()
            job.t_admit = time.perf_counter()
            self._active.append(job)
            rows += job.n

    async def _run(self) -> None:
        try:
            while True:
                self._admit()
                if not self._active:
                    return
                await self._tick(list(self._active))
                self._active = [j for j in self._active if not j.future.done()]
                await asyncio.sleep(0)  # arrivals join at the next tick boundary
        except BaseException as e:  # never leave a request hanging
            for j in self._active + list(self._pending):
                self._fail(j, e if isinstance(e, Exception) else Unavailable("the replica is shutting down"))
            self._active, self._pending = [], deque()
            if not isinstance(e, Exception):
                raise
            log.exception("the scheduler loop failed")

    def _fail(self, job: _Job, err: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(err)
            self.counters.failed += 1

    # -- one tick --------------------------------------------------------------------
    def _select(self, jobs: list[_Job], healthy: list[int]) -> tuple[list[_Job], list]:
        """Each job's (indices, weights) over the healthy experts; ``fail`` drops jobs that need a down expert."""
        K, keep, sel = self.engine.num_experts, [], []
        for j in jobs:
            if len(healthy) < K:
                wanted = set(select(j.probs, j.work.strategy)[0].unique().tolist())
                lost = wanted - set(healthy)
                if lost and self.policy == "fail":
                    self._fail(j, Unavailable(f"expert(s) {sorted(lost)} needed by this request are down "
                                              "(serve.onExpertFailure: fail); retry in a few seconds",
                                              self.health.retry_after_s))
                    continue
                j.degraded |= lost
            try:
                sel.append(restrict(j.probs, j.work.strategy, healthy))
            except NoHealthyExpert as err:
                self._fail(j, err)
                continue
            keep.append(j)
        return keep, sel

    async def _tick(self, jobs: list[_Job]) -> None:
        e, K = self.engine, self.engine.num_experts
        lay = lay_out(jobs, e.device, e.num_classes)
        try:
            probs = await e.route(lay.x, lay.t, lay.y)
        except Exception as err:
            for j in jobs:
                self._fail(j, err)
            return
        for j, (lo, hi) in zip(jobs, lay.spans):
            j.probs = probs[lo:hi]
        self.counters.router_rows += lay.rows
        for _ in range(K + 1):
            before = len(jobs)
            jobs, sel = self._select(jobs, self.health.healthy())
            if not jobs:
                return
            if len(jobs) != before:  # some failed (onExpertFailure: fail): lay the others out again
                lay = lay_out(jobs, e.device, e.num_classes)
            width = max(i.shape[1] for i, _ in sel)
            idx = _cat([F.pad(i, (0, width - i.shape[1]), value=-1) if i.shape[1] < width else i for i, _ in sel])
            w = _cat([F.pad(wt, (0, width - wt.shape[1])) if wt.shape[1] < width else wt for _, wt in sel])
            groups = group_rows(idx, K)
            batches = {k: lay.batch(rows) for k, rows, _ in groups}
            outs = await e.velocities(batches)
            down = [k for k, o in outs.items() if isinstance(o, ExpertDown)]
            other = next((o for o in outs.values() if isinstance(o, BaseException) and not isinstance(o, ExpertDown)),
                         None)
            if other is not None:
                for j in jobs:
                    self._fail(j, other)
                return
            if not down:
                break
            for k in down:
                log.warning("expert %d failed (%s); routing around it for %.1f s", k, outs[k],
                            self.health.retry_after_s)
                self.health.mark_failed(k)
        else:
            for j in jobs:
                self._fail(j, NoHealthyExpert("experts kept failing during this step; retry in a few seconds"))
            return
        v = combine(lay.x, w, groups, [outs[k] for k, _, _ in groups])
        self.counters.tick(lay.rows, batches)
        self._account(jobs, lay, groups)
        for j, (lo, hi) in zip(jobs, lay.spans):
            j.x = j.sampler.step(v[lo:hi], j.i, j.x)
            j.i += 1
            if j.done:
                self._finish(j)

    @staticmethod
    def _account(jobs: list[_Job], lay, groups) -> None:
        """Per request: the rows each expert evaluated, the experts used this step, the tick's size."""
        if len(jobs) == 1:
            counts = [[rows.numel() for _, rows, _ in groups]]
        else:
            owner = torch.repeat_interleave(torch.arange(len(jobs), device=lay.x.device),
                                            torch.tensor([hi - lo for lo, hi in lay.spans], device=lay.x.device))
            counts = torch.stack([torch.bincount(owner[rows], minlength=len(jobs)) for _, rows, _ in groups],
                                 dim=1).tolist()
        for j, row in zip(jobs, counts):
            used = [k for (k, _, _), c in zip(groups, row) if c]
            for (k, _, _), c in zip(groups, row):
                j.rows[k] += int(c)
            j.per_step.append(used)
            j.tick_rows += lay.rows
            j.ticks += 1

    def _finish(self, j: _Job) -> None:
        now = time.perf_counter()
        x = j.x if self.decode is None else self.decode(j.x)
        out = Outcome(images=to_uint8(x.float().cpu()), expert_rows=list(j.rows), experts_per_step=j.per_step,
                      degraded=sorted(j.degraded), queue_s=j.t_admit - j.t_submit, wall_s=now - j.t_admit,
                      mean_tick_rows=j.tick_rows / max(1, j.ticks))
        self.counters.done += 1
        if not j.future.done():
            j.future.set_result(out)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)
