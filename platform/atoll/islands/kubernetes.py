"""The ``kubernetes`` island target: one KubeRay RayJob per island, then the router's.

The manifests come from rendering the Helm chart (``atoll.k8s``) with values
computed from the job spec, so the CLI creates exactly what ``helm install``
would. This module creates them (each island in its own kube context and
namespace), watches them by polling, reports each island's status, and retries a
failed island on its own (delete + recreate, ``atoll.dev/attempt`` label bumped)
up to ``islands.maxRetries``; the others go on meanwhile. The training entrypoint
resumes from the island's last checkpoint in the store. The router job starts
after every island succeeded. Submitting again adopts the RayJobs that exist:
finished islands are kept, running ones watched, failed ones retried.
"""
from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from atoll.islands.k8s_client import KubeClient
from atoll.k8s import helm
from atoll.k8s.errors import IslandsFailed, KubernetesError
from atoll.k8s.manifests import ATTEMPT, Unit, format_output, parse, units
from atoll.k8s.values import assign_experts, chart_values, merge_values, router_island
from atoll.spec import JobSpec

PENDING, RUNNING, SUCCEEDED, FAILED, RETRYING = "Pending", "Running", "Succeeded", "Failed", "Retrying"


@dataclass(frozen=True)
class IslandStatus:
    """What the control plane knows about one island (or the router) right now."""
    name: str
    context: str | None
    namespace: str
    job: str                 # the RayJob's name
    attempt: int
    phase: str               # Pending | Running | Retrying | Succeeded | Failed
    message: str = ""

    def line(self, max_retries: int) -> str:
        where = f"{self.context or 'current context'}, {self.namespace}/{self.job}"
        msg = f": {self.message}" if self.message else ""
        return f"island {self.name} ({where}) attempt {self.attempt} (retries allowed: {max_retries}): {self.phase}{msg}"


def rayjob_phase(obj: dict | None) -> tuple[str, str]:
    """(phase, message) of a RayJob from KubeRay's status (jobDeploymentStatus decides; jobStatus details)."""
    if obj is None:
        return FAILED, "the RayJob disappeared (deleted by someone else?)"
    st = obj.get("status") or {}
    deploy, job = st.get("jobDeploymentStatus", ""), st.get("jobStatus", "")
    why = " ".join(x for x in (st.get("reason", ""), st.get("message", "")) if x)
    if deploy in ("Failed", "ValidationFailed"):
        return FAILED, why or f"jobDeploymentStatus {deploy}, jobStatus {job or '-'}"
    if deploy == "Complete":
        return (SUCCEEDED, "") if job == "SUCCEEDED" else (FAILED, why or f"finished with jobStatus {job or '-'}")
    if deploy == "Retrying":
        return RUNNING, f"KubeRay retries the job (backoffLimit){': ' + why if why else ''}"
    if deploy == "Running" or job == "RUNNING":
        return RUNNING, ""
    return PENDING, deploy or "waiting for the KubeRay operator"


def _attempt_of(obj: dict) -> int:
    try:
        return int(obj["metadata"].get("labels", {}).get(ATTEMPT, "1"))
    except (TypeError, ValueError):
        return 1


