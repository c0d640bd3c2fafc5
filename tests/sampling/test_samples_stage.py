"""The samples stage writes grids per strategy and per expert, the trace and, last, its manifest."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from atoll.sampling.stage import run_samples
from atoll.store import open_store


def _copy(saved_runs, name, tmp_path):
    shutil.copytree(Path(saved_runs["root"]) / name, tmp_path / name)
    return open_store(str(tmp_path)).sub(name)


def test_samples_stage_on_an_ensemble(saved_runs, tmp_path):
    job, _ = saved_runs["ens"]
    run = _copy(saved_runs, "ens", tmp_path)
    m = run_samples(job, run, None)
    assert run.manifest("samples") == m
    names = {f["name"] for f in m["files"]}
    assert names == {"top1.png", "full.png", "expert-000.png", "expert-001.png", "trace.png"}
    for n in names:
        assert run.exists(f"samples/{n}")
    grid = Image.open(io.BytesIO(run.get_bytes("samples/top1.png")))
    # 4 classes x numPerClass 2 of 8x8 images, pad 2, upscaled x8 for visibility
    assert grid.size == ((2 * 10 + 2) * 8, (4 * 10 + 2) * 8)
    s = m["strategies"]
    assert set(s) == {"top1", "full"} and set(m["experts"]) == {"expert-000", "expert-001"}
    assert s["full"]["gflops_per_image"] > s["top1"]["gflops_per_image"] > 0
    assert all(v["seconds_per_image"] > 0 for v in s.values())
    assert abs(sum(s["top1"]["expert_usage"]) - 1) < 1e-3
    assert m["classes"][:2] == ["c0", "c1"]


def test_samples_stage_on_a_monolith(saved_runs, tmp_path):
    job, _ = saved_runs["mono"]
    run = _copy(saved_runs, "mono", tmp_path)
    m = run_samples(job, run, None)
    assert m["monolith"] and {f["name"] for f in m["files"]} == {"top1.png", "full.png", "expert-000.png",
                                                                  "trace.png"}
    assert run.get_bytes("samples/top1.png") == run.get_bytes("samples/full.png")


@pytest.mark.slow
def test_big_grids_are_sampled_in_parallel_tasks_with_the_same_images(ray_local, saved_runs, tmp_path, monkeypatch):
    import numpy as np

    import atoll.sampling.stage as stage

    job, _ = saved_runs["ens"]
    seq = run_samples(job, _copy(saved_runs, "ens", tmp_path / "seq"), None)     # small: in process
    monkeypatch.setattr(stage, "PARALLEL_MIN_IMAGE_STEPS", 0)                    # every grid its own task
    run = _copy(saved_runs, "ens", tmp_path / "par")
    par = run_samples(job, run, None)
    assert {f["name"] for f in par["files"]} == {f["name"] for f in seq["files"]}
    assert set(par["strategies"]) == {"top1", "full"} and set(par["experts"]) == {"expert-000", "expert-001"}
    for name in ("top1.png", "full.png", "expert-001.png"):                       # same noise, same pictures
        a = np.asarray(Image.open(io.BytesIO(run.get_bytes(f"samples/{name}"))), dtype=int)
        b = np.asarray(Image.open(tmp_path / "seq" / "ens" / "samples" / name), dtype=int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, name              # thread counts: +-1 level
