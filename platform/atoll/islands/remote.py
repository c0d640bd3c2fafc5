"""The ``ray`` target's control plane: one Ray cluster per island, reached through its Jobs API.

``submit_ray`` prepares the data and partition (locally, into the store), then
submits one Ray job per expert to the island that owns it (``assign_experts``,
the rule the kubernetes target uses too): entrypoint ``atoll train-expert --spec
job.yaml --expert K --store URI``, the job YAML shipped as the runtime env's
``working_dir``, store credentials as its ``env_vars``. The island's cluster must
have Atoll installed (same version) and ``atoll`` on its PATH: here the clusters
share this venv; on real clusters, use an image with Atoll installed.

Scheduling: an island runs ``islands.maxConcurrent`` units at once (default 1),
so several experts on one island train one after another; islands run in
parallel. The router job goes to ``routerIsland`` (else the first island) once
every expert is committed.

Failures: a job that ends FAILED/STOPPED (or SUCCEEDED without a committed
manifest) is retried on the same island; an island whose Jobs API does not
answer for ``islands.lostAfterSeconds`` is *lost* and its units are retried on
the least loaded other island. Every retry resumes from the unit's last committed
checkpoint in the store. A unit gets ``islands.maxRetries`` retries per submit;
the run fails when one exhausts them, naming it and why (the others finish).
A lost island may still be running its job (a network partition, not a crash):
every attempt is fenced (``atoll.fence``): the control plane claims the unit for
attempt N (``<unit>/attempt.json``) before submitting it, and the job of an older
attempt has its writes and commits refused once its link comes back, so two
attempts never both write the expert.

State lives in the store (``control_state``), so ``atoll submit`` again adopts
running jobs, keeps finished units (committed manifest) and resubmits the rest.
Nothing passes between islands: each reads and writes only the store.
"""
from __future__ import annotations

import os
import shlex
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from atoll import fence
from atoll.islands import control_state as cs
from atoll.islands.control_state import DONE, QUEUED, ControlState, now
from atoll.islands.display import Display, snapshot
from atoll.islands.local import IslandsFailed
from atoll.islands.plan import Unit, expert_units, is_done, router_unit, scaling_of
from atoll.islands.ray_jobs import FAILED, STOPPED, SUCCEEDED, JobsClient, JobsError, Unreachable
from atoll.spec import JobSpec, dump
from atoll.store import Store

#: environment variables handed from the control plane to every island job (when set)
FORWARD_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
               "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "ATOLL_S3_ENDPOINT_URL", "DS_ACCELERATOR",
               "TORCH_EXTENSIONS_DIR", "ATOLL_TORCH_THREADS", "ATOLL_QUIET", "ATOLL_VERBOSE",
               "ATOLL_PROGRESS_INTERVAL")


def island_assignment(job: JobSpec) -> tuple[dict[str, str], dict[str, str], str]:
    """(unit name -> home island, island -> address, router island) for a ``ray`` job."""
    from atoll.k8s.values import assign_experts, router_island

    islands = assign_experts(job)
    home = {f"expert-{k:03d}": isl.name for isl in islands for k in isl.experts}
    addresses = {i.name: i.address for i in job.spec.islands.islands}
    return home, addresses, router_island(job, islands).name


def island_env(job: JobSpec, unit: Unit, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in FORWARD_ENV if os.environ.get(k)}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                "RAY_TRAIN_V2_ENABLED": os.environ.get("RAY_TRAIN_V2_ENABLED", "1"),
                # the driver's ray.init (atoll.runtime) sets some of the same env vars: let it win
                "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"})
    if not env.get("DS_ACCELERATOR") and not scaling_of(job, unit).use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    env.update(extra or {})
    return env


def entrypoint(unit: Unit, store_root: str, attempt: int = 0) -> str:
    tail = f"--store {shlex.quote(store_root)}" + (f" --attempt {attempt}" if attempt else "")
    if unit.role == "router":
        return f"atoll train-router --spec job.yaml {tail}"
    return f"atoll train-expert --spec job.yaml --expert {unit.expert} {tail}"


