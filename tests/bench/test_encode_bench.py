"""bench/encode.py keeps running (the tiny VAE only)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_encode_bench_at_a_tiny_size(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "encode.md"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "encode.py"), "--configs", "tiny:16:4",
                        "--batch", "2", "--threads", "1", "--out", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "Machine:" in text and "load average" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| tiny"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:6] == ["16x16", "4x8x8", "4", "2"] and float(cells[-1]) > 0
