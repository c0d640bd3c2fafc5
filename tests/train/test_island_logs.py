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
