"""``bench/gpu_check.py`` keeps running: on CPU it skips its GPU rows; ``--cpu`` runs every row at tiny
size through the same code (no Ray: the plain training context); ``--bundle`` builds its wheels."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT))


def test_without_a_gpu_every_row_says_skipped(tmp_path):
    out = tmp_path / "r.json"
    p = _run("--out", str(out), timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(out.read_text())
    assert set(res) == {"islands", "resume", "ensemble", "serve", "sp-video", "mfu"}
    assert all(r["status"] == "skip" and r["detail"] == "no GPU, skipped" for r in res.values())
    assert "| islands | skip |" in p.stdout


@pytest.mark.slow
def test_every_row_passes_on_cpu_at_tiny_size(tmp_path):
    out = tmp_path / "r.json"
    p = _run("--cpu", "--out", str(out), timeout=1500)
    res = json.loads(out.read_text())
    assert p.returncode == 0 and all(r["status"] == "pass" for r in res.values()), p.stdout[-3000:]
    assert res["resume"]["resumed_from"] == 10 and res["resume"]["bit_identical"]
    assert res["serve"]["max_uint8_diff_vs_alone"] <= 1 and res["serve"]["max_rows_per_tick"] == 15  # three requests batched
    assert res["sp-video"]["backend"] == "gloo"
    assert res["mfu"]["samples_per_s"] > 0 and 0 < res["mfu"]["mfu_vs_measured_matmul"]


@pytest.mark.slow
def test_bundle_holds_the_wheels_beside_torch_and_stays_small(tmp_path):
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    p = _run("--bundle", str(tmp_path / "wheels"), "--python", py, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    names = sorted(w.name.split("-")[0].lower() for w in (tmp_path / "wheels").glob("*.whl"))
    assert names == ["annotated_types", "deepspeed", "hjson", "pydantic", "pydantic_core", "typing_inspection"]
    assert sum(w.stat().st_size for w in (tmp_path / "wheels").glob("*.whl")) < 16 * 2**20
