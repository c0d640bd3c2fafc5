"""The console without a terminal: plain lines, one per island per interval, wide tables, island logs."""
from __future__ import annotations

import json
import re

from rich.table import Table

from atoll.islands import worker_logs
from atoll.islands.display import Display
from atoll.islands.local import threads_note
from atoll.islands.plan import Unit
from atoll.progress import console
from atoll.spec import loads
from atoll.store import open_store

ANSI = re.compile(r"\x1b\[")
JOB = """\
apiVersion: atoll/v1
kind: Job
metadata: {name: t}
spec:
  data: {source: {type: digits}}
  partition: {k: 4, fineClusters: 16}
  experts: {scaling: {cpusPerWorker: %s}}
"""


def _progress(run, prefix, **p):
    run.put_json(f"{prefix}/progress.json", {"state": "training", "total": 100, **p})


def test_one_plain_line_per_island_per_interval_only_when_it_moved(tmp_path, capsys):
    run = open_store(str(tmp_path)).sub("job")
    units = [Unit("expert", 0, "experts/000"), Unit("expert", 1, "experts/001")]
    _progress(run, "experts/000", step=20, loss=0.51234, samples_per_s=180.2, eta_s=65)
    d = Display(run, units, interval=0)
    with d:
        d.refresh({"expert-000": "training", "expert-001": "queued"})
        d.refresh({"expert-000": "training", "expert-001": "queued"})        # nothing moved: no lines
        _progress(run, "experts/000", step=40, loss=0.4, samples_per_s=181.0, eta_s=50)
        d.refresh({"expert-000": "training", "expert-001": "queued"})
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3, err
    assert re.fullmatch(r"\[islands 0m0\ds\] expert-000 training step 20/100 loss 0\.5123 180 samples/s ETA 1m05s",
                        err[0]), err[0]
    assert err[1].endswith("expert-001 queued") and "step 40/100" in err[2]
    assert not any(ANSI.search(ln) for ln in err)


def test_a_wide_table_is_neither_cut_nor_wrapped_without_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    t = Table(title="wide")
    for i in range(12):
        t.add_column(f"column-{i}")
    t.add_row(*[f"value-{i:02d}" for i in range(12)])
    console().print(t)
    console().print("error: " + "x" * 300)
    lines = capsys.readouterr().err.splitlines()
    body = [ln for ln in lines if "value-00" in ln]
    assert len(body) == 1 and body[0].rstrip().endswith("│") and "value-11" in body[0]
    assert any(ln == "error: " + "x" * 300 for ln in lines)          # a long message stays one line
    assert not any(ANSI.search(ln) for ln in lines)


def test_tail_prints_new_complete_lines_labelled_by_island_and_process(tmp_path):
    folder = tmp_path / "expert-000"
    folder.mkdir()
    f = folder / "20260101T000000-host-42.log"
    f.write_text(":job_id:01000000\n:actor_name:RayTrainWorker\nstep 1\npartial")
    tail = worker_logs.Tail()
    assert tail.lines({"expert-000": folder}) == ["(expert-000 RayTrainWorker pid=42) step 1"]
    with f.open("a") as fh:
        fh.write(" line\nstep 2\n")
    assert tail.lines({"expert-000": folder}) == ["(expert-000 RayTrainWorker pid=42) partial line",
                                                 "(expert-000 RayTrainWorker pid=42) step 2"]
    assert tail.lines({"expert-000": folder}) == []


def test_the_shipper_uploads_files_that_grew_and_never_raises(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "a.log").write_text(":task_name:island:expert-000\nhello\n")
    dest = open_store(str(tmp_path / "store")).sub("experts/000/logs")
    ship = worker_logs.Shipper(folder, dest, interval=3600)
    assert ship.sync() == 1 and ship.sync() == 0
    (folder / "a.log").write_text(":task_name:island:expert-000\nhello\nagain\n")
    assert ship.sync() == 1
    (name, text), = worker_logs.read(open_store(str(tmp_path / "store")).sub("experts/000"))
    assert name == "a.log" and worker_logs.clean(text) == ["hello", "again"]
    assert worker_logs.label(text) == "island:expert-000"

    class Broken:
        def put_file(self, *a):
            raise OSError("store down")
    (folder / "b.log").write_text("x\n")
    assert worker_logs.Shipper(folder, Broken()).sync() == 0


def test_fractional_cpus_that_oversubscribe_the_cores_get_a_hint_whole_cpus_none():
    units = [Unit("expert", k, f"experts/{k:03d}") for k in range(4)]
    note = threads_note(loads(JOB % "0.4"), units, cpus=2.0)
    assert note and "4 islands x 0.4 CPU" in note and "cpusPerWorker: 1" in note
    assert threads_note(loads(JOB % "1"), units, cpus=2.0) is None
    assert json.dumps(note)   # plain text


def test_atoll_logs_without_any_log_says_why(tmp_path):
    from typer.testing import CliRunner

    from atoll.cli import app

    spec = tmp_path / "job.yaml"
    spec.write_text((JOB % "1").replace("spec:\n", f"spec:\n  store: {{uri: '{tmp_path / 'runs'}'}}\n"))
    r = CliRunner().invoke(app, ["logs", str(spec), "--expert", "1"])
    msg = r.output + str(r.exception)          # main() prints it as "error: ..." (exit 1)
    assert r.exit_code == 1 and "no logs for expert-001 yet" in msg and "atoll status" in msg
    r = CliRunner().invoke(app, ["logs", str(spec), "--expert", "9"])
    assert r.exit_code != 0 and "0..3" in r.output
