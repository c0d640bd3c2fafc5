"""The model deployments (thin shells around ``scheduler.Scheduler``; the Ray calls of serving live here).

* ``EnsembleReplica`` runs the continuous-batching scheduler. In ``ensemble`` mode (the default) it
  holds the router and all K experts on its device (its GPU when ``numGpus > 0``; with
  ``serve.sequenceParallel: N`` each expert is a group of N rank actors it owns). In
  ``distributed`` mode (deployment ``Router``) it holds the router and calls the ``Expert-00k``
  deployments once per tick with all the rows that chose them (``RemoteExpert``).
* ``ExpertModel`` is one expert deployment of distributed mode: ``velocity(ExpertBatch)``.

Every replica loads its weights from the store itself (file or S3) and places them through
``atoll.devices``; one request alone computes exactly what ``Ensemble.sample`` computes.
"""
from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass

import torch

from atoll.devices import Placement, for_replica, place
from atoll.sampling.runs import inspect_run
from atoll.serve.engine import LocalEngine
from atoll.serve.expert_batch import ExpertBatch, batch_velocity
from atoll.serve.rank_group import DEFAULT_RANK_CPUS, RankGroupError
from atoll.serve.routing import ExpertDown, Health, cause_of
from atoll.serve.runinfo import RunSource, deployment_name
from atoll.serve.scheduler import Outcome, Scheduler, Work

log = logging.getLogger("atoll.serve")


@dataclass(frozen=True)
class ReplicaOptions:
    """What a scheduler replica needs besides the run (picklable, from ``build_app``)."""

    mode: str = "ensemble"             # ensemble | distributed
    max_rows: int = 64                 # rows per tick (serve.<ensemble|router>.maxBatchSize)
    on_expert_failure: str = "reroute"
    num_gpus: float = 0.0
    sequence_parallel: int = 1
    attention: str = "ulysses"         # serve.attention / serve.ringDegree: the rank group's layout
    ring_degree: int | None = None
    rank_cpus: float = DEFAULT_RANK_CPUS
    rank_gpus: float = 0.0
    expert_timeout_s: float = 60.0     # one expert call (distributed), a rank-group call included
    retry_after_s: float = 2.0         # how long a failed expert sits out
    health_poll_s: float = 0.5
    app_name: str = "atoll"
    cold_start_s: float = 0.0          # > 0: experts may scale to zero; a call to one waits this long for a replica
    registry_poll_s: float = 0.0       # > 0: read experts/registry.json this often and serve a new version (ensemble mode)


def replica_placement(num_gpus: float, sequence_parallel: int = 1) -> Placement:
    """The device of a model replica: its GPU when it has one; with sequence-parallel ranks the ranks
    take the GPUs and the replica (router only) stays on the CPU."""
    return for_replica(0.0 if sequence_parallel > 1 else num_gpus)


def load_model(store, prefix: str, placement: Placement, what: str) -> torch.nn.Module:
    """A committed checkpoint loaded straight onto the placement's device, every tensor checked there."""
    from atoll.models.checkpoint import from_pretrained

    return place(from_pretrained(store, prefix, map_location=placement.device), placement, what).eval()


def served_prefix(store, k: int) -> str:
    """The checkpoint of served expert ``k``: the registry's ``k``-th active expert (``experts/registry.json``;
    expert ``k`` itself when nothing was retired)."""
    return inspect_run(store).expert_prefix(k)


def _rank_group(source: RunSource, store, k: int, opts: ReplicaOptions):
    from atoll.models.checkpoint import load_config
    from atoll.serve.rank_group import RankGroup
    from atoll.serve.runinfo import expert_heads

    prefix = served_prefix(store, k)
    if load_config(store, prefix).get("kind") != "vdit":
        raise ValueError(f"serve.sequenceParallel = {opts.sequence_parallel} is for video experts; expert {k} "
                         "is an image model: set serve.sequenceParallel: 1")
    return RankGroup(source, prefix, opts.sequence_parallel, num_heads=expert_heads(store, k),
                     attention=opts.attention, ring_degree=opts.ring_degree, num_cpus=opts.rank_cpus, num_gpus=opts.rank_gpus,
                     label=f"{deployment_name(k)}-{uuid.uuid4().hex[:8]}",
                     call_timeout_s=max(30.0, opts.expert_timeout_s))


