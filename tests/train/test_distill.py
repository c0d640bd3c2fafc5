"""Distillation (``atoll distill``): the student's job, its training target, and the whole command on a
real island (Ray Train + DeepSpeed), sampled afterwards like any one-model run."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from atoll.distill import DistillError, distill, student_job, with_overrides
from atoll.models.checkpoint import save_pretrained
from atoll.models.dit import DiTConfig
from atoll.models.flow import interpolate, sample_t
from atoll.models.router import RouterConfig
from atoll.pipeline import open_run
from atoll.spec import SpecError, dump, loads
from atoll.train.tasks import make_task
from tiny_runs import perturbed


def teacher_run(tiny, name: str = "teach", k: int = 2):
    """A tiny K-expert teacher on the digits: data + partitions (conftest ``prepare``), random perturbed
    experts and router committed like trained ones (different experts, so the routing matters)."""
    job, run = tiny(name=name, k=k)
    for i in range(k):
        e = perturbed(DiTConfig(size="DiT-XXS/2", input_size=8, in_channels=1, num_classes=10).build(), 10 + i, 0.05)
        save_pretrained(e, run, f"experts/{i:03d}/model")
        run.commit(f"experts/{i:03d}", {"name": f"expert-{i:03d}", "train_flops": 1.0})
    r = perturbed(RouterConfig(size="Router-XS", input_size=8, in_channels=1, num_experts=k, num_classes=10).build(),
                  3, 0.5)
    save_pretrained(r, run, "router/model")
    run.commit("router", {"name": "router", "train_flops": 1.0})
    return job, run


def test_the_student_is_a_monolith_of_the_distill_model_reading_the_teachers_data(tiny):
    job, _ = tiny(name="teach", k=2)
    assert "distill" not in dump(job)["spec"] and "distillFrom" not in dump(job)["spec"]["experts"]  # hashes as before
    s = student_job(job)
    ex = s.spec.experts
    assert s.name == "teach-distilled" and ex.mode == "monolith" and ex.distill_from == "teach"
    assert ex.model == job.spec.experts.model and s.spec.num_experts == 1
    assert ex.training.batch_size == 2 * job.spec.experts.training.batch_size  # the batch the K experts saw
    assert ex.training.steps == job.spec.experts.training.steps
    small = student_job(with_overrides(job, model="DiT-XXS/4", steps=5, strategy="full"))
    assert (small.spec.experts.model, small.spec.experts.training.steps, small.spec.distill.strategy) == \
        ("DiT-XXS/4", 5, "full")
    assert make_task(s, "expert", 0).__class__.__name__ == "DistillTask"
    assert make_task(job, "expert", 0).__class__.__name__ == "ExpertTask"


def test_bad_distillations_are_refused_naming_the_field(tiny):
    job, _ = tiny(name="teach", k=2)
    with pytest.raises(DistillError, match="top1..top2"):
        student_job(with_overrides(job, strategy="top3"))
    with pytest.raises(DistillError, match="no ensemble"):
        student_job(student_job(job))
    with pytest.raises(SpecError, match="spec.distill.model"):
        with_overrides(job, model="DiT-Huge/1")
    doc = dump(job)
    doc["spec"]["experts"]["distillFrom"] = "other"
    with pytest.raises(SpecError, match="distillFrom.*monolith"):
        loads(__import__("yaml").safe_dump(doc))
    with pytest.raises(DistillError, match="teacher is not trained.*expert-000"):
        distill(job)


def test_the_students_target_is_the_teachers_routed_velocity_at_the_experts_noised_samples(tiny):
    from atoll.sampling import Ensemble

    job, run = teacher_run(tiny)
    s = student_job(job)
    task = make_task(s, "expert", 0)
    task.load(open_run(s))  # the student run holds nothing: the data is read from the teacher
    assert task.num_samples() == run.manifest("data")["count"]
    batch = task.batch(0, 0, 0, 1, 0, 1, "cpu")
    student = task.build_model()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01)
    loss = task.loss(student, batch, torch.Generator().manual_seed(7), torch.float32)

    # the same draws as an expert's loss: class dropout, t, noise; then the teacher's top1 velocity
    g = torch.Generator().manual_seed(7)
    n = batch.x0.shape[0]
    drop = torch.rand(n, generator=g) < s.spec.experts.training.class_dropout
    y = torch.where(drop, torch.full_like(batch.y, 10), batch.y)
    t = sample_t(n, kind=s.spec.experts.training.timesteps, generator=g)
    eps = torch.randn(batch.x0.shape, generator=g)
    x_t = interpolate(batch.x0, eps, t)
    teacher = Ensemble.from_pretrained(run)
    want, trace = teacher.velocity(x_t, t, y, strategy="top1")
    assert len(set(trace.indices[:, 0].tolist())) == 2, "the router should use both experts on this batch"
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(student(x_t, t, y=y), want)
        flow = torch.nn.functional.mse_loss(student(x_t, t, y=y), eps - batch.x0)
    assert torch.allclose(loss.detach(), expected, rtol=1e-5), (float(loss), float(expected))
    assert not torch.allclose(expected, flow)  # not the data's flow target


@pytest.mark.slow
def test_atoll_distill_trains_a_student_on_an_island_that_samples_like_any_run(tiny, tmp_path, ray_local):
    from atoll.cli import app
    from atoll.sampling import Ensemble

    job, teacher = teacher_run(tiny, name="dist")
    path = tmp_path / "job.yaml"
    path.write_text(__import__("yaml").safe_dump(dump(job)))
    args = ["distill", str(path), "--steps", "30", "--model", "DiT-XXS/2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    s = student_job(with_overrides(job, steps=30, model="DiT-XXS/2"))
    srun = open_run(s)
    m = srun.manifest("distill")
    assert m["teacher"] == "dist" and m["steps"] == 30 and m["strategy"] == "top1"
    assert m["teacher_flops"] > 0 and m["total_flops"] == m["student_train_flops"] + m["teacher_flops"]
    island = srun.manifest("experts/000")
    assert island["world_size"] == 1 and island["steps"] == 30 and "zero_stage" in island

    # the trained student is closer to the teacher than its starting point (same seed, same init)
    student = Ensemble.from_pretrained(srun.uri, weights="raw")  # 30 steps: the EMA (0.999) has barely moved
    assert student.num_experts == 1 and student.class_names == teacher.manifest("data")["class_names"]
    task = make_task(s, "expert", 0)
    task.load(srun)
    start = task.build_model()  # adaLN-Zero: velocity 0 at the start, whatever the seed
    g = torch.Generator().manual_seed(1)
    x0 = task.batch(0, 0, 0, 1, 0, 1, "cpu").x0
    t = torch.rand(x0.shape[0], generator=g) * 0.9 + 0.05
    x_t = interpolate(x0, torch.randn(x0.shape, generator=g), t)
    y = torch.arange(x0.shape[0]) % 10
    target = task.target(x_t, t, y)
    with torch.no_grad():
        before = float(torch.nn.functional.mse_loss(start(x_t, t, y=y), target))
        after = float(torch.nn.functional.mse_loss(student.experts[0](x_t, t, y=y), target))
    assert after < 0.8 * before, (before, after)

    again = CliRunner().invoke(app, args)  # committed with the same settings: nothing retrained
    assert again.exit_code == 0 and "already trained" in again.output, again.output
    grid = tmp_path / "student.png"
    out = CliRunner().invoke(app, ["sample", srun.uri, "-n", "4", "--steps", "3", "-o", str(grid)])
    assert out.exit_code == 0 and grid.stat().st_size > 0, out.output
