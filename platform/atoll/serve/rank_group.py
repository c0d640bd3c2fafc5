"""A sequence-parallel group of N rank actors serving ONE video expert (the Ray calls live here).

``RankGroup(source, prefix, n)`` starts N Ray actors together in one placement group
(``STRICT_PACK``: the ranks share a node, so their process group can meet on 127.0.0.1).
Every rank loads the expert from the run store, joins one torch.distributed group at
``tcp://127.0.0.1:<fresh port>`` (gloo on CPU; NCCL when the actor was given a GPU) and builds
the token layout of its attention (``attention="ulysses" | "ring" | "hybrid"`` with ``ring_degree``:
``USPSequence``, the layout training uses). ``await group.velocity(batch)`` sends the same
``ExpertBatch`` to every rank; each rank runs exactly ``batch_velocity(<the expert with that seq>,
batch, num_classes)`` (``expert_forward`` for a batch of one request) and gets the whole velocity;
rank 0's is returned.

When a rank fails (its actor died, a collective broke, or the call hung past ``call_timeout_s``)
ALL ranks are killed and a new group (new actors, new placement group, new port) is started;
the call is retried once. ``RankGroupError`` says so when the restart or the retry fails.

Nothing is kept in module globals: the process group lives in the rank actors, the actor
handles in the ``RankGroup`` object (owned by one Serve replica).
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

import torch
from torch import nn

from atoll.parallel.dims import ParallelDims

log = logging.getLogger("atoll.serve")

#: logical CPUs per rank actor on a CPU-only cluster (kept small so a laptop fits several groups)
DEFAULT_RANK_CPUS = 0.1


class RankGroupError(RuntimeError):
    """The rank group could not be (re)started, or a call failed again after a restart."""


class SequenceParallelExpert(nn.Module):
    """A VideoDiT whose forward runs on this rank's slice of the tokens: ``(x, t, y=None) -> model(..., seq=seq)``."""

    def __init__(self, model: nn.Module, seq):
        super().__init__()
        self.model, self.seq = model, seq

    @property
    def config(self):
        return self.model.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, t, y=y, seq=self.seq)


class RankWorker:
    """One rank (a Ray actor): the expert, this rank's place in the process group, ``velocity``."""

    def __init__(self, source, prefix: str, rank: int, world_size: int, attention: str = "ulysses",
                 ring_degree: int | None = None):
        import ray

        from atoll.devices import for_replica, place
        from atoll.models.checkpoint import from_pretrained

        self.rank, self.world_size = rank, world_size
        self.dims = ParallelDims.for_layout(world_size, world_size, attention, ring_degree)
        placement = for_replica(len(ray.get_gpu_ids())).activate()
        self.gpu, self.device, self.backend = placement.is_cuda, placement.device, placement.backend
        self.model = place(from_pretrained(source.open(), prefix, map_location=self.device), placement,
                           f"{prefix} rank {rank}").eval()
        self.num_classes = int(self.model.config.num_classes)
        self.expert: SequenceParallelExpert | None = None

    def free_port(self) -> int:
        """A free port on this node's 127.0.0.1 (asked of rank 0, which hosts the rendezvous)."""
        from atoll.parallel.groups import free_port

        return free_port()

    def join(self, port: int, timeout_s: float) -> dict:
        """Joins the group (collective: every rank calls it) and builds the token layout of the attention
        (Ulysses, ring or hybrid: ``atoll.parallel.usp.USPSequence``, as in training)."""
        from atoll.parallel.groups import init_process_group, sequence_groups
        from atoll.parallel.usp import USPSequence

        if self.gpu:
            torch.cuda.set_device(self.device)
        init_process_group(self.rank, self.world_size, port, backend=self.backend, timeout_s=timeout_s)
        seq = USPSequence(sequence_groups(self.dims, self.rank), self.model.config.dims["num_heads"])
        self.expert = SequenceParallelExpert(self.model, seq).eval()
        return self.describe()

    def describe(self) -> dict:
        import ray
        import torch.distributed as dist

        joined = dist.is_initialized()
        ctx = ray.get_runtime_context()
        return {"rank": dist.get_rank() if joined else self.rank,
                "world_size": dist.get_world_size() if joined else None,
                "sp_world_size": self.expert.seq.n if self.expert is not None else None,
                "attention": self.dims.attention, "ring_degree": self.dims.ring,
                "backend": dist.get_backend() if joined else self.backend, "device": str(self.device),
                "pid": os.getpid(), "actor_id": ctx.get_actor_id(), "node_id": ctx.get_node_id()}

    @torch.no_grad()
    def velocity(self, batch) -> torch.Tensor:
        """This rank's share of one forward over an ``ExpertBatch``; every rank returns the whole velocity."""
        from atoll.serve.expert_batch import batch_velocity

        if self.expert is None:
            raise RankGroupError(f"rank {self.rank} has not joined its process group")
        return batch_velocity(self.expert, batch.to(self.device), self.num_classes).cpu()

    def leave(self) -> None:
        from atoll.parallel.groups import destroy

        destroy()


