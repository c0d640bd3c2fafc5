"""ZeRO 0-3, fp32 and bf16, on 2 gloo workers started without Ray (``python -m atoll.train.worker``,
as torchrun would): the master weights, the sharded EMA, exact SIGKILL-resume, and resuming at
another world size through a universal checkpoint."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from atoll.islands.plan import Unit, loop_config
from atoll.models.checkpoint import from_pretrained
from atoll.sampling.ensemble import Ensemble
from atoll.spec import parse
from atoll.train import checkpoints as ckpt
from plain_launch import kill_all, run_workers, start_workers, wait_all

pytestmark = pytest.mark.slow
CHECKS = "tests/train/ds_checks.py"


def test_master_weights_and_sharded_ema_equal_deepspeeds_fp32_weights(tmp_path):
    run_workers([CHECKS, "master", str(tmp_path)], world=2, timeout=900)
    for rank in (0, 1):
        res = json.loads((tmp_path / f"master-rank{rank}.json").read_text())
        assert len(res) == 8
        for case, r in res.items():
            stage, precision = int(case[0]), case[2:]
            assert r["engine_stage"] == stage, case
            assert r["module_dtype"] == ("torch.bfloat16" if precision == "bf16" else "torch.float32"), case
            assert r["moved"] > 1e-3, case  # training changed the weights
            assert r["err_full"] == 0.0 and r["err_back"] == 0.0, case
            assert r["err_ema"] < 1e-6, case
            assert r["ema_device"] == "cpu"
            # ZeRO 1-3 keep only this rank's half of the master weights (and of the EMA)
            if stage == 0:
                assert r["part_numel"] == r["full_numel"], case
            else:
                assert r["part_numel"] < 0.51 * r["full_numel"], case


def test_a_one_rank_engine_builds_no_shared_memory_collectives(tmp_path, monkeypatch):
    """One rank: DeepSpeed's JIT-built shm op is never built (an empty extension cache stays empty). The
    two-rank checks in this file run with it wherever DeepSpeed finds it compatible."""
    cache = tmp_path / "torch-extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache))
    run_workers([CHECKS, "shm", str(tmp_path)], world=1, timeout=600)
    assert json.loads((tmp_path / "shm-rank0.json").read_text()) == {"world": 1, "shm_op": False}
    assert not any(cache.rglob("*.so"))


def test_a_build_lock_left_by_a_dead_builder_does_not_hang_a_two_rank_engine(tmp_path, monkeypatch):
    """torch's extension loader waits forever on a ``lock`` file left by a builder that died; the engine
    removes it under its own fcntl lock, loads the op and both ranks use it."""
    import shutil

    from atoll.train import ds_shm

    cache = tmp_path / "torch-extensions"
    built = ds_shm.build_dir()  # the op as earlier engines built it, if they did: saves the 20 s compile
    if (built / f"{ds_shm.OP}.so").exists():
        shutil.copytree(built, cache / ds_shm.OP, ignore=shutil.ignore_patterns("lock", ".atoll-build.lock"))
    (cache / ds_shm.OP).mkdir(parents=True, exist_ok=True)
    (cache / ds_shm.OP / "lock").touch()  # the dead builder's baton
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache))
    run_workers([CHECKS, "shm", str(tmp_path)], world=2, timeout=300)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"shm-rank{rank}.json").read_text()) == {"world": 2, "shm_op": True}
    assert not (cache / ds_shm.OP / "lock").exists()


def test_where_the_op_cannot_be_built_a_two_rank_engine_trains_without_it(tmp_path, monkeypatch):
    """No working compiler: the op is left out (a warning says why) and the engine reduces through gloo."""
    cache = tmp_path / "torch-extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache))
    run_workers([CHECKS, "shm", str(tmp_path)], world=2, timeout=300, env={"CXX": "/bin/false"})
    for rank in (0, 1):
        assert json.loads((tmp_path / f"shm-rank{rank}.json").read_text()) == {"world": 2, "shm_op": False}
    assert not any(cache.rglob("*.so"))


@pytest.mark.parametrize("stage,saved_world,world", [(2, 2, 1), (3, 1, 2)])
def test_checkpoint_resumes_resharded_at_another_world_size(tmp_path, stage, saved_world, world):
    env = {"CHECK_ZERO_STAGE": str(stage)}
    run_workers([CHECKS, "save", str(tmp_path)], world=saved_world, timeout=900, env=env)
    run_workers([CHECKS, "load", str(tmp_path)], world=world, timeout=900, env=env)
    for rank in range(world):
        r = json.loads((tmp_path / f"load-rank{rank}.json").read_text())
        assert r["universal"] and r["saved_world"] == saved_world and r["step"] == 3
        assert r["err_weights"] == 0.0 and r["err_exp_avg"] == 0.0 and r["err_ema"] == 0.0


def _bf16(job, **training):
    d = job.model_dump(mode="json", by_alias=True)
    d["spec"]["experts"]["training"].update(precision="bf16", **training)
    return parse(d, source="test")


def _config(tmp_path, job, run, name: str) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(loop_config(job, Unit("expert", 0, "experts/000"), run, None)))
    return str(path)


def _kill_after_checkpoint(procs, run, at_step: int, timeout: float = 600) -> int:
    """SIGKILLs the group once checkpoint ``at_step`` is committed while it still trains."""
    deadline = time.time() + timeout
    island = run.sub("experts/000")
    while time.time() < deadline:
        if (ckpt.latest(island) or 0) >= at_step and island.exists("progress.json"):
            p = island.get_json("progress.json")
            if p.get("state") == "training" and p["step"] < p["total"]:
                kill_all(procs)
                return p["step"]
        if any(pr.poll() is not None for pr in procs):
            break
        time.sleep(0.05)
    raise AssertionError("the workers finished or failed before they could be killed")


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_bf16_zero_on_two_workers_sigkill_resume_is_exact(tmp_path, tiny, zero):
    same = np.arange(600)
    job, run = tiny(name=f"plain{zero}", k=1, steps=16, workers=2, zero=zero, ckpt=4, parts=[same])
    job = _bf16(job, emaDecay=0.9)
    ref_job, ref_run = tiny(name=f"plainref{zero}", k=1, steps=16, workers=2, zero=zero, ckpt=4, parts=[same])
    ref_job = _bf16(ref_job, emaDecay=0.9)
    args = ["-m", "atoll.train.worker"]
    reference = start_workers(args + [_config(tmp_path, ref_job, ref_run, "ref")], 2)
    killed = start_workers(args + [_config(tmp_path, job, run, "kill")], 2)
    step = _kill_after_checkpoint(killed, run, at_step=4)
    run_workers(args + [_config(tmp_path, job, run, "kill")], 2, timeout=900)  # the restarted group
    wait_all(reference, timeout=900)

    m, ref = run.manifest("experts/000"), ref_run.manifest("experts/000")
    assert 4 <= m["resumed_from_step"] <= step < 16
    assert m["zero_stage"] == zero and m["precision"] == "bf16" and m["world_size"] == 2
    assert m["master_weights"] == ("zero3" if zero == 3 else "fragments") and m["ema_device"] == "cpu"
    assert len(m["peak_rss_mb_per_rank"]) == 2
    for weights in ("raw", "model"):  # the trained fp32 master weights and their EMA
        a = from_pretrained(run, "experts/000/model", weights=weights).state_dict()
        b = from_pretrained(ref_run, "experts/000/model", weights=weights).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{weights}: the resumed run diverged"
    hist = ref_run.get_json("experts/000/metrics.json")["history"]
    assert hist[-1]["loss"] < hist[0]["loss"], "loss did not fall"
    model = from_pretrained(run, "experts/000/model")
    out = Ensemble([model]).sample(2, steps=3, class_labels=[3, 7], guidance=2.0)
    assert out.images.shape == (2, 1, 8, 8) and out.images.dtype == torch.uint8
    assert ref["final_loss"] == m["final_loss"]


def test_island_resumes_at_another_world_size_and_says_so(tmp_path, tiny):
    job, run = tiny(name="reshard", k=1, steps=12, workers=2, zero=2, ckpt=4, parts=[np.arange(600)])
    job = _bf16(job)
    args = ["-m", "atoll.train.worker"]
    procs = start_workers(args + [_config(tmp_path, job, run, "two")], 2)
    _kill_after_checkpoint(procs, run, at_step=4)
    one = job.model_dump(mode="json", by_alias=True)
    one["spec"]["experts"]["scaling"]["numWorkers"] = 1
    run_workers(args + [_config(tmp_path, parse(one, source="test"), run, "one")], 1, timeout=900)
    m = run.manifest("experts/000")
    assert m["world_size"] == 1 and m["resumed_from_step"] >= 4
    assert m["reshards"] == [{"step": m["resumed_from_step"], "saved_world_size": 2, "world_size": 1}]
    hist = run.get_json("experts/000/metrics.json")["history"]
    assert hist[-1]["step"] == 12 and np.isfinite(hist[-1]["loss"])
