"""The whole pipeline on a tiny real dataset (digits): every stage, resume, --from, the CLI."""
from __future__ import annotations

import textwrap

import pytest
from typer.testing import CliRunner

from atoll import pipeline
from atoll.cli import app
from atoll.spec import loads

pytestmark = pytest.mark.slow

JOB = """
apiVersion: atoll/v1
kind: Job
metadata: {name: tiny-e2e}
spec:
  store: {uri: "STORE"}
  data: {source: {type: digits}, shardSize: 1000}
  partition: {k: 2, fineClusters: 32}
  experts:
    model: DiT-XXS/2
    training: {steps: 8, batchSize: 32, checkpointEvery: 4, logEvery: 2}
    scaling: {cpusPerWorker: 0.5}
  router:
    model: Router-XS
    training: {steps: 8, batchSize: 32, checkpointEvery: 4, logEvery: 2, emaDecay: 0.0}
    scaling: {cpusPerWorker: 0.5}
  sample: {strategies: [top1, full], numPerClass: 2, steps: 4}
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_local):
    store = tmp_path_factory.mktemp("e2e") / "store"
    path = store.parent / "job.yaml"
    path.write_text(textwrap.dedent(JOB).replace("STORE", str(store)))
    job = loads(path.read_text())
    results = pipeline.run(job)
    return job, path, results


def test_every_stage_runs_and_commits(finished):
    job, _, results = finished
    assert [r.name for r in results] == [s for s in pipeline.STAGES if s != "encode"]  # pixel space: no encode
    assert all(r.status == "done" for r in results)
    run = pipeline.open_run(job)
    for stage in pipeline.STAGES:
        assert pipeline.is_complete(run, job, stage), stage
    report = run.get_bytes("report/index.md").decode()
    assert "## Experts" in report and "![partition](partition.png)" in report and "top1" in report
    assert run.exists("report/partition.png") and run.exists("samples/top1.png")


def test_second_run_skips_every_stage(finished):
    job, _, _ = finished
    again = pipeline.run(job)
    assert [r.status for r in again] == ["skipped"] * len(pipeline.active_stages(job))


def test_from_redoes_that_stage_and_later_only(finished):
    job, _, _ = finished
    run = pipeline.open_run(job)
    expert_time = run.manifest("experts/000")["committed_at"]
    res = pipeline.run(job, from_stage="samples")
    assert {r.name: r.status for r in res} == {"data": "skipped", "partition": "skipped", "experts": "skipped",
                                                "router": "skipped", "samples": "done", "report": "done"}
    assert run.manifest("experts/000")["committed_at"] == expert_time


def test_cli_status_and_bad_stage_name(finished):
    _, path, _ = finished
    r = CliRunner().invoke(app, ["status", str(path)])
    assert r.exit_code == 0 and "complete" in r.output
    with pytest.raises(pipeline.PipelineError, match="not a stage"):
        pipeline.run(loads(path.read_text()), until="experts-and-more")


def test_changed_training_settings_are_not_silently_reused(finished):
    """A trained expert is reused only for the settings it was trained with; log/checkpoint cadence may change."""
    from atoll.islands.plan import TrainedWithOtherSpec

    _, path, _ = finished
    text = path.read_text()
    cadence = loads(text.replace("checkpointEvery: 4, logEvery: 2}\n    scaling: {cpusPerWorker: 0.5}\n  router",
                                 "checkpointEvery: 2, logEvery: 1}\n    scaling: {cpusPerWorker: 0.5}\n  router", 1))
    assert cadence.spec.experts.training.log_every == 1
    assert [r.status for r in pipeline.run(cadence, until="router")] == ["skipped"] * 4
    longer = loads(text.replace("training: {steps: 8, batchSize: 32", "training: {steps: 12, batchSize: 32", 1))
    with pytest.raises(TrainedWithOtherSpec, match=r"expert-000 .*--from experts"):
        pipeline.run(longer)
