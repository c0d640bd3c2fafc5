"""``atoll distill``: the trained ensemble of a job becomes the teacher of one dense student DiT.

The student is a normal one-model run, ``<store>/<name>-distilled`` (``distill.name``), that ``atoll
sample`` and ``atoll serve`` take like any monolith. It trains on its own island through the same
Ray Train + DeepSpeed path as every expert (``atoll.train.distill_task``: the teacher's velocity as
the target), resumes from its checkpoints, and is skipped when already trained with the same
settings. ``distill/manifest.json`` in the student run records the teacher, the strategy and the
FLOPs: the student's training and the teacher's forward passes.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from atoll.run_store import open_run, s3_config
from atoll.spec import JobSpec, dump, parse


class DistillError(ValueError):
    """The job cannot be distilled (its ensemble is not trained, or a setting rules it out); says the fix."""


@dataclass
class Distilled:
    job: JobSpec          # the student's job (a monolith job with experts.distillFrom)
    uri: str              # the student run
    manifest: dict        # distill/manifest.json
    trained: bool         # False: it was already trained (skipped)


def student_job(job: JobSpec) -> JobSpec:
    """The student's job: the teacher's job as one model (``experts.mode: monolith``) of ``distill.model``,
    trained with ``distill.training`` (default: the experts' training with the batch they saw together,
    K x batchSize, so the student takes as many samples as the whole ensemble) on ``distill.scaling``."""
    s = job.spec
    if s.experts.mode == "monolith" or s.num_experts < 2:
        raise DistillError(f"job {job.name!r} trains one model (experts.mode: monolith): there is no ensemble to "
                           "distil; distil an ensemble job (experts.mode: ensemble, partition.k >= 2)")
    if s.is_video or s.experts.conditioning == "text":
        what = "video experts" if s.is_video else "text-conditioned experts"
        raise DistillError(f"distillation supports image experts conditioned on classes or nothing, not {what} "
                           f"(experts.model {s.experts.model}, experts.conditioning {s.experts.conditioning})")
    if s.experts.distill_from is not None:
        raise DistillError(f"job {job.name!r} is itself a distilled student (experts.distillFrom: "
                           f"{s.experts.distill_from}); distil its teacher's job instead")
    d = s.distill
    if d.strategy.startswith("top") and int(d.strategy[3:]) > s.num_experts:
        raise DistillError(f"distill.strategy {d.strategy} needs more experts than the job has ({s.num_experts}); "
                           f"use top1..top{s.num_experts} or full")
    doc = dump(job)
    ex = doc["spec"]["experts"]
    ex.pop("recipe", None)  # already merged into the dump; the student's own fields must win
    training = (d.training.model_dump(mode="json", by_alias=True) if d.training is not None
                else default_training(job, doc))
    ex.update(mode="monolith", model=d.model or s.experts.model, training=training, distillFrom=job.name)
    if d.scaling is not None:
        ex["scaling"] = d.scaling.model_dump(mode="json", by_alias=True)
    doc["metadata"]["name"] = d.name or f"{job.name}-distilled"
    doc["spec"]["sample"]["strategies"] = ["top1"]  # one model: every strategy is the same
    return parse(doc, source=f"{job.name} (distill)")


def default_training(job: JobSpec, doc: dict) -> dict:
    """The student's training when ``distill.training`` is unset: the experts' (``doc``: ``dump(job)``) with
    the batch they saw together, K x batchSize."""
    return {**doc["spec"]["experts"]["training"], "batchSize": job.spec.experts.training.batch_size * job.spec.num_experts}


def distill(job: JobSpec, *, store_uri: str | None = None,
            on_progress: Callable[[str], None] | None = None) -> Distilled:
    """Trains (or finds trained) the student of ``job``'s ensemble; returns where it is and what it cost."""
    from atoll import stages
    from atoll.islands.plan import expert_units, is_done, router_unit

    say = on_progress or (lambda _m: None)
    teacher = open_run(job, store_uri)
    for u in expert_units(job) + [router_unit()]:
        if not is_done(teacher, u, job):
            raise DistillError(f"the teacher is not trained: {u.name} has no committed model at "
                               f"{teacher.url(u.prefix)}; run `atoll run JOB.yaml --until router` first")
    student = student_job(job)
    run = open_run(student, store_uri)
    unit = expert_units(student)[0]
    trained = not is_done(run, unit, student)
    run.put_json("job.json", {"spec": student.model_dump(mode="json", by_alias=True)})
    t0 = time.time()
    if trained:
        say(f"distilling {job.name} ({job.spec.num_experts} experts, {student.spec.distill.strategy}) into "
            f"{student.spec.experts.model} at {run.uri}")
        stages._train(student, run, s3_config(student), [unit])
    if not trained and (done := run.manifest("distill")) is not None:
        return Distilled(student, run.uri, done, False)
    m = run.manifest(unit.prefix)
    tr = student.spec.experts.training
    teacher_fwd = _teacher_flops_per_sample(teacher, student.spec.distill.strategy)
    manifest = {"teacher": job.name, "teacher_uri": teacher.uri, "strategy": student.spec.distill.strategy,
                "num_experts": job.spec.num_experts, "student_model": student.spec.experts.model,
                "steps": tr.steps, "batch_size": tr.batch_size,
                "student_train_flops": float(m["train_flops"]),
                "teacher_flops": teacher_fwd * tr.batch_size * tr.steps,
                "teacher_flops_per_sample": teacher_fwd, "final_loss": m.get("final_loss")}
    manifest["total_flops"] = manifest["student_train_flops"] + manifest["teacher_flops"]
    if trained:
        manifest["wall_s"] = round(time.time() - t0, 1)
        run.commit("distill", manifest)
    return Distilled(student, run.uri, manifest, trained)


def _teacher_flops_per_sample(teacher, strategy: str) -> float:
    """The teacher's FLOPs for one training sample: one routed evaluation (router + the selected experts),
    from the served experts' and router's configs (no weights are read)."""
    from atoll.models.checkpoint import config_of
    from atoll.sampling import costs
    from atoll.sampling.runs import inspect_run

    info = inspect_run(teacher)
    experts = [config_of(teacher, info.expert_prefix(i)) for i in range(info.num_experts)]
    router = config_of(teacher, info.router_prefix) if info.num_experts > 1 else None
    return costs.gflops_per_image(experts, router, strategy, steps=1, sampler="euler", cfg=False) * 1e9


def with_overrides(job: JobSpec, *, model: str | None = None, steps: int | None = None,
                   strategy: str | None = None) -> JobSpec:
    """``job`` with command-line choices put into its ``distill`` section (validated like the YAML)."""
    if model is None and steps is None and strategy is None:
        return job
    doc = dump(job)
    d = doc["spec"].setdefault("distill", {})
    if model is not None:
        d["model"] = model
    if strategy is not None:
        d["strategy"] = strategy
    if steps is not None:
        d["training"] = {**(d.get("training") or default_training(job, doc)), "steps": steps}
    return parse(doc, source=f"{job.name} (with the command line's --model/--steps/--strategy)")
