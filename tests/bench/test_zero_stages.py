"""``bench/zero_stages.py`` keeps running (tiny size, two configurations)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_zero_stages_bench_prints_its_table(tmp_path):
    out = tmp_path / "z.md"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "zero_stages.py"), "--model", "DiT-XXS/2", "--size", "8",
                        "--steps", "4", "--log-every", "2", "--batch", "8", "--stages", "0", "3", "--precisions", "bf16",
                        "--out", str(out)], capture_output=True, text=True, timeout=1200, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 0 |") or line.startswith("| 3 |")]
    assert len(rows) == 2 and "| zero3 |" in rows[1] and "| fp16-optimizer |" in rows[0]