def check_degree(num_heads: int, n: int, attention: str = "ulysses", ring_degree: int | None = None) -> ParallelDims:
    """``ParallelDims`` of one group of ``n`` ranks with that attention layout; ``ParallelConfigError`` when
    its Ulysses degree does not divide the heads (or the layout does not fit ``n``)."""
    dims = ParallelDims.for_layout(n, n, attention, ring_degree)
    dims.check_heads(num_heads)
    return dims


class RankGroup:
    """N rank actors serving one video expert; see the module docstring.

    ``num_gpus``: GPUs per rank (0 on CPU; 1 for NCCL ranks). ``label`` names the actors
    (``atoll-sp:<label>:g<generation>:r<rank>``) so operators and tests can find them.
    ``start()`` is called by the constructor unless ``start=False``.
    """

    def __init__(self, source, prefix: str, n: int, *, num_heads: int | None = None,
                 attention: str = "ulysses", ring_degree: int | None = None, num_cpus: float = DEFAULT_RANK_CPUS, num_gpus: float = 0.0, label: str = "expert",
                 start_timeout_s: float = 180.0, call_timeout_s: float = 120.0, start: bool = True):
        if num_heads is None:
            from atoll.serve.runinfo import expert_heads

            num_heads = expert_heads(source.open(), int(prefix.split("/")[1]) if prefix.startswith("experts/") else 0)
        self.dims = check_degree(num_heads, n, attention, ring_degree)  # before any actor starts
        self.attention, self.ring_degree = attention, ring_degree
        self.source, self.prefix, self.n = source, prefix, n
        self.num_cpus, self.num_gpus, self.label = num_cpus, num_gpus, label
        self.start_timeout_s, self.call_timeout_s = start_timeout_s, call_timeout_s
        self.generation, self.restarts, self.port = 0, 0, None
        self.broken = False  # the last start failed (until a start succeeds)
        self.actors: list = []
        self.ranks: list[dict] = []
        self._pg = None
        self._lock: asyncio.Lock | None = None
        self._state = threading.Lock()  # start/stop may run in a worker thread
        if start:
            self.start()

    # -- lifecycle ---------------------------------------------------------------
    def actor_name(self, rank: int) -> str:
        return f"atoll-sp:{self.label}:g{self.generation}:r{rank}"

    def start(self) -> None:
        """Creates the placement group and the N actors, joins them on a fresh port; ``RankGroupError`` on failure."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        with self._state:
            self._stop_locked()
            self.generation += 1
            bundle = {"CPU": self.num_cpus, **({"GPU": self.num_gpus} if self.num_gpus else {})}
            deadline = time.monotonic() + self.start_timeout_s
            try:
                self._pg = placement_group([dict(bundle) for _ in range(self.n)], strategy="STRICT_PACK",
                                           name=f"atoll-sp:{self.label}:g{self.generation}")
                if not self._pg.wait(timeout_seconds=max(1.0, deadline - time.monotonic())):
                    raise RankGroupError(f"no node has room for {self.n} ranks x {bundle} (a STRICT_PACK "
                                         f"placement group) within {self.start_timeout_s:.0f} s")
                cls = ray.remote(RankWorker)
                self.actors = [cls.options(
                    name=self.actor_name(r), num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_restarts=0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=r),
                ).remote(self.source, self.prefix, r, self.n, self.attention, self.ring_degree)
                    for r in range(self.n)]
                self.port = ray.get(self.actors[0].free_port.remote(), timeout=max(1.0, deadline - time.monotonic()))
                join_s = max(1.0, deadline - time.monotonic())
                self.ranks = ray.get([a.join.remote(self.port, join_s) for a in self.actors], timeout=join_s + 5)
            except Exception as e:
                self._stop_locked()
                self.broken = True
                if isinstance(e, RankGroupError):
                    raise
                raise RankGroupError(f"could not start the {self.n}-rank group of {self.label} "
                                     f"(generation {self.generation}): {type(e).__name__}: {e}") from e
            ns = ray.get_runtime_context().namespace
            for r, info in enumerate(self.ranks):
                info.update(name=self.actor_name(r), namespace=ns)
            bad = [i for i in self.ranks if i["world_size"] != self.n or i["sp_world_size"] != self.n]
            if bad:
                self._stop_locked()
                self.broken = True
                raise RankGroupError(f"the ranks of {self.label} report world sizes "
                                     f"{[i['world_size'] for i in bad]}, expected {self.n}")
            self.broken = False
            log.info("%s: %d-rank group started (generation %d, port %d)", self.label, self.n, self.generation,
                     self.port)

    def _stop_locked(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already dead
                pass
        if self._pg is not None:
            try:
                remove_placement_group(self._pg)
            except Exception:
                pass
        self.actors, self.ranks, self._pg = [], [], None

    def shutdown(self) -> None:
        """Kills every rank actor and removes the placement group (idempotent)."""
        with self._state:
            self._stop_locked()

    def restart(self) -> None:
        """Kills ALL ranks and starts a new group (new actors, new port); ``RankGroupError`` when it fails."""
        self.restarts += 1
        log.warning("%s: restarting its %d-rank group (restart %d)", self.label, self.n, self.restarts)
        self.start()

    @property
    def alive(self) -> bool:
        """False once a (re)start has failed, until one succeeds (a restart in progress counts as alive)."""
        return not self.broken

    def info(self) -> dict:
        return {"sequence_parallel": self.n, "attention": self.dims.attention, "ring_degree": self.dims.ring,
                "world_size": self.ranks[0]["world_size"] if self.ranks else None,
                "generation": self.generation, "restarts": self.restarts, "port": self.port,
                "ranks": [dict(r) for r in self.ranks]}

    # -- calls -------------------------------------------------------------------
    async def _call(self, batch) -> torch.Tensor:
        import ray

        if not self.actors:
            raise RankGroupError(f"the rank group of {self.label} is down")
        ref = ray.put(batch)  # stored once; every rank reads the same object
        futs = [asyncio.wrap_future(a.velocity.remote(ref).future()) for a in self.actors]
        try:
            done, pending = await asyncio.wait(futs, timeout=self.call_timeout_s,
                                               return_when=asyncio.FIRST_EXCEPTION)
            for f in futs:
                if f in done and f.exception() is not None:
                    raise f.exception()
            if pending:
                raise TimeoutError(f"{len(pending)} of {self.n} ranks of {self.label} did not answer within "
                                   f"{self.call_timeout_s:.0f} s")
            return futs[0].result()
        finally:
            for f in futs:
                if not f.done():
                    f.cancel()

    async def velocity(self, batch) -> torch.Tensor:
        """Rank 0's velocity; on a rank failure the whole group restarts and the call is retried once."""
        from ray.exceptions import RayError

        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self.actors:  # a previous restart failed: try again before giving up
                await asyncio.to_thread(self.restart)
            try:
                return await self._call(batch)
            except (RayError, TimeoutError, RankGroupError) as first:
                log.warning("%s: a rank failed (%s: %s)", self.label, type(first).__name__, first)
                try:
                    await asyncio.to_thread(self.restart)
                except RankGroupError as e:
                    raise RankGroupError(f"a rank of {self.label} failed ({type(first).__name__}) and the "
                                         f"{self.n}-rank group could not be restarted: {e}") from first
                try:
                    return await self._call(batch)
                except (RayError, TimeoutError, RankGroupError) as second:
                    raise RankGroupError(f"the {self.n}-rank group of {self.label} failed again after a restart: "
                                         f"{type(second).__name__}: {second}") from second

