"""The ``local`` target: each island is its own Ray Train run on the local Ray instance.

Islands run concurrently as far as the cluster's CPUs/GPUs allow (or
``islands.maxConcurrent``); the rest wait in a queue. Each island has its own
worker group and process group; nothing passes between islands but the store.
A failed worker is restarted by Ray Train (``FailureConfig``) and the island
resumes from its latest checkpoint; an island that exhausts its retries is
reported, and the others go on.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from atoll.islands import local_ray
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


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0


def _fit_island(cfg: dict, scaling, name: str, max_failures: int) -> str:
    """Runs inside a Ray task: one island's Ray Train run."""
    from atoll.train.loop import train_island
    from atoll.train.raytrain import fit

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


def run_units(job: JobSpec, run: Store, s3: S3Config | None, units: list[Unit], poll_s: float = 1.0) -> Outcome:
    """Trains every unit not yet done; returns what happened (raises nothing per island)."""
    from atoll.runtime import ensure_ray

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
    free = dict(total)
    limit = job.spec.islands.max_concurrent or len(todo)
    states = {u.name: "queued" for u in todo}
    pending: dict[object, Unit] = {}
    queue = list(todo)
    with Display(run, todo) as display:
        while queue or pending:
            # start queued islands, in order, while their worker groups fit
            while queue and len(pending) < limit and fits(demand(job, queue[0]), free):
                u = queue.pop(0)
                for k, v in demand(job, u).items():
                    free[k] -= v
                cfg = loop_config(job, u, run, s3)
                name = f"{job.name}-{u.name}-{uuid.uuid4().hex[:6]}"
                ref = local_ray.launch(_fit_island, cfg, scaling_of(job, u), name, job.spec.islands.max_retries,
                                       name=f"island:{u.name}")
                pending[ref] = u
                states[u.name] = "training"
            ready, _ = local_ray.wait(list(pending), timeout=poll_s)
            for ref in ready:
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
                    out.failed[u.name] = _short(e)
            display.refresh(states)
        display.refresh(states, force=True)
    out.wall_s = time.time() - t0
    return out


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    tail = [m for m in msg if m.strip()][-3:]
    return f"{type(e).__name__}: " + " / ".join(tail)[:600]


__all__ = ["IslandsFailed", "Outcome", "demand", "run_units"]