class KubernetesIslands:
    """Creates, watches and retries the RayJobs of one run. One client per kube context."""

    def __init__(self, job: JobSpec, manifests: dict[str, Unit], *, contexts: dict[str, str | None],
                 client_factory: Callable[[str | None], KubeClient] = KubeClient.for_context,
                 on_status: Callable[[IslandStatus], None] | None = None, poll_s: float = 10.0,
                 delete_timeout_s: float = 300.0, timeout_s: float | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.job, self.units, self.contexts = job, manifests, dict(contexts)
        self.max_retries = job.spec.islands.max_retries
        self._factory, self._clients = client_factory, {}
        self._on_status = on_status or (lambda s: print(s.line(self.max_retries), file=sys.stderr, flush=True))
        self.poll_s, self.delete_timeout_s, self.timeout_s = poll_s, delete_timeout_s, timeout_s
        self._sleep, self._clock = sleep, clock
        self.status: dict[str, IslandStatus] = {}
        self._retries: dict[str, int] = {}

    def client(self, key: str) -> KubeClient:
        ctx = self.contexts.get(key)
        if ctx not in self._clients:
            self._clients[ctx] = self._factory(ctx)
        return self._clients[ctx]

    # -- the whole run -------------------------------------------------------------
    def run(self) -> dict[str, IslandStatus]:
        """Islands first (all at once), the router after all of them succeeded."""
        islands = [k for k, u in self.units.items() if u.role == "island"]
        self._drive(islands)
        if "router" in self.units:
            self._drive(["router"])
        return dict(self.status)

    def submit(self) -> dict[str, IslandStatus]:
        """Creates (or adopts) the islands' RayJobs without waiting; the router is left for ``run``."""
        for key in (k for k, u in self.units.items() if u.role == "island"):
            self._start(key)
        return dict(self.status)

    # -- one set of units ----------------------------------------------------------
    def _drive(self, keys: list[str]) -> None:
        deadline = None if self.timeout_s is None else self._clock() + self.timeout_s
        for key in keys:
            self._start(key)
        failures: dict[str, str] = {}
        active = [k for k in keys if self.status[k].phase != SUCCEEDED]
        while active:
            self._sleep(self.poll_s)
            for key in list(active):
                st = self.status[key]
                phase, msg = rayjob_phase(self.client(key).get_rayjob(st.namespace, st.job))
                if phase == FAILED and self._retries[key] < self.max_retries:
                    self._retries[key] += 1
                    self._retry(key, msg)
                    continue
                self._report(replace(st, phase=phase, message=msg))
                if phase in (SUCCEEDED, FAILED):
                    active.remove(key)
                    if phase == FAILED:
                        failures[key] = (f"{msg} (RayJob {st.namespace}/{st.job}, attempt {st.attempt}, "
                                         f"context {st.context or 'current'})")
            if deadline is not None and active and self._clock() > deadline:
                raise KubernetesError(f"timed out after {self.timeout_s:.0f} s waiting for: "
                                      f"{', '.join(active)}; their RayJobs keep running (see kubectl get rayjobs)")
        if failures:
            raise IslandsFailed(failures, self.max_retries)

    def _start(self, key: str) -> None:
        unit, cli = self.units[key], self.client(key)
        self._retries[key] = 0
        cli.apply_config_map(unit.config_map)
        created = cli.create_rayjob(unit.ray_object)
        if created is not None:
            st = IslandStatus(key, self.contexts.get(key), unit.namespace, unit.name,
                              _attempt_of(unit.ray_object), PENDING, "created")
            self._report(st)
            return
        obj = cli.get_rayjob(unit.namespace, unit.name)       # left by an earlier submit: adopt it
        phase, msg = rayjob_phase(obj)
        st = IslandStatus(key, self.contexts.get(key), unit.namespace, unit.name,
                          _attempt_of(obj or unit.ray_object), phase, f"existing RayJob: {msg or phase}")
        self._report(st)
        if phase == FAILED:   # restarting a failed leftover does not use up this submit's retries
            self._retry(key, msg)
            self._retries[key] = 0

    def _retry(self, key: str, why: str) -> None:
        st, unit, cli = self.status[key], self.units[key], self.client(key)
        attempt = st.attempt + 1
        self._report(replace(st, phase=RETRYING, message=f"{why}; retrying alone as attempt {attempt}"))
        cli.delete_rayjob(st.namespace, st.job)
        waited = 0.0
        while cli.get_rayjob(st.namespace, st.job) is not None:
            if waited >= self.delete_timeout_s:
                raise KubernetesError(f"RayJob {st.namespace}/{st.job} (island {key}) is still there "
                                      f"{self.delete_timeout_s:.0f} s after its deletion; check its finalizers "
                                      f"(kubectl get rayjob {st.job} -n {st.namespace} -o yaml)")
            self._sleep(self.poll_s)
            waited += max(self.poll_s, 1e-3)
        body = copy.deepcopy(unit.ray_object)
        body["metadata"]["labels"][ATTEMPT] = str(attempt)
        body["metadata"].setdefault("annotations", {})["atoll.dev/previous-failure"] = why[:1000]
        if cli.create_rayjob(body) is None:
            raise KubernetesError(f"RayJob {st.namespace}/{st.job} (island {key}) was recreated by someone "
                                  f"else during its retry; stop the other submitter and submit again")
        self._report(replace(st, attempt=attempt, phase=PENDING, message="recreated"))

    def _report(self, st: IslandStatus) -> None:
        old = self.status.get(st.name)
        self.status[st.name] = st
        if old is None or (old.phase, old.attempt, old.message) != (st.phase, st.attempt, st.message):
            self._on_status(st)


def render(job: JobSpec, *, image: str | None = None, s3_secret: str | None = None,
           values: dict | None = None) -> str:
    """The chart rendered for ``job``'s training (islands + router), as ``helm template`` prints it."""
    vals = merge_values(chart_values(job, image=image, s3_secret=s3_secret), values)
    return helm.template(vals, release=job.name)


def island_contexts(job: JobSpec, contexts: dict[str, str] | None) -> dict[str, str | None]:
    """Kube context per unit key: ``contexts`` (CLI), else the island's ``context``, else the current one."""
    contexts = dict(contexts or {})
    islands = assign_experts(job)
    unknown = sorted(set(contexts) - {i.name for i in islands} - {"router"})
    if unknown:
        raise KubernetesError(f"--context names unknown island(s) {', '.join(unknown)}; islands: "
                              f"{', '.join(i.name for i in islands)}")
    out = {i.name: contexts.get(i.name, i.context) for i in islands}
    out["router"] = contexts.get("router", out[router_island(job, islands).name])
    return out


def submit_kubernetes(job: JobSpec, *, contexts: dict[str, str] | None = None, dry_run: bool = False,
                      output: str = "yaml", image: str | None = None, s3_secret: str | None = None,
                      values: dict | None = None, wait: bool = True,
                      client_factory: Callable[[str | None], KubeClient] = KubeClient.for_context,
                      on_status: Callable[[IslandStatus], None] | None = None,
                      poll_s: float = 10.0, timeout_s: float | None = None) -> str | dict[str, IslandStatus]:
    """``atoll submit JOB --target kubernetes``.

    ``contexts``: island name (or ``router``) -> kube context, over the spec's ``context``.
    ``dry_run``: return the manifests (``output`` ``yaml``: exactly ``helm template``'s output;
    ``json``: a v1 List) and create nothing. Otherwise create the islands' RayJobs, and with
    ``wait`` watch them, retry failed islands alone, then run the router job; returns the
    final status per island (and ``router``). Raises ``IslandsFailed`` naming the islands
    that failed after ``islands.maxRetries`` retries, ``KubernetesError`` for other problems.
    ``values``: chart values merged over the computed ones (resources, nodeSelector, image ...).
    """
    if output not in ("yaml", "json"):
        raise KubernetesError(f"unknown output format {output!r}; use yaml or json")
    text = render(job, image=image, s3_secret=s3_secret, values=values)
    if dry_run:
        return format_output(text, output)
    runner = KubernetesIslands(job, units(parse(text)), contexts=island_contexts(job, contexts),
                               client_factory=client_factory, on_status=on_status, poll_s=poll_s,
                               timeout_s=timeout_s)
    return runner.run() if wait else runner.submit()
