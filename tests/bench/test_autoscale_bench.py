"""bench/autoscale.py keeps running: its small size (short phases) writes the table and the picture."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_the_autoscaling_bench_runs_at_small_size(tmp_path):
    out = tmp_path / "autoscale.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "autoscale.py"), "--size", "small", "--steps", "4",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ") and ". " in line]
    assert [r[0].strip() for r in rows] == ["1. skewed", "2. idle", "3. uniform", "4. idle"]
    assert int(rows[0][2]) > 0 and all(int(r[3]) == 0 for r in rows)  # requests answered, no errors
    share = [float(x) for x in rows[0][7].split("/")]
    assert share[0] == max(share)  # the skew reached expert 0
    assert (tmp_path / "autoscale.png").stat().st_size > 0