class GroupExpert:
    """A sequence-parallel rank group as an async expert; a group that cannot recover is ``ExpertDown``."""

    def __init__(self, k: int, group):
        self.k, self.group = k, group

    async def __call__(self, b: ExpertBatch) -> torch.Tensor:
        try:
            return await self.group.velocity(b.compact())
        except RankGroupError as e:
            raise ExpertDown(self.k, str(e)) from e


def _replica_gone(err: BaseException) -> bool:
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError

    return isinstance(err, (RayActorError, BackPressureError, RankGroupError, asyncio.TimeoutError, TimeoutError))


class RemoteExpert:
    """Expert ``k`` behind its deployment handle: one call per tick; a dead replica is retried on another
    running replica (at most twice), and with none left the call is ``ExpertDown``."""

    def __init__(self, k: int, handle, owner: "EnsembleReplica"):
        self.k, self.handle, self.owner = k, handle, owner

    async def __call__(self, b: ExpertBatch) -> torch.Tensor:
        payload, attempts = b.compact(), 0
        opts = self.owner.options
        while True:
            # scaled to zero, or not polled yet: its first call may have to start a replica
            cold = opts.cold_start_s > 0 and self.owner.running(deployment_name(self.k), unknown=0) == 0
            resp = self.handle.velocity.remote(payload)
            try:  # a cold start (scaled to zero) may take a replica's whole start-up
                return await asyncio.wait_for(_awaited(resp), opts.cold_start_s if cold else opts.expert_timeout_s)
            except Exception as e:
                if isinstance(e, asyncio.TimeoutError):
                    resp.cancel()
                err = cause_of(e)
                if not _replica_gone(err):
                    raise
                attempts += 1
                others = self.owner.running(deployment_name(self.k)) - attempts
                if attempts > 2 or others <= 0:
                    raise ExpertDown(self.k, f"{deployment_name(self.k)}: {type(err).__name__}: {err}") from e
                self.owner.scheduler.counters.expert_retries += 1
                log.warning("%s: a replica failed (%s); retrying on another", deployment_name(self.k),
                            type(err).__name__)
                await asyncio.sleep(0.05 * attempts)


async def _awaited(resp):
    return await resp


