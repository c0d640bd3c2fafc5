"""The ``local`` target: each island is its own Ray Train run on the local Ray instance.

Islands run concurrently as far as the cluster's CPUs/GPUs allow (or
``islands.maxConcurrent``); the rest wait in a queue and start as soon as a
running island frees its resources. An island trains with as many torch threads
as CPUs it holds, so with whole CPUs per island the threads of the islands that
run at once match the cores (waves: 4 one-CPU islands on 2 cores train two at a
time). Each island has its own worker group and process group; nothing passes
between islands but the store. A failed worker is restarted by Ray Train
(``FailureConfig``) and the island resumes from its latest checkpoint; an island
that exhausts its retries is reported, and the others go on.

A stage may hand ``run_units`` *fillers*: work for a CPU the islands leave idle (a
last wave with fewer islands than CPUs), started once no island waits for CPUs
and finished before ``run_units`` returns (the experts stage trains the samples
stage's evaluation classifier that way).

What an island's processes print goes to its log files (``<unit>/logs/`` in the
run, see ``worker_logs``), not to the console; ``-v`` tails them to it.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from atoll.islands import local_ray, worker_logs
from atoll.islands.display import Display
from atoll.islands.plan import Unit, is_done, loop_config, scaling_of
from atoll.spec import JobSpec
from atoll.store import S3Config, Store


class IslandsFailed(RuntimeError):
    def __init__(self, failures: dict[str, str]):
        self.failures = failures
        lines = "\n".join(f"  - {k}: {v}" for k, v in failures.items())
        super().__init__(f"{len(failures)} island(s) failed after their retries:\n{lines}\n"
                         "Fix the cause and run the same command again: finished islands are kept and "
                         "failed ones resume from their last checkpoint.")


@dataclass(frozen=True)
class Filler:
    """Work for an idle CPU: ``fn()`` in a Ray task holding ``cpus`` CPUs (it must use no more threads)."""
    name: str
    fn: Callable[[], object]
    cpus: float = 1.0


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0


def _fit_island(cfg: dict, scaling, name: str, max_failures: int) -> str:
    """Runs inside a Ray task: one island's Ray Train run, its log files shipped to the store meanwhile."""
    from atoll import fence
    from atoll.store import S3Config, open_store
    from atoll.train.loop import train_island
    from atoll.train.raytrain import fit

    unit = open_store(cfg["run_uri"], S3Config(**cfg.get("s3", {}))).sub(cfg["prefix"])
    fence.guard(unit, cfg.get("attempt", 0))   # a superseded attempt stops before it starts
    folder = os.environ.get(worker_logs.ENV_DIR)
    if not folder:
        fit(train_island, cfg, scaling, name, max_failures)
        return name
    with worker_logs.Shipper(folder, unit.sub(worker_logs.PREFIX)):
        fit(train_island, cfg, scaling, name, max_failures)
    return name


def demand(job: JobSpec, unit: Unit) -> dict[str, float]:
    """The CPUs/GPUs one island's worker group holds while it trains."""
    sc = scaling_of(job, unit)
    d = {"CPU": sc.cpus_per_worker * sc.num_workers}
    if sc.use_gpu:
        d["GPU"] = (sc.gpus_per_worker or 1) * sc.num_workers
    return d


