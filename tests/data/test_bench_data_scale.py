"""Smoke test of bench/data_scale.py at a tiny size (the benchmark itself is not a test)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_data_scale_bench_runs(tmp_path):
    out = tmp_path / "out.md"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "data_scale.py"), "--sizes", "300", "500", "--rgb", "0",
                        "--steps", "2", "--k", "2", "--fine", "8", "--shard-size", "128", "--modes", "stream",
                        "--units", "expert",
                        "--root", str(tmp_path / "root"), "--out", str(out)], capture_output=True, text=True,
                       timeout=1500)
    assert p.returncode == 0, p.stderr[-4000:]
    text = out.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| 300 ") or ln.startswith("| 500 ")]
    assert len(rows) == 2 and "28 grey" in rows[0]
    assert "partition driver:" in text and "expert worker, streamed:" in text and "Machine:" in text
    assert not (tmp_path / "root" / "scale-28-300").exists()  # each size's data is deleted after it