class EnsembleReplica:
    """The scheduler replica (see the module docstring). ``experts``: the expert deployments' handles
    (distributed mode); None: the experts live in this replica."""

    def __init__(self, source: RunSource, options: ReplicaOptions = ReplicaOptions(), experts: list | None = None):
        self.options = opts = options
        self.source = source
        self.placement = replica_placement(opts.num_gpus, 1 if experts is not None else opts.sequence_parallel)
        self.placement.activate()
        self.groups: list = []
        self._remote = experts is not None
        self._install(self._load(source.open(), experts))
        self._running: dict[str, int] = {}
        self._poller: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self.reloads, self._warned = 0, 0
        log.info("%s replica on %s: %d experts (registry version %d), at most %d rows per tick", opts.mode,
                 self.placement, self.engine.num_experts, self.version, opts.max_rows)

    def _load(self, store, experts: list | None = None) -> "_Served":
        """Router, experts and scheduler of the registry's current version (weights read from the store)."""
        from atoll.models.checkpoint import load_config
        from atoll.serve.runinfo import run_facts

        opts = self.options
        facts = run_facts(store)
        K = facts.num_experts
        info = inspect_run(store)  # which experts are served (experts/registry.json) and the router's checkpoint
        router = load_model(store, info.router_prefix, self.placement, "router") if K > 1 else None
        groups: list = []
        if experts is not None:
            runners: list = [RemoteExpert(k, h, self) for k, h in enumerate(experts)]
        elif opts.sequence_parallel > 1:
            groups = [_rank_group(self.source, store, k, opts) for k in range(K)]
            runners = [GroupExpert(k, g) for k, g in enumerate(groups)]
        else:
            runners = [load_model(store, info.expert_prefix(k), self.placement, f"expert {k}") for k in range(K)]
        num_classes = int(load_config(store, info.expert_prefix(0))["config"].get("num_classes") or 0)
        encoder = None
        if facts.text_conditioned:
            from atoll.models.text import TextEncoder

            device = str(self.placement.device)
            encoder = lambda: TextEncoder(device=device)  # noqa: E731  (loads on the first prompt)
        engine = LocalEngine(router, runners, device=self.placement.device, num_classes=num_classes,
                             image_shape=facts.model_shape, text_encoder=encoder)
        decoder = None
        if facts.latent_shape is not None:  # the run's own VAE (another one is refused, naming both)
            from atoll.sampling.latent import load_decoder

            decoder = load_decoder(store, info.latents, self.placement.device, self.source.s3)
        scheduler = Scheduler(engine, max_rows=opts.max_rows, on_expert_failure=opts.on_expert_failure,
                              health=Health(K, opts.retry_after_s), decode=decoder)
        return _Served(facts.version, tuple(facts.expert_ids), engine, scheduler, decoder, groups)

    def _install(self, served: "_Served") -> None:
        self.version, self.expert_ids = served.version, served.expert_ids
        self.engine, self.scheduler, self.decoder, self.groups = (served.engine, served.scheduler, served.decoder,
                                                                  served.groups)

    # -- a new registry version, without a redeploy (ensemble mode) ----------------------
    @property
    def reloadable(self) -> bool:
        """Ensemble mode with the experts in this process: a new version can be loaded beside the old one."""
        return not self._remote and self.options.sequence_parallel == 1

    async def reload_if_changed(self) -> int:
        """Serves the registry's current version if it changed: loads its router and experts (in a thread;
        the loop keeps serving), then the next requests go to a new scheduler while the requests in flight
        finish on the old one. Returns the version served. Distributed / sequence-parallel replicas only
        log that a redeploy is needed."""
        from atoll.experts_registry import current_version

        store = self.source.open()
        version = await asyncio.to_thread(current_version, store)
        if version == self.version:
            return self.version
        if not self.reloadable:
            if version != self._warned:
                self._warned = version
                log.warning("experts/registry.json is at version %d, this replica serves %d: redeploy the app "
                            "(atoll serve again, or a RayService update) to serve it", version, self.version)
            return self.version
        served = await asyncio.to_thread(self._load, store)
        old = self.scheduler
        self._install(served)
        self.reloads += 1
        log.info("now serving registry version %d: experts %s (%d requests finish on the old version)",
                 self.version, list(self.expert_ids), old.in_flight + old.queued)
        return self.version

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.options.registry_poll_s)
            try:
                await self.reload_if_changed()
            except Exception as e:  # a half-written version or the store away: keep serving the old one
                log.warning("could not load the registry's new version (%s: %s); still serving version %d",
                            type(e).__name__, e, self.version)

    def _ensure_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        if self._remote and (self._poller is None or self._poller.done()):
            self._poller = loop.create_task(self._poll())
        if self.options.registry_poll_s > 0 and (self._watcher is None or self._watcher.done()):
            self._watcher = loop.create_task(self._watch())

    # -- distributed mode: which experts have running replicas -------------------------
    def running(self, deployment: str, unknown: int = 1) -> int:
        """RUNNING replicas of ``deployment`` at the last status poll (``unknown`` before the first one)."""
        return self._running.get(deployment, unknown)

    async def _poll(self) -> None:
        from atoll.serve.status import running_replicas

        K = self.engine.num_experts
        while True:
            try:
                self._running = await asyncio.to_thread(running_replicas, self.options.app_name)
                if self.options.cold_start_s <= 0:  # scaled to zero is not down: its next call starts it
                    self.scheduler.health.set_status_down(
                        {k for k in range(K) if self.running(deployment_name(k)) == 0})
            except Exception as e:  # the controller may be busy; keep the last state
                log.debug("serve.status() failed: %s", e)
            await asyncio.sleep(self.options.health_poll_s)

    # -- calls --------------------------------------------------------------------------
    async def generate(self, work: Work) -> Outcome:
        self._ensure_tasks()
        return await self.scheduler.generate(work)

    def stats(self) -> dict:
        return {**self.scheduler.stats(), "mode": self.options.mode, "device": str(self.placement.device),
                "placement": self.placement.reason, "pid": os.getpid(), "registry_version": self.version,
                "reloads": self.reloads}

    async def describe(self) -> dict:
        """Per expert, where it runs (``parallel``: the rank group's layout, or one rank here / remote)."""
        K = self.engine.num_experts
        if self.groups:
            layouts = [g.info() for g in self.groups]
        elif self._remote:
            async def one(k):
                try:
                    return await asyncio.wait_for(_awaited(self.engine.experts[k].handle.describe.remote()), 5.0)
                except Exception as e:  # a replica down or restarting
                    log.warning("describe of expert %d failed: %s", k, e)
                    return None
            layouts = list(await asyncio.gather(*[one(k) for k in range(K)]))
        else:
            layouts = [_single(self.placement) for _ in range(K)]
        return {"layouts": layouts, "healthy": self.scheduler.health.healthy(), "stats": self.stats(),
                "version": self.version}

    def check_health(self) -> None:
        """Serve's health check: unhealthy when a rank group is down (its restart failed), so Serve replaces us."""
        bad = [g.label for g in self.groups if not g.alive]
        if bad:
            raise RuntimeError(f"rank groups {bad} are down")

    def __del__(self):
        for g in getattr(self, "groups", []):
            try:
                g.shutdown()
            except Exception:  # interpreter teardown
                pass


