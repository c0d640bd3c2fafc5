"""End to end on two independent Ray clusters with an S3 store (moto on 127.0.0.1).

One run, k=3: island ``a`` trains expert 0 (and the router), island ``b`` experts 1
then 2. Once expert 2 has committed its first checkpoint on ``b``, cluster ``b``
is killed: expert 2 must be retried on ``a`` and resume from that checkpoint,
expert 1 (finished on ``b``) must not be retrained. Each island reaches the S3
server through its own byte-counting proxy, and a sampler records every TCP
connection of each cluster's processes (none may reach the other cluster).
"""
from __future__ import annotations

import importlib.util
import json
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from s3_traffic import ConnectionSampler, CountingProxy

pytestmark = pytest.mark.slow

KEY, SECRET = "atoll-ray-key", "atoll-ray-secret"


def _train_helpers():
    """tests/train/conftest.py's ``prepare`` (data + partition shards without the data stages)."""
    path = Path(__file__).parents[1] / "train" / "conftest.py"
    spec = importlib.util.spec_from_file_location("atoll_train_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ray_job_yaml(store: str, a: str, b: str, *, steps: int = 60, ckpt: int = 10) -> str:
    return textwrap.dedent(f"""
        apiVersion: atoll/v1
        kind: Job
        metadata: {{name: rayrun}}
        spec:
          store: {{uri: "{store}"}}
          data: {{source: {{type: digits}}, shardSize: 2000}}
          partition: {{k: 3, fineClusters: 16}}
          experts:
            model: DiT-XXS/2
            training: {{steps: {steps}, batchSize: 32, zeroStage: 2, checkpointEvery: {ckpt}, logEvery: 5,
                        lr: 0.002}}
            scaling: {{numWorkers: 1}}
          router:
            model: Router-XS
            training: {{steps: 20, batchSize: 64, checkpointEvery: 100, logEvery: 5, lr: 0.003, emaDecay: 0.0}}
          islands:
            target: ray
            maxRetries: 2
            routerIsland: a
            islands:
              - {{name: a, experts: [0], address: "{a}"}}
              - {{name: b, experts: [1, 2], address: "{b}"}}
        """)


def _kill_b_after_first_checkpoint(run, cluster, seen: dict, deadline: float) -> None:
    from atoll.islands.remote import status_rows
    from atoll.train import checkpoints as ckpt

    while time.time() < deadline:
        if (ckpt.latest(run.sub("experts/002")) or 0) > 0 and run.manifest("experts/002") is None:
            seen["finished_before"] = {p: run.manifest(p)["committed_at"]
                                       for p in ("experts/000", "experts/001") if run.manifest(p)}
            seen["ckpt_step"] = ckpt.latest(run.sub("experts/002"))
            seen["killed_procs"] = cluster.kill()
            seen["killed_at"] = time.time()
            time.sleep(8)
            seen["status_during"] = status_rows(seen["job"], run)
            return
        time.sleep(0.2)


@pytest.mark.timeout(1800)  # ~6 min idle; two clusters + 3 experts + router on 2 cores
def test_two_clusters_s3_failover(ray_islands, s3_server, tmp_path, monkeypatch, capsys):
    from atoll import pipeline
    from atoll.cli import app
    from atoll.islands import control_state
    from atoll.islands.remote import submit_ray
    from atoll.spec import load
    from atoll.store import open_store

    a, b = ray_islands["a"], ray_islands["b"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)      # the control plane talks to S3 directly
    bucket = f"atoll-ray-{uuid.uuid4().hex[:8]}"
    open_store(f"s3://{bucket}").create_bucket()
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(ray_job_yaml(f"s3://{bucket}/runs", a.address, b.address))
    job = load(spec_path)
    run = _train_helpers().prepare(job)                      # data + partition shards, into S3
    run.commit("partition", {"k": 3, "note": "written by the test (label mod 3), not by k-means"})

    upstream = int(s3_server.rsplit(":", 1)[1])
    proxies = {"a": CountingProxy(upstream), "b": CountingProxy(upstream)}
    extra = {n: {"AWS_ENDPOINT_URL": p.url} for n, p in proxies.items()}
    seen: dict = {"job": job}
    watcher = threading.Thread(target=_kill_b_after_first_checkpoint, args=(run, b, seen, time.time() + 600),
                               daemon=True)
    events: list[str] = []
    t0 = time.time()
    watcher.start()
    with ConnectionSampler(ray_islands) as sampler:
        state = submit_ray(job, island_env_extra=extra, poll_s=1.0, unreachable_s=6.0,
                           on_event=lambda m: events.append(f"{time.time() - t0:6.1f}s {m}"))
    wall = time.time() - t0
    watcher.join(timeout=5)
    assert "killed_at" in seen, f"cluster b was never killed (training too fast?): {events}"

    # every unit finished; expert 2 moved to island a and resumed from b's checkpoint
    assert state.status == "succeeded"
    u = state.units
    assert u["expert-000"].island == "a" and u["expert-000"].attempt == 1
    assert u["expert-001"].island == "b" and u["expert-001"].attempt == 1
    assert u["expert-002"].island == "a" and u["expert-002"].attempt == 2, events
    assert u["expert-002"].history[-1]["island"] == "b" and "lost" in u["expert-002"].history[-1]["error"]
    assert u["router"].island == "a"
    m2 = run.manifest("experts/002")
    assert m2["resumed_from_step"] >= seen["ckpt_step"] > 0
    assert m2["steps"] == 60
    for p, at in seen["finished_before"].items():                  # nothing finished was retrained
        assert run.manifest(p)["committed_at"] == at, p
    assert "experts/001" in seen["finished_before"], "expert 1 should have finished on b before the kill"

    # the control state is in S3, and `status` showed island/attempt during the run
    assert run.exists(control_state.KEY)
    during = {r["unit"]: r for r in seen["status_during"]}
    assert during["expert-002"]["island"] in ("a", "b") and during["expert-002"]["attempt"] >= 1

    # checkpoints, models and the router are in the bucket
    keys = open_store(f"s3://{bucket}").list("runs/rayrun")
    for k in range(3):
        assert any(x.startswith(f"runs/rayrun/experts/{k:03d}/checkpoints/step-") for x in keys)
        assert f"runs/rayrun/experts/{k:03d}/manifest.json" in keys
        assert any(x.startswith(f"runs/rayrun/experts/{k:03d}/model/") for x in keys)
    assert "runs/rayrun/router/manifest.json" in keys

    # sampling from the S3 run
    from atoll.sampling import Ensemble

    ens = Ensemble.from_pretrained(f"s3://{bucket}/runs/rayrun")
    assert ens.num_experts == 3
    res = ens.sample(4, strategy="top1", steps=4, class_labels=[1, 2, 3, 4])
    assert res.images.shape[0] == 4 and res.images.dtype == torch.uint8

    # submitting again resumes: nothing resubmitted, nothing retrained
    before = {p: run.manifest(p)["committed_at"] for p in ("experts/000", "experts/001", "experts/002", "router")}
    again = submit_ray(job, poll_s=0.1, on_event=events.append)
    assert {n: s.attempt for n, s in again.units.items()} == {n: s.attempt for n, s in u.items()}
    assert before == {p: run.manifest(p)["committed_at"] for p in before}

    # the CLI: status (island, attempt, step, loss) and logs from island a
    cli = CliRunner()
    out = cli.invoke(app, ["status", str(spec_path)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "ray islands" in out.output and "expert-002" in out.output
    row = next(ln for ln in out.output.splitlines() if "expert-002" in ln and "DONE" in ln)
    assert " a " in row and " 2 " in row and "60/60" in row
    out = cli.invoke(app, ["logs", str(spec_path), "--expert", "0", "--tail", "0"])
    assert out.exit_code == 0, out.output
    # the log is a's own Jobs API's (the job ran on cluster a; Ray's "Connecting to existing Ray cluster at
    # <gcs>" line is no longer printed since the quiet console, so the GCS address is not asserted)
    assert f"on island a ({a.address})" in out.output and "expert-000" in out.output
    # b's GCS may only show up in Ray's local process scan ("Found multiple active Ray instances",
    # both clusters share this machine), never as an address a job connected to
    assert all("multiple active Ray instances" in ln for ln in out.output.splitlines() if b.gcs_address in ln)

    # no process of one cluster ever connected to a port the other listens on
    assert sampler.samples > 10 and all(sampler.listening.values())
    assert sampler.crossings() == []

    report = {"wall_s": round(wall, 1), "killed_after_s": round(seen["killed_at"] - t0, 1),
              "units": {n: {"island": s.island, "attempt": s.attempt, "submitted_at": s.submitted_at,
                            "finished_at": s.finished_at} for n, s in u.items()},
              "bytes": {n: {"to_store": p.to_store, "from_store": p.from_store, "connections": p.connections}
                        for n, p in proxies.items()},
              "resumed_from_step": m2["resumed_from_step"], "sampler": {
                  "samples": sampler.samples, "max_procs": sampler.max_procs,
                  "listening": {n: len(v) for n, v in sampler.listening.items()}},
              "events": events}
    for p in proxies.values():
        p.close()
    assert all(p["to_store"] > 0 and p["from_store"] > 0 for p in report["bytes"].values())
    with capsys.disabled():
        print("\n[ray islands report] " + json.dumps(report, indent=1))
    Path("/tmp/atoll_ray_islands_report.json").write_text(json.dumps(report, indent=1))
