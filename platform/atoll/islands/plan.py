"""What each island trains: the (role, expert, prefix) units of a job, and their configs."""
from __future__ import annotations

from dataclasses import dataclass

from atoll.spec import JobSpec, dump
from atoll.spec.models import ScalingSpec
from atoll.store import S3Config, Store


@dataclass(frozen=True)
class Unit:
    """One training run on one island: an expert (id k) or the router."""
    role: str            # "expert" | "router"
    expert: int | None
    prefix: str          # its folder in the run, e.g. "experts/002" or "router"

    @property
    def name(self) -> str:
        return "router" if self.role == "router" else f"expert-{self.expert:03d}"


def expert_units(job: JobSpec) -> list[Unit]:
    return [Unit("expert", k, f"experts/{k:03d}") for k in range(job.spec.num_experts)]


def router_unit() -> Unit:
    return Unit("router", None, "router")


def scaling_of(job: JobSpec, unit: Unit) -> ScalingSpec:
    return job.spec.router.scaling if unit.role == "router" else job.spec.experts.scaling


def loop_config(job: JobSpec, unit: Unit, run: Store, s3: S3Config | None, attempt: int = 0) -> dict:
    """The plain-dict config a Ray Train worker gets (the job travels as its YAML dict)."""
    s3d = {} if s3 is None else {k: v for k, v in s3.__dict__.items() if v is not None}
    return {"job": dump(job), "role": unit.role, "expert": unit.expert, "prefix": unit.prefix,
            "run_uri": run.uri, "s3": s3d, "attempt": attempt,
            "cpus_per_worker": scaling_of(job, unit).cpus_per_worker}


def is_done(run: Store, unit: Unit) -> bool:
    return run.manifest(unit.prefix) is not None
