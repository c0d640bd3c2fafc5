"""The quality bench: its confidence intervals (fast) and a tiny run of it and of the router comparison (slow)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from quality_stats import fid_interval, paired_difference  # noqa: E402


def _gauss(n: int, shift: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, size=(n, 8))


def test_fid_interval_brackets_the_point_and_shrinks_with_samples():
    real = _gauss(2000, 0.0, 0)
    small, big = fid_interval(_gauss(100, 0.3, 1), real, b=100), fid_interval(_gauss(1500, 0.3, 1), real, b=100)
    for ci in (small, big):
        assert ci["lo"] <= ci["fid"] <= ci["hi"]
    assert big["hi"] - big["lo"] < small["hi"] - small["lo"]
    assert big["lo"] < 8 * 0.3 ** 2 < big["hi"] + 0.1  # the true distance is 8 x 0.09


def test_paired_difference_calls_ties_and_wins():
    real = _gauss(2000, 0.0, 0)
    a = _gauss(400, 0.1, 1)
    same = paired_difference(a, a.copy(), real, b=100)
    assert same["diff"] == 0 and same["verdict"] == "tie"
    noisy = paired_difference(a, a + np.random.default_rng(3).normal(0, 0.02, a.shape), real, b=100)
    assert noisy["verdict"] == "tie"
    worse = paired_difference(a, a + 0.5, real, b=100)
    assert worse["verdict"] == "a better" and worse["hi"] < 0
    with pytest.raises(ValueError, match="same samples"):
        paired_difference(a, a[:10], real)


@pytest.mark.slow
def test_quality_and_router_benches_run_at_tiny_size(tmp_path):
    """Three arms (monolith, K=4 k-means, one DiT distilled from it) and two router candidates, tiny: tables
    with intervals come out."""
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(ROOT / "platform"),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "DS_ACCELERATOR": "cpu",
           "HF_HUB_OFFLINE": "1", "ATOLL_QUIET": "1", "HOME": str(Path.home())}
    store, out, work = tmp_path / "runs", tmp_path / "out", tmp_path / "work"
    q = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--size", "small", "--arms",
                        "kmeans,monolith,distilled", "--store", str(store), "--out", str(out), "--work", str(work)],
                       capture_output=True, text=True, timeout=1500, cwd=str(ROOT), env=env)
    assert q.returncode == 0, q.stdout[-2000:] + q.stderr[-3000:]
    table = (out / "table.md").read_text()
    assert "FID [95% CI]" in table and "| K=4 experts, k-means | top1 |" in table
    assert "K=4 experts, k-means top1 | monolith (all data) |" in table  # the paired verdict row
    scores = json.loads((out / "scores.json").read_text())
    assert all(r["fid_lo"] <= r["fid"] <= r["fid_hi"] for r in scores["rows"])
    mono = next(r for r in scores["rows"] if r["arm"] == "monolith" and r["step"] is None)
    assert mono["train_steps"] > 6  # the monolith also gets the router's training FLOPs
    student = next(r for r in scores["rows"] if r["arm"] == "distilled" and r["step"] is None)
    assert student["gflops_per_image"] == mono["gflops_per_image"] and student["run"].startswith("bq-kmeans-small-distilled")
    assert "| one DiT distilled from K=4 k-means | monolith (all data) |" in table
    fe, fr = scores["train_flops"]["distilled"]
    assert fe > 0 and fr == 0
    assert (out / "fid_vs_flops.png").stat().st_size > 0
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "routers.py"), "--size", "small", "--store", str(store),
                        "--candidates", "Router-XS@16,Router-XS@16:none", "--num-per-class", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=1500, cwd=str(ROOT), env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = json.loads((out / "routers-kmeans-small.json").read_text())
    assert [x["conditioning"] for x in rows] == ["class", "none"]
    assert rows[0]["accuracy_vs_t_no_class"] is not None and rows[1]["accuracy_vs_t_no_class"] is None


def test_report_tables_verdicts_and_plots_from_scored_rows(tmp_path, monkeypatch):
    """The table, the paired verdicts and the plots from synthetic scored rows (no training)."""
    import quality_report

    rng = np.random.default_rng(0)
    real = rng.normal(size=(3000, 8))
    monkeypatch.setattr(quality_report, "real_features", lambda name: real)
    work = tmp_path / "work"
    rows = []

    def row(arm, strategy, shift, step=None, gflops=4.25):
        run = f"bq-{arm}-abc"
        (work / run).mkdir(parents=True, exist_ok=True)
        name = strategy.replace(" ", "-").replace("@", "at")
        feats = rng.normal(shift, 1.0, size=(500, 8))
        np.save(work / run / f"{name}.feats.npy", feats)
        np.save(work / run / f"{name}.npy", np.zeros((10, 1, 28, 28), np.uint8))
        ci = fid_interval(feats, real, b=50)
        rows.append({"arm": arm, "run": run, "strategy": strategy, "step": step, "train_steps": 600, "channels": 1,
                     "gflops_per_image": gflops, "n": 500, "fid": ci["fid"], "fid_lo": ci["lo"], "fid_hi": ci["hi"],
                     "class_accuracy": 0.8, "precision": 0.9, "recall": 0.2, "reference": "fashion-mnist",
                     "classifier_test_accuracy": 0.91})

    row("monolith", "- @ step 200", 1.0, step=200, gflops=4.17)
    row("monolith", "-", 0.3, gflops=4.17)
    row("kmeans8", "top1 @ step 200", 0.9, step=200)
    row("kmeans8", "top1", 0.1)            # clearly ahead of the monolith
    row("kmeans8", "full", 0.3, gflops=33.5)
    row("fmnist-png", "top1", 0.1)
    row("kmeans", "top1", 0.1)             # the PNG path ties with the idx path
    flops = {"monolith": (3.88e13, 0.0), "kmeans8": (3.84e13, 4.0e11), "kmeans": (3.84e13, 4.0e11),
             "fmnist-png": (3.84e13, 4.0e11)}
    out = tmp_path / "out"
    out.mkdir()
    quality_report.write_all(out, work, rows, flops, {"kmeans8": 600.0}, size="default", command="python bench/quality.py",
                             total_s=60.0, load_start=["1.0", "1.0", "1.0"], inception=False)
    text = (out / "table.md").read_text()
    assert "| K=8 experts, k-means top1 | monolith (all data) |" in text
    verdicts = {(v["a"], v["b"]): v["word"] for v in json.loads((out / "scores.json").read_text())["verdicts"]}
    assert verdicts[("K=8 experts, k-means top1", "monolith (all data)")] == "ahead"
    assert verdicts[("K=4 k-means, Fashion-MNIST as PNG folder top1", "K=4 experts, k-means top1")] == "tie"
    assert "| K=8 experts, k-means | top1 |" in text and "1.019 |" in text  # x monolith sampling cost
    # the curve's x-axis: the experts' FLOPs so far + the whole router's
    assert "| K=8 experts, k-means | 200 | 1.320e+13 |" in text and "| K=8 experts, k-means | 600 | 3.880e+13 |" in text
    assert (out / "fid_vs_flops.png").stat().st_size > 0 and (out / "grids.png").stat().st_size > 0
