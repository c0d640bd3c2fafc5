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


# Settings that do not change the trained weights (a resume may change them freely).
_BOOKKEEPING = {"log_every", "checkpoint_every", "snapshot_every"}


def training_fingerprint(job: JobSpec, unit: Unit) -> str:
    """A hash of everything that determines a unit's weights: data, partition, its model and training
    settings (not its scaling, logging or checkpoint cadence)."""
    from atoll.data.stage import spec_hash

    s = job.spec
    section = s.router if unit.role == "router" else s.experts
    body = section.model_dump(mode="json", exclude={"scaling", "recipe"})
    body["training"] = {k: v for k, v in body["training"].items() if k not in _BOOKKEEPING}
    extra = {"experts": {"model": s.experts.model, "conditioning": s.experts.conditioning}} if unit.role == "router" else {}
    if s.latents.enabled:  # latent space (which VAE is checked against the latents' manifest, see data.encode)
        extra["latents"] = True
    return spec_hash({"data": s.data.training_view(), "partition": s.partition.model_dump(mode="json"),
                      "unit": body, **extra})


class TrainedWithOtherSpec(ValueError):
    """A unit is committed, but it was trained from a different spec than the one given now."""


def is_done(run: Store, unit: Unit, job: JobSpec | None = None) -> bool:
    """Whether ``unit`` is trained and committed. With ``job``: a unit trained from different settings
    raises ``TrainedWithOtherSpec`` (naming the fix) instead of being silently reused."""
    m = run.manifest(unit.prefix)
    if m is None:
        return False
    if job is not None and m.get("fingerprint") and m["fingerprint"] != training_fingerprint(job, unit):
        raise TrainedWithOtherSpec(
            f"{unit.name} at {run.url(unit.prefix)} was trained from different data/partition/{unit.role} settings "
            f"than this job's (training steps, batch, lr, model ...); retrain with `atoll run JOB.yaml --from "
            f"{'router' if unit.role == 'router' else 'experts'}`, or give the job a new metadata.name")
    return True