def fits(need: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def check_fits_at_all(job: JobSpec, units: list[Unit], total: dict[str, float]) -> None:
    for u in units:
        need = demand(job, u)
        if not fits(need, total):
            raise IslandsFailed({u.name: f"needs {need} but the Ray cluster has {total}; lower "
                                         "scaling.numWorkers / cpusPerWorker or add resources"})


def threads_note(job: JobSpec, units: list[Unit], cpus: float) -> str | None:
    """A hint when fractional CPUs per worker let more torch threads run at once than there are CPUs."""
    if os.environ.get("ATOLL_TORCH_THREADS"):
        return None
    frac = [u for u in units if scaling_of(job, u).cpus_per_worker % 1]
    if not frac:
        return None
    sc = scaling_of(job, frac[0])
    at_once = min(len(units), int(cpus // sc.cpus_per_worker + 1e-9)) if sc.cpus_per_worker else len(units)
    threads = at_once * max(1, int(sc.cpus_per_worker)) * sc.num_workers
    if threads <= cpus:
        return None
    return (f"note: {at_once} islands x {sc.cpus_per_worker:g} CPU run at once, each with at least one torch "
            f"thread: {threads} threads on {cpus:g} CPUs. Whole CPUs (scaling.cpusPerWorker: 1) run them in waves "
            f"of {math.floor(cpus)}, which trains faster")


def run_units(job: JobSpec, run: Store, s3: S3Config | None, units: list[Unit], poll_s: float = 1.0,
              attempt: int = 0, fillers: list[Filler] | None = None) -> Outcome:
    """Trains every unit not yet done; returns what happened (raises nothing per island).

    ``attempt``: the control plane's attempt number (``ray`` target), for fencing; 0 here.
    ``fillers``: work for CPUs the islands leave idle (a filler's failure is reported, not raised).
    """
    from atoll.runtime import ensure_ray, verbose

    ensure_ray()
    t0 = time.time()
    out = Outcome()
    todo = []
    for u in units:
        if is_done(run, u, job):
            out.skipped.append(u.name)
        else:
            todo.append(u)
    if not todo:
        return out
    total = {k: float(v) for k, v in local_ray.cluster_resources().items() if k in ("CPU", "GPU")}
    check_fits_at_all(job, todo, total)
    note = threads_note(job, todo, total.get("CPU", 0.0))
    if note:
        print(note, file=sys.stderr, flush=True)
    free = dict(total)
    limit = job.spec.islands.max_concurrent or len(todo)
    states = {u.name: "queued" for u in todo}
    pending: dict[object, Unit] = {}
    idle_work = list(fillers or [])
    filling: dict[object, Filler] = {}
    queue = list(todo)
    logs_root = Path(tempfile.gettempdir()) / "atoll-logs"
    log_dirs = {u.name: logs_root / f"{job.name}-{u.name}-{uuid.uuid4().hex[:6]}" for u in todo}
    # Ray Train's preemption watcher (one more process per island) has nothing to watch on one node
    train_env = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"} if local_ray.single_node() else {}
    try:
        with Display(run, todo, log_dirs=log_dirs if verbose() else None) as display:
            while queue or pending or filling:
                # start queued islands, in order, while their worker groups fit
                while queue and len(pending) < limit and fits(demand(job, queue[0]), free):
                    u = queue.pop(0)
                    for k, v in demand(job, u).items():
                        free[k] -= v
                    cfg = loop_config(job, u, run, s3, attempt=attempt)
                    name = f"{job.name}-{u.name}-{uuid.uuid4().hex[:6]}"
                    env = worker_logs.runtime_env(str(log_dirs[u.name]), train_env)
                    ref = local_ray.launch(_fit_island, cfg, scaling_of(job, u), name, job.spec.islands.max_retries,
                                           name=f"island:{u.name}", runtime_env=env)
                    pending[ref] = u
                    states[u.name] = "training"
                while idle_work and not queue and fits({"CPU": idle_work[0].cpus}, free):
                    f = idle_work.pop(0)
                    free["CPU"] -= f.cpus
                    filling[local_ray.launch(f.fn, name=f"filler:{f.name}", cpus=f.cpus)] = f
                ready, _ = local_ray.wait(list(pending) + list(filling), timeout=poll_s)
                for ref in ready:
                    if ref in filling:
                        f = filling.pop(ref)
                        free["CPU"] += f.cpus
                        try:
                            local_ray.get(ref)
                        except Exception as e:  # noqa: BLE001 - the later stage does the work itself
                            print(f"note: {f.name} on an idle CPU failed ({_short(e)}); a later stage retries it",
                                  file=sys.stderr, flush=True)
                        continue
                    u = pending.pop(ref)
                    for k, v in demand(job, u).items():
                        free[k] += v
                    try:
                        local_ray.get(ref)
                        ok = is_done(run, u)
                        states[u.name] = "done" if ok else "failed"
                        if ok:
                            out.done.append(u.name)
                        else:
                            out.failed[u.name] = "the run ended without committing its manifest"
                    except Exception as e:  # the island's own failure; others go on
                        states[u.name] = "failed"
                        out.failed[u.name] = _short(e) + f" (logs: {run.url(u.prefix)}/{worker_logs.PREFIX}/)"
                display.refresh(states)
            display.refresh(states, force=True)
    finally:
        for d in log_dirs.values():   # shipped to the store by each island
            shutil.rmtree(d, ignore_errors=True)
    out.wall_s = time.time() - t0
    return out


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    tail = [m for m in msg if m.strip()][-3:]
    return f"{type(e).__name__}: " + " / ".join(tail)[:600]


__all__ = ["Filler", "IslandsFailed", "Outcome", "demand", "run_units", "threads_note"]
