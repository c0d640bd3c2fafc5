"""An island's Ray processes write to its log files in the run, not to the driver's console."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from atoll.islands import worker_logs
from atoll.islands.local import run_units
from atoll.islands.plan import expert_units

pytestmark = pytest.mark.slow


def test_island_output_lands_in_the_runs_logs_and_atoll_logs_shows_it(ray_local, tiny, tmp_path, capfd):
    job, run = tiny(name="logs", k=1, steps=4, ckpt=2, parts=[np.arange(200)])
    out = run_units(job, run, None, expert_units(job))
    assert out.done == ["expert-000"], out.failed
    console = capfd.readouterr()
    text = console.out + console.err
    assert "pid=" not in text and "TrainController" not in text and "Reporting training result" not in text
    assert "\x1b[" not in text
    assert "[islands" in text and "expert-000 done step 4/4" in text

    files = worker_logs.read(run.sub("experts/000"))
    by_label = {worker_logs.label(t): t for _, t in files}
    assert "TrainController" in by_label and "RayTrainWorker" in by_label
    assert "Reporting training result" in by_label["RayTrainWorker"]      # the worker's own prints
    assert "Started training worker group" in by_label["TrainController"]

    spec = tmp_path / "job.yaml"
    import yaml

    from atoll.spec import dump

    spec.write_text(yaml.safe_dump(dump(job)))
    from atoll.cli import app

    r = CliRunner().invoke(app, ["logs", str(spec), "--expert", "0", "--tail", "0"])
    assert r.exit_code == 0, r.output
    assert "(RayTrainWorker) <==" in r.output and "Reporting training result" in r.output
    assert ":actor_name:" not in r.output


def test_fillers_use_a_cpu_the_islands_leave_idle_and_never_fail_the_stage(ray_local, tiny, tmp_path, capfd):
    import functools
    from pathlib import Path

    from atoll.islands.local import Filler

    job, run = tiny(name="filler", k=1, steps=2, ckpt=100, parts=[np.arange(100)])   # one island, two CPUs
    marker = tmp_path / "marker"
    # functions Ray workers can import (this test module is not on their path)
    out = run_units(job, run, None, expert_units(job), fillers=[
        Filler("marker", functools.partial(Path.write_text, marker, "done")),
        Filler("broken", functools.partial(int, "not a number"))])
    assert out.done == ["expert-000"], out.failed
    assert marker.read_text() == "done"                       # finished before run_units returned
    assert "note: broken on an idle CPU failed (" in capfd.readouterr().err
