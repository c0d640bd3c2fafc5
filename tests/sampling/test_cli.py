"""``atoll sample`` on a tiny saved run; bad input exits non-zero with a message."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from atoll.cli import app


def _run(*args):
    return CliRunner().invoke(app, ["sample", *map(str, args)])


def test_sample_writes_grid_and_trace(saved_runs, tmp_path):
    run = Path(saved_runs["root"]) / "ens"
    out, trace = tmp_path / "grid.png", tmp_path / "trace.png"
    r = _run(run, "--strategy", "top1", "--class", "3", "-n", "4", "--steps", "2", "--guidance", "1.5",
             "--seed", "0", "-o", out, "--trace", trace)
    assert r.exit_code == 0, r.output
    grid = Image.open(io.BytesIO(out.read_bytes()))
    assert grid.size == ((2 * 10 + 2) * 8, (2 * 10 + 2) * 8)  # 4 images -> 2 x 2, 8x8 upscaled x8
    Image.open(io.BytesIO(trace.read_bytes())).verify()


def test_class_by_name_and_monolith(saved_runs, tmp_path):
    out = tmp_path / "g.png"
    r = _run(Path(saved_runs["root"]) / "mono", "--strategy", "full", "--class", "c3", "-n", "2", "--steps", "1",
             "-o", out)
    assert r.exit_code == 0, r.output
    assert out.exists()


def test_bad_strategy_exits_with_a_message(saved_runs, tmp_path):
    r = _run(Path(saved_runs["root"]) / "ens", "--strategy", "best", "-o", tmp_path / "g.png")
    assert r.exit_code != 0
    assert "strategy 'best' is unknown; use full, top1" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "g.png").exists()


def test_bad_class_and_bad_run_exit_with_a_message(saved_runs, tmp_path):
    r = _run(Path(saved_runs["root"]) / "ens", "--class", "42", "-o", tmp_path / "g.png")
    assert r.exit_code == 1 and "class 42 is out of range" in r.output
    r = _run(tmp_path / "nowhere", "-o", tmp_path / "g.png")
    assert r.exit_code == 1 and "no Atoll run at" in r.output and "nowhere" in r.output
