"""``atoll logs JOB --expert K``: a unit's logs, the same way for every target.

The log files of the unit's Ray processes are in the run (``<unit>/logs/``,
shipped by the island while it trains, see ``worker_logs``), whatever the target.
The ``ray`` target adds the Jobs API log of the unit's latest job (its driver,
``atoll train-expert``); for ``kubernetes`` the RayJob's submitter log is one
``kubectl logs`` away (the command is printed).
"""
from __future__ import annotations

import time
from collections.abc import Callable

from atoll.islands import control_state, worker_logs
from atoll.islands.plan import Unit, is_done
from atoll.spec import JobSpec
from atoll.store import Store


class NoLogs(RuntimeError):
    """Nothing logged for the unit yet (never started, or started before logs were shipped)."""


def _tail(lines: list[str], n: int) -> list[str]:
    return lines[-n:] if n else lines


def _jobs_api_log(job: JobSpec, run: Store, name: str, tail: int, echo: Callable[[str], None]) -> bool:
    from atoll.islands.ray_jobs import JobsError
    from atoll.islands.remote import unit_job
    from atoll.pipeline import PipelineError

    try:
        client, job_id = unit_job(job, run, name)
        text = client.logs(job_id)
    except (JobsError, PipelineError) as e:
        echo(f"==> Jobs API log of {name}: not available ({e}) <==")
        return False
    echo(f"==> Jobs API log of {name}: job {job_id} on island {client.island} ({client.address}) <==")
    for ln in _tail(text.splitlines(), tail):
        echo(ln)
    return True


def show(job: JobSpec, run: Store, unit: Unit, *, tail: int = 100, follow: bool = False,
         echo: Callable[[str], None] = print, poll_s: float = 2.0) -> None:
    """Prints the unit's logs (the last ``tail`` lines of each file; 0: all); ``follow``: keeps printing new
    lines until the unit is committed (or interrupted). Raises ``NoLogs`` when there is nothing at all."""
    store = run.sub(unit.prefix)
    shown = False
    target = job.spec.islands.target
    if control_state.load(run) is not None:
        shown = _jobs_api_log(job, run, unit.name, tail, echo)
    elif target == "kubernetes":
        ns = {i.name: i.namespace for i in job.spec.islands.islands}
        echo(f"==> the RayJob's submitter log: kubectl logs -n <namespace> job/<RayJob name> (RayJobs: kubectl get "
             f"rayjobs -l atoll.dev/role -n {', '.join(sorted(set(ns.values()))) or 'default'}) <==")
    seen: dict[str, int] = {}
    quiet = []
    for fname, text in worker_logs.read(store):
        lines = worker_logs.clean(text)
        seen[fname] = len(lines)
        shown = True
        if not any(ln.strip() for ln in lines):
            quiet.append(worker_logs.label(text))
            continue
        echo(f"==> {store.url(worker_logs.PREFIX)}/{fname} ({worker_logs.label(text)}) <==")
        for ln in _tail(lines, tail):
            echo(ln)
    if quiet:
        echo(f"==> {len(quiet)} more process(es) printed nothing: {', '.join(quiet)} <==")
    if not shown and not follow:
        raise NoLogs(f"no logs for {unit.name} yet: nothing under {store.url(worker_logs.PREFIX)}/"
                     f"{' and no Ray job recorded' if target == 'ray' else ''}; the island has not started (see "
                     "`atoll status JOB.yaml`), or it ran with an Atoll that did not ship its logs")
    while follow:
        done = is_done(run, unit)
        time.sleep(poll_s)
        grew = False
        for fname, text in worker_logs.read(store):
            lines = worker_logs.clean(text)
            if len(lines) > seen.get(fname, 0):
                grew = True
                if fname not in seen:
                    echo(f"==> {store.url(worker_logs.PREFIX)}/{fname} ({worker_logs.label(text)}) <==")
                for ln in lines[seen.get(fname, 0):]:
                    echo(ln)
                seen[fname] = len(lines)
        if done and not grew:   # committed, and the island's last shipment is in
            return
