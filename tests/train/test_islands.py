"""Islands for real: Ray Train + DeepSpeed on CPU workers, store checkpoints, resume."""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from atoll.islands.local import run_units
from atoll.islands.plan import Unit, expert_units, router_unit
from atoll.models.checkpoint import from_pretrained
from atoll.train import checkpoints as ckpt

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("zero", [1, 2])
def test_zero_stage_on_two_workers(ray_local, tiny, zero):
    job, run = tiny(name=f"zero{zero}", k=1, steps=6, workers=2, zero=zero, ckpt=3, parts=[np.arange(600)])
    out = run_units(job, run, None, expert_units(job))
    assert out.done == ["expert-000"], out.failed
    m = run.manifest("experts/000")
    assert m["world_size"] == 2 and m["steps"] == 6
    assert np.isfinite(m["final_loss"])
    # rank 1 uploaded its own optimizer partition into the committed checkpoint
    files = run.manifest("experts/000/checkpoints/step-000003")["files"]
    assert any("zero_pp_rank_1_" in f for f in files) and any("zero_pp_rank_0_" in f for f in files)
    model = from_pretrained(run, "experts/000/model")
    x = torch.randn(2, 1, 8, 8)
    v = model(x, torch.rand(2), y=torch.tensor([1, 10]))
    assert v.shape == x.shape and torch.isfinite(v).all()


def _kill_after_checkpoint(run, prefix: str, at_step: int, killed: dict, deadline: float) -> None:
    while time.time() < deadline:
        if (ckpt.latest(run.sub(prefix)) or 0) >= at_step and run.exists(f"{prefix}/progress.json"):
            p = run.get_json(f"{prefix}/progress.json")
            if p.get("state") == "training" and p["step"] < p["total"]:
                os.kill(p["pid"], signal.SIGKILL)
                killed.update(step=p["step"], pid=p["pid"])
                return
        time.sleep(0.05)


def test_killed_worker_resumes_exactly_and_other_island_is_unaffected(ray_local, tiny):
    # both experts get the SAME data but their own seeds (init and noise); an exact resume must end
    # with the weights of the same expert trained without interruption (a second job, same spec)
    same = np.arange(800)
    job, run = tiny(name="kill", k=2, steps=40, ckpt=10, parts=[same, same])
    killed: dict = {}
    watcher = threading.Thread(target=_kill_after_checkpoint,
                               args=(run, "experts/001", 10, killed, time.time() + 600), daemon=True)
    watcher.start()
    out = run_units(job, run, None, expert_units(job))
    watcher.join(timeout=1)
    assert killed, "the worker was never killed (training finished too fast?)"
    assert sorted(out.done) == ["expert-000", "expert-001"], out.failed
    m0, m1 = run.manifest("experts/000"), run.manifest("experts/001")
    assert m0["restarts"] == 0 and m0["resumed_from_step"] == 0
    assert m1["restarts"] >= 1 and 10 <= m1["resumed_from_step"] <= killed["step"]
    hist = run.get_json("experts/001/metrics.json")["history"]
    assert hist[-1]["step"] == 40 and [h["step"] for h in hist] == sorted({h["step"] for h in hist})
    ref_job, ref_run = tiny(name="killref", k=2, steps=40, ckpt=10, parts=[same, same])
    assert run_units(ref_job, ref_run, None, expert_units(ref_job)[1:]).done == ["expert-001"]
    a = from_pretrained(run, "experts/001/model", weights="raw").state_dict()
    b = from_pretrained(ref_run, "experts/001/model", weights="raw").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    other = from_pretrained(run, "experts/000/model", weights="raw").state_dict()
    assert not all(torch.equal(a[k], other[k]) for k in a), "two experts trained on one data set are identical"


def test_router_learns_the_partition(ray_local, tiny):
    job, run = tiny(name="router", k=2, router_steps=60)
    out = run_units(job, run, None, [router_unit()])
    assert out.done == ["router"], out.failed
    hist = run.get_json("router/metrics.json")["history"]
    first, last = np.mean([h["loss"] for h in hist[:2]]), np.mean([h["loss"] for h in hist[-2:]])
    assert last < first - 0.05, (first, last)
    m = run.manifest("router")
    acc, blind = m["accuracy_vs_t"], m["accuracy_vs_t_no_class"]
    assert acc["0"] > 0.7                        # clean images: the split by label parity is learnable
    assert abs(blind["1"] - 0.5) < 0.1           # pure noise and no class: chance
    assert acc["1"] > 0.9                        # pure noise but the class: the parity split is p(k | y)
    assert os.path.getsize(run.local_path("router/losses.png")) > 1000


def test_finished_islands_are_skipped(ray_local, tiny):
    job, run = tiny(name="skip", k=1, steps=2, ckpt=100, parts=[np.arange(100)])
    assert run_units(job, run, None, expert_units(job)).done == ["expert-000"]
    again = run_units(job, run, None, expert_units(job))
    assert again.skipped == ["expert-000"] and not again.done
