"""The whole data flow of a job, stage by stage, resumable.

Stages run in a fixed order; each reads from and writes to the run's folder in
the store and is complete when its manifest is committed. ``until`` stops after
a stage; ``from_stage`` forgets that stage and every later one first (their
manifests go, so they are redone).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from atoll.run_store import open_run, s3_config
from atoll.spec import JobSpec
from atoll.store import S3Config, Store

__all__ = ["STAGES", "PipelineError", "active_stages", "StageResult", "is_complete", "forget", "open_run", "run", "s3_config",
           "stage_prefixes"]

STAGES = ("data", "encode", "partition", "experts", "router", "samples", "report")


class PipelineError(RuntimeError):
    pass


def active_stages(job: JobSpec) -> tuple[str, ...]:
    """The stages a job runs: ``encode`` only in latent space (``latents.enabled``)."""
    return tuple(s for s in STAGES if s != "encode" or job.spec.latents.enabled)


def check_stage(name: str | None, option: str) -> str | None:
    if name is not None and name not in STAGES:
        raise PipelineError(f"{option} {name!r} is not a stage; use one of: {', '.join(STAGES)}")
    return name


@dataclass
class StageResult:
    name: str
    status: str  # "done" | "skipped"
    wall_s: float
    info: dict = field(default_factory=dict)


def stage_prefixes(job: JobSpec, stage: str) -> list[str]:
    """The artifact folders a stage commits (used for --from and for 'is it done')."""
    if stage == "experts":
        return [f"experts/{k:03d}" for k in range(job.spec.num_experts)]
    if stage == "router" and job.spec.experts.mode == "monolith":
        return []  # one model needs no router
    if stage == "encode":
        return ["latents"] if job.spec.latents.enabled else []  # pixel space: nothing to encode
    return {"data": ["data"], "partition": ["partition"], "router": ["router"],
            "samples": ["samples"], "report": ["report"]}[stage]


def is_complete(run: Store, job: JobSpec, stage: str) -> bool:
    """Every artifact of the stage is committed. Trained experts / router must also come from this job's
    settings (``plan.is_done`` raises ``TrainedWithOtherSpec`` naming the fix otherwise)."""
    if stage in ("experts", "router"):
        from atoll.islands.plan import expert_units, is_done, router_unit

        prefixes = stage_prefixes(job, stage)
        return all([is_done(run, u, job) for u in expert_units(job) + [router_unit()] if u.prefix in prefixes])
    if stage == "encode" and job.spec.latents.enabled:
        from atoll.data.encode import check_vae

        check_vae(job, run)  # a run encoded with one VAE is never resumed with another
    return all(run.manifest(p) is not None for p in stage_prefixes(job, stage))


def forget(run: Store, job: JobSpec, stage: str) -> None:
    """Uncommits a stage and everything after it (manifests first, then files). Retraining the experts or
    the router also ends the run's registry versions (``experts/registry.json``: retired experts, restricted
    routers): the retrained run is version 1 again."""
    for s in STAGES[STAGES.index(stage):]:
        for p in stage_prefixes(job, s):
            run.uncommit(p)
        if s == "partition":
            for key in run.list("partition"):
                run.delete(key)
        if s in ("experts", "router"):
            from atoll.experts_registry import forget_versions

            forget_versions(run)


def _runners() -> dict[str, Callable[[JobSpec, Store, S3Config | None], dict]]:
    from atoll import stages

    return {"data": stages.data, "encode": stages.encode, "partition": stages.partition, "experts": stages.experts,
            "router": stages.router, "samples": stages.samples, "report": stages.report}


def _record(run_store: Store, res: StageResult) -> None:
    """Keeps each stage's last wall time in ``stages.json`` (read by the report)."""
    times = run_store.get_json("stages.json") if run_store.exists("stages.json") else {}
    times[res.name] = {"wall_s": round(res.wall_s, 2), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime())}
    run_store.put_json("stages.json", times)


def run(job: JobSpec, *, until: str | None = None, from_stage: str | None = None, store_uri: str | None = None,
        on_stage: Callable[[StageResult], None] | None = None) -> list[StageResult]:
    check_stage(until, "--until")
    check_stage(from_stage, "--from")
    run_store = open_run(job, store_uri)
    if from_stage:
        forget(run_store, job, from_stage)
    run_store.put_json("job.json", {"spec": job.model_dump(mode="json", by_alias=True)})
    runners = _runners()
    results = []
    last = STAGES.index(until) if until else len(STAGES) - 1
    for stage in [s for s in STAGES[: last + 1] if s in active_stages(job)]:
        t0 = time.time()
        # the router trains during the experts stage (one wave of islands): report it as done here
        with_experts = stage == "router" and "router" in (results[-1].info.get("trained", []) if results else [])
        if is_complete(run_store, job, stage) and not with_experts:
            res = StageResult(stage, "skipped", 0.0)
        else:
            info = runners[stage](job, run_store, s3_config(job)) or {}
            res = StageResult(stage, "done", time.time() - t0, info)
            _record(run_store, res)
        results.append(res)
        if on_stage:
            on_stage(res)
    return results
