"""bench/serve.py keeps running: a tiny run of it (2 steps, concurrency 1 and 2, both serve modes)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_the_serving_bench_runs_at_tiny_size(tmp_path):
    from atoll.parallel.groups import free_port

    out = tmp_path / "serve.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    cmd = [sys.executable, str(ROOT / "bench" / "serve.py"), "--steps", "2", "--levels", "1", "2", "--big", "none",
           "--requests", "2", "--local-requests", "1", "--ceiling-n", "2", "--port", str(free_port()), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| quickstart")]
    arms = {(r[1].strip(), int(r[2])) for r in rows}
    assert arms == {("in-process", 1), ("in-process, n=2 in one call", 1), ("replica, no Ray/HTTP", 1),
                    ("replica, no Ray/HTTP", 2), ("ensemble", 1), ("ensemble", 2), ("distributed", 1), ("distributed", 2)}
    assert all(int(r[4]) == 0 for r in rows), text  # no errors
    assert "overhead at concurrency 1" in text and "batching ceiling" in text and "Machine:" in text and "Load before:" in text