class RayIslands:
    """Submits, watches and retries the units of one run on their islands."""

    def __init__(self, job: JobSpec, run: Store, store_root: str, *,
                 client_factory: Callable[[str, str], JobsClient] = JobsClient,
                 island_env_extra: dict[str, dict[str, str]] | None = None, poll_s: float = 2.0,
                 unreachable_s: float | None = None, on_event: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.job, self.run_store, self.store_root = job, run, store_root
        self.home, self.addresses, self.router_island = island_assignment(job)
        self.order = list(self.addresses)
        self.clients = {n: client_factory(n, a) for n, a in self.addresses.items()}
        self.extra = island_env_extra or {}
        self.poll_s = poll_s
        self.unreachable_s = job.spec.islands.lost_after_seconds if unreachable_s is None else unreachable_s
        self.on_event = on_event or (lambda m: None)
        self.clock, self.sleep = clock, sleep
        self.slots = job.spec.islands.max_concurrent or 1
        self.max_retries = job.spec.islands.max_retries
        self.state = cs.load(run) or ControlState()
        self.retries: dict[str, int] = {}
        self.down_since: dict[str, float] = {}
        self.lost: set[str] = set()
        self.failures: dict[str, str] = {}
        self.workdir = tempfile.mkdtemp(prefix=f"atoll-{job.name}-")
        import yaml

        (Path(self.workdir) / "job.yaml").write_text(yaml.safe_dump(dump(job), sort_keys=False))

    # -- the whole run ------------------------------------------------------------------
    def run(self) -> ControlState:
        experts = expert_units(self.job)
        units = experts + ([] if self.job.spec.experts.mode == "monolith" else [router_unit()])
        self.state.status, self.state.error = "running", None
        cs.save(self.run_store, self.state)
        with Display(self.run_store, units) as display:
            self.display = display
            self._drive(experts, self.home)
            if not self.failures and len(units) > len(experts):
                self._drive(units[-1:], {"router": self.router_island})
            display.refresh(self._states(), force=True)
        if self.failures:
            self.state.status = "failed"
            self.state.error = "; ".join(f"{k}: {v}" for k, v in self.failures.items())
            cs.save(self.run_store, self.state)
            raise IslandsFailed(self.failures)
        self.state.status = "succeeded"
        cs.save(self.run_store, self.state)
        return self.state

    # -- one set of units -------------------------------------------------------------
    def _drive(self, units: list[Unit], home: dict[str, str]) -> None:
        by_name = {u.name: u for u in units}
        queued, active = [], []
        for u in units:
            st = self.state.unit(u.name)
            self.retries[u.name] = 0
            if is_done(self.run_store, u, self.job):
                if st.status != DONE:
                    st.status, st.finished_at = DONE, st.finished_at or now()
                continue
            if st.job_id and st.status in ("PENDING", "RUNNING") and st.island in self.clients:
                active.append(u.name)               # left running by an earlier submit: adopt it
                self._event(f"{u.name}: adopting job {st.job_id} on island {st.island} (attempt {st.attempt})")
            else:
                if st.island not in self.clients:
                    st.island = home[u.name]
                st.status, st.job_id = QUEUED, None
                queued.append(u.name)
        while queued or active:
            for name in list(queued):
                st = self.state.unit(name)
                if st.island in self.lost:
                    self._move(name)
                    if st.island in self.lost:   # nowhere left to go
                        queued.remove(name)
                        st.status = FAILED
                        self.failures[name] = f"every island is unreachable (last: {st.island}); {st.last_error}"
                        continue
                if sum(self.state.unit(a).island == st.island for a in active) >= self.slots:
                    continue
                try:
                    self._submit(by_name[name])
                    queued.remove(name)
                    active.append(name)
                except Unreachable as e:
                    self._down(st.island, e)
                except JobsError as e:
                    queued.remove(name)
                    self._failed(name, str(e), queued)
            cs.save(self.run_store, self.state)
            self.display.refresh(self._states())
            if not active and queued and all(self.state.unit(q).island in self.down_since for q in queued):
                self.sleep(self.poll_s)
            if not active:
                continue
            self.sleep(self.poll_s)
            for name in list(active):
                self._poll(by_name[name], active, queued)
            cs.save(self.run_store, self.state)

    def _poll(self, unit: Unit, active: list[str], queued: list[str]) -> None:
        st = self.state.unit(unit.name)
        client = self.clients[st.island]
        try:
            status = client.status(st.job_id)
            self.down_since.pop(st.island, None)
            self.lost.discard(st.island)
        except Unreachable as e:
            if self._down(st.island, e):
                active.remove(unit.name)
                self._failed(unit.name, f"island {st.island} lost: {e}", queued)
            return
        except JobsError as e:
            active.remove(unit.name)
            self._failed(unit.name, str(e), queued)
            return
        if status != st.status:
            st.status, st.updated_at = status, now()
        if status == SUCCEEDED:
            active.remove(unit.name)
            if is_done(self.run_store, unit):
                st.status, st.finished_at = DONE, now()
                self._event(f"{unit.name}: done on island {st.island} (attempt {st.attempt})")
            else:
                self._failed(unit.name, "the job succeeded but committed no manifest", queued)
        elif status in (FAILED, STOPPED):
            active.remove(unit.name)
            try:
                why = client.message(st.job_id) or status
            except JobsError:
                why = status
            self._failed(unit.name, f"job {status}: {why}", queued)

    def _submit(self, unit: Unit) -> None:
        st = self.state.unit(unit.name)
        attempt = st.attempt + 1
        sub_id = f"atoll-{self.job.name}-{self.state.run_id}-{unit.name}-a{attempt}"
        # fence first: from here on only this attempt may write the unit (an older one, cut off, is refused).
        # The number is used up even if the submit fails: a request that got through anyway is fenced off too.
        st.attempt, st.job_id = attempt, None
        fence.claim(self.run_store.sub(unit.prefix), attempt, job_id=sub_id, island=st.island)
        job_id = self.clients[st.island].submit(
            entrypoint=entrypoint(unit, self.store_root, attempt), submission_id=sub_id, working_dir=self.workdir,
            env_vars=island_env(self.job, unit, self.extra.get(st.island)),
            metadata={"atoll_job": self.job.name, "atoll_unit": unit.name, "atoll_attempt": str(attempt)})
        st.attempt, st.job_id, st.status = attempt, job_id, "PENDING"
        st.address = self.addresses[st.island]
        st.submitted_at = st.updated_at = now()
        st.finished_at = None
        self._event(f"{unit.name}: submitted to island {st.island} as job {job_id} (attempt {attempt})")

    def _failed(self, name: str, why: str, queued: list[str]) -> None:
        st = self.state.unit(name)
        st.history.append({"attempt": st.attempt, "island": st.island, "job_id": st.job_id,
                           "status": st.status, "error": why[:2000], "at": now()})
        st.last_error, st.updated_at = why[:2000], now()
        self.retries[name] += 1
        if self.retries[name] > self.max_retries:
            st.status = FAILED
            self.failures[name] = (f"{why} (attempt {st.attempt} on island {st.island}, job {st.job_id}; "
                                   f"{self.max_retries} retries used; logs: atoll logs JOB "
                                   f"{'--router' if name == 'router' else '--expert ' + str(int(name[-3:]))})")
            self._event(f"{name}: FAILED for good: {why}")
            return
        if st.island in self.lost:
            self._move(name)
        st.status = QUEUED
        queued.append(name)
        self._event(f"{name}: attempt {st.attempt} failed ({why}); retry {self.retries[name]}/"
                    f"{self.max_retries} on island {st.island}, resuming from its last checkpoint")

    # -- islands ------------------------------------------------------------------------
    def _down(self, island: str, err: Exception) -> bool:
        """Notes that ``island`` did not answer; True once it has been silent for ``unreachable_s``."""
        first = self.down_since.setdefault(island, self.clock())
        if island not in self.lost and self.clock() - first >= self.unreachable_s:
            self.lost.add(island)
            self._event(f"island {island} lost: no answer for {self.clock() - first:.0f} s ({err})")
        return island in self.lost

    def _move(self, name: str) -> None:
        st = self.state.unit(name)
        alive = [i for i in self.order if i not in self.lost and i != st.island]
        if not alive:
            return
        load = {i: sum(self.state.unit(n).island == i and self.state.unit(n).status not in (DONE, FAILED)
                       for n in self.state.units) for i in alive}
        target = min(alive, key=lambda i: (load[i], self.order.index(i)))
        self._event(f"{name}: moving from lost island {st.island} to island {target}")
        st.island = target

    def _states(self) -> dict[str, str]:
        return {n: f"{u.status.lower()} @{u.island or '-'} a{u.attempt}" for n, u in self.state.units.items()}

    def _event(self, msg: str) -> None:
        self.on_event(msg)


def submit_ray(job: JobSpec, store_uri: str | None = None, **kwargs) -> ControlState:
    """Data + partition locally (if not complete), then every unit on its island; blocks until done."""
    from atoll import pipeline
    from atoll.store import open_store

    pipeline.run(job, until="partition", store_uri=store_uri)
    run = pipeline.open_run(job, store_uri)
    root = open_store(store_uri or job.spec.store.uri, pipeline.s3_config(job)).uri
    return RayIslands(job, run, root, **kwargs).run()


def status_rows(job: JobSpec, run: Store) -> list[dict]:
    """Per unit: island, attempt, job id, status (control state) with step/loss (progress.json)."""
    state = cs.load(run)
    units = expert_units(job) + ([] if job.spec.experts.mode == "monolith" else [router_unit()])
    prog = {r["name"]: r for r in snapshot(run, units, {})}
    rows = []
    for u in units:
        st = state.units.get(u.name) if state else None
        p = prog[u.name]
        status = "DONE" if is_done(run, u) else (st.status if st else "QUEUED")
        rows.append({"unit": u.name, "island": st.island if st else None, "attempt": st.attempt if st else 0,
                     "job_id": st.job_id if st else None, "status": status, "step": p.get("step"),
                     "total": p.get("total"), "loss": p.get("loss"), "error": st.last_error if st else None})
    return rows


def status_table(rows: list[dict]):
    from rich.table import Table

    t = Table(title="ray islands", expand=False)
    for c in ("unit", "island", "attempt", "status", "step", "loss", "job id", "last error"):
        t.add_column(c)
    for r in rows:
        step = f"{r['step']}/{r['total']}" if r.get("step") is not None else "-"
        loss = f"{r['loss']:.4f}" if r.get("loss") is not None else "-"
        t.add_row(r["unit"], r["island"] or "-", str(r["attempt"]), r["status"], step, loss, r["job_id"] or "-",
                  (r["error"] or "")[:80])
    return t


def unit_job(job: JobSpec, run: Store, unit_name: str) -> tuple[JobsClient, str]:
    """The client and job id of ``unit_name``'s latest attempt (for ``atoll logs``)."""
    from atoll.pipeline import PipelineError

    state = cs.load(run)
    st = state.units.get(unit_name) if state else None
    if st is None or not (st.job_id or st.history):
        raise PipelineError(f"no Ray job recorded for {unit_name} in {run.url(cs.KEY)}; "
                            f"submit the run with `atoll submit JOB.yaml --target ray` first")
    job_id, island = st.job_id, st.island
    if job_id is None:  # queued for a retry: show the last attempt's logs
        job_id, island = st.history[-1]["job_id"], st.history[-1]["island"]
    address = {i.name: i.address for i in job.spec.islands.islands}.get(island) or st.address
    return JobsClient(island, address), job_id
