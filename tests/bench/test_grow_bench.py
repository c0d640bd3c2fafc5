"""The grow bench at tiny size: K=2 experts on 8 classes, one added for the other 2, next to K=3 retrained."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_grow_bench_runs_at_tiny_size(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(ROOT / "platform"),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "DS_ACCELERATOR": "cpu",
           "HF_HUB_OFFLINE": "1", "ATOLL_QUIET": "1", "HOME": str(Path.home())}
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "grow.py"), "--size", "small", "--k", "2",
                        "--store", str(tmp_path / "runs"), "--out", str(out), "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=1200, cwd=str(ROOT), env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    scores = json.loads((out / "scores.json").read_text())
    rows = {(x["arm"], x["weights"]): x for x in scores["rows"]}
    assert set(rows) == {(a, w) for a in ("before", "grown", "retrained") for w in ("model", "raw")}
    assert rows["before", "model"]["num_experts"] == 2 and rows["grown", "model"]["num_experts"] == 3
    assert rows["retrained", "model"]["num_experts"] == 3
    for x in scores["rows"]:
        for part in ("old", "new"):
            assert x[part]["fid_lo"] <= x[part]["fid"] <= x[part]["fid_hi"] and x[part]["n"] > 0
    fl = scores["train_flops"]
    grown, retrained, before = sum(fl["grown"]), sum(fl["retrained"]), sum(fl["before"])
    per_step = fl["retrained"][0] / (3 * scores["expert_steps"]["retrained"])  # one expert's step
    assert grown > before and 0 <= retrained - grown <= 3 * per_step + 0.01 * grown  # equal, up to a step per expert
    table = (out / "table.md").read_text()
    assert "| grown: + add-experts (new classes) | EMA | 3 |" in table
    assert (out / "grids.png").stat().st_size > 0