@dataclass
class _Served:
    """One registry version as a replica serves it."""

    version: int
    expert_ids: tuple
    engine: LocalEngine
    scheduler: Scheduler
    decoder: object
    groups: list


def _single(placement: Placement) -> dict:
    return {"sequence_parallel": 1, "world_size": 1, "generation": 0, "restarts": 0, "ranks": [],
            "device": str(placement.device)}


class ExpertModel:
    """One expert deployment (distributed mode): ``velocity(ExpertBatch) -> v`` for all the rows of one tick.

    With ``sequence_parallel > 1`` (video experts) the replica owns a ``RankGroup`` of that many
    rank actors and every forward runs on it; the replica itself then loads no weights.
    """

    def __init__(self, source: RunSource, k: int, num_gpus: float = 0.0, sequence_parallel: int = 1,
                 rank_cpus: float = DEFAULT_RANK_CPUS, rank_gpus: float = 0.0, attention: str = "ulysses",
                 ring_degree: int | None = None):
        from atoll.models.checkpoint import load_config

        from atoll.serve.autoscale import RowMeter

        self.k, self.sequence_parallel = k, int(sequence_parallel)
        self.rows = RowMeter()  # what the router sends this replica (serve.experts.scaleOn: rows)
        self.placement = replica_placement(num_gpus, self.sequence_parallel)
        self.placement.activate()
        store = source.open()
        prefix = served_prefix(store, k)
        self.num_classes = int(load_config(store, prefix)["config"].get("num_classes") or 0)
        self.group, self.model = None, None
        if self.sequence_parallel > 1:
            self.group = _rank_group(source, store, k, ReplicaOptions(
                sequence_parallel=self.sequence_parallel, attention=attention, ring_degree=ring_degree,
                rank_cpus=rank_cpus, rank_gpus=rank_gpus))
        else:
            self.model = load_model(store, prefix, self.placement, f"expert {k}")

    async def velocity(self, batch: ExpertBatch) -> torch.Tensor:
        self.rows.add(int(batch.x.shape[0]))
        if self.group is not None:
            return await self.group.velocity(batch)
        return batch_velocity(self.model, batch.to(self.placement.device), self.num_classes).cpu()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metric (``serve.experts.scaleOn: rows``): rows computed per second."""
        from atoll.serve.autoscale import METRIC

        return {METRIC: self.rows.rate()}

    def describe(self) -> dict:
        """The replica's parallel layout: ``sequence_parallel``, the ranks' world size and each rank's facts."""
        return self.group.info() if self.group is not None else _single(self.placement)

    def check_health(self) -> None:
        if self.group is not None and not self.group.alive:
            raise RuntimeError(f"expert {self.k}: its {self.sequence_parallel}-rank group is down")

    def __del__(self):
        try:
            if self.group is not None:
                self.group.shutdown()
        except Exception:  # interpreter teardown
            pass
