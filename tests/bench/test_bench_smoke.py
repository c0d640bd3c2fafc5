"""The benchmarks keep running: each at a tiny size."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_demo_time_clones_runs_and_counts_the_console(tmp_path):
    cmd = "echo 'run quickstart'; printf '\\033[36m(TrainController pid=1)\\033[0m hi\\n'; echo done"
    out = subprocess.run([sys.executable, str(REPO / "bench" / "demo_time.py"), "--cmd", cmd, "--label", "smoke",
                          "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads((tmp_path / "demo-smoke.json").read_text())
    assert r["console_lines"] == 3 and r["console_lines_with_ansi"] == 1 and r["console_lines_from_ray_workers"] == 1
    assert r["returncode"] == 0 and r["wall_s"] >= 0 and "cpu" in r and r["command"] == cmd


@pytest.mark.slow
def test_train_throughput_at_a_tiny_size(tmp_path):
    job = tmp_path / "tiny.yaml"
    job.write_text(textwrap.dedent("""
        apiVersion: atoll/v1
        kind: Job
        metadata: {name: tp-smoke}
        spec:
          data: {source: {type: digits}, shardSize: 2000}
          partition: {k: 2, fineClusters: 16}
          experts:
            model: DiT-XXS/2
            training: {steps: 30, batchSize: 16, checkpointEvery: 10, logEvery: 2}
            scaling: {cpusPerWorker: 1}
        """))
    out_md = tmp_path / "tp.md"
    out = subprocess.run([sys.executable, str(REPO / "bench" / "train_throughput.py"), "--job", str(job), "--steps", "12",
                          "--bare-steps", "4", "--out", str(out_md)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out_md.read_text()
    assert "| bare step, " in text and "steady |" in text and "end to end" in text
    data = json.loads(out_md.with_suffix(".json").read_text())
    assert all(v["samples_s"] > 0 and v["per_cpu_s"] > 0 for v in data["bare"].values())
    (arm,) = data["islands"].values()
    assert arm["samples"] == 2 * 12 * 16 and arm["end_to_end"] > 0
