"""A video job with ``experts.scaling.sequenceParallel: 2`` through ``atoll run`` (Ray Train + DeepSpeed): each
expert's two workers share every clip's tokens (Ulysses). A worker is SIGKILLed after a checkpoint; Ray Train
restarts the group, which resumes and ends with weights bit-identical to the same expert trained without
interruption (by the plain torch.distributed worker path, same spec); the run writes MP4 samples; and it serves
with 2-rank experts, a request equal to the library's single-rank sample."""
from __future__ import annotations

import base64
import json
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from atoll.parallel.groups import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from plain_launch import run_workers  # noqa: E402

pytestmark = pytest.mark.slow

JOB = """
apiVersion: atoll/v1
kind: Job
metadata: {name: video-sp}
spec:
  store: {uri: "STORE"}
  data: {source: {type: moving-clips, images: digits, numClips: 64, frames: 4, size: 16}, shardSize: 64}
  partition: {k: 2, fineClusters: 8, features: {type: pca, dims: 8}}
  experts:
    model: VDiT-XXS/4
    training: {steps: 12, batchSize: 4, checkpointEvery: 3, logEvery: 3, warmupSteps: 1, zeroStage: 2}
    scaling: {numWorkers: 2, sequenceParallel: 2, cpusPerWorker: 0.25}
  router:
    model: Router-XS
    training: {steps: 4, batchSize: 16, checkpointEvery: 4, logEvery: 2, emaDecay: 0.0}
    scaling: {cpusPerWorker: 0.25}
  sample: {strategies: [top1], numPerClass: 1, steps: 2, guidance: 2.0}
  serve:
    maxSamples: 2
    maxSteps: 4
    defaultSteps: 2
    sequenceParallel: 2
    ensemble: {numCpus: 0.1, maxBatchSize: 4}
"""


def _kill_after_checkpoint(run, prefix: str, at_step: int, killed: dict, deadline: float) -> None:
    from atoll.train import checkpoints as ckpt

    while time.time() < deadline:
        if (ckpt.latest(run.sub(prefix)) or 0) >= at_step and run.exists(f"{prefix}/progress.json"):
            p = run.get_json(f"{prefix}/progress.json")
            if p.get("state") == "training" and p["step"] < p["total"]:
                os.kill(p["pid"], signal.SIGKILL)
                killed.update(step=p["step"], pid=p["pid"])
                return
        time.sleep(0.02)


def test_sequence_parallel_video_job_trains_resumes_exactly_and_serves(tmp_path, ray_local):
    import httpx

    from atoll import pipeline
    from atoll.islands.plan import Unit, loop_config
    from atoll.models.checkpoint import from_pretrained
    from atoll.sampling import Ensemble
    from atoll.sampling.video_io import read_gif, read_mp4
    from atoll.serve import runner
    from atoll.serve.app import build_app
    from atoll.serve.ingress import IngressOptions
    from atoll.spec import loads

    job = loads(textwrap.dedent(JOB).replace("STORE", str(tmp_path / "store")))
    run = pipeline.open_run(job)
    killed: dict = {}
    watcher = threading.Thread(target=_kill_after_checkpoint, args=(run, "experts/001", 3, killed, time.time() + 900),
                               daemon=True)
    watcher.start()
    results = pipeline.run(job)
    watcher.join(timeout=1)
    assert all(r.status == "done" for r in results), results
    assert killed, "the worker was never killed (training finished too fast?)"
    for k in (0, 1):
        m = run.manifest(f"experts/00{k}")
        assert (m["world_size"], m["sequence_parallel"], m["data_parallel"], m["attention"]) == (2, 2, 1, "ulysses")
    m1 = run.manifest("experts/001")
    assert m1["restarts"] >= 1 and 3 <= m1["resumed_from_step"] <= killed["step"] < 12
    from atoll.train import checkpoints as ckpt

    last = ckpt.latest(run.sub("experts/001"))
    assert last == 9 and ckpt.manifest(run.sub("experts/001"), last)["sequence_parallel"] == 2

    # the same expert, same spec, uninterrupted, through the plain worker path (no Ray)
    cfg = tmp_path / "ref.json"
    cfg.write_text(json.dumps(loop_config(job, Unit("expert", 1, "reference/001"), run, None)))
    run_workers(["-m", "atoll.train.worker", str(cfg)], world=2, timeout=900)
    for weights in ("raw", "model"):
        a = from_pretrained(run, "experts/001/model", weights=weights).state_dict()
        b = from_pretrained(run, "reference/001/model", weights=weights).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{weights}: the resumed run diverged"
    assert run.manifest("reference/001")["restarts"] == 0

    names = {f["name"] for f in run.manifest("samples")["files"]}
    assert {"top1.gif", "top1.mp4", "top1.png"} <= names
    assert read_mp4(run.get_bytes("samples/top1.mp4")).shape[0] == 4

    app = build_app(job, options=IngressOptions(expert_timeout_s=180, retry_after_s=1.0, health_poll_s=0.5))
    url = runner.start(app, job.spec.serve, 2, port=free_port())
    try:
        with httpx.Client(base_url=url, timeout=240) as client:
            body = {"n": 2, "class": 1, "steps": 2, "seed": 3, "guidance": 2.0, "format": "json"}
            r = client.post("/v1/generate", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["sequence_parallel"] == 2
            got = np.stack([read_gif(base64.b64decode(v))[:, 2:-2, 2:-2] for v in r.json()["videos"]])
            want = Ensemble.from_pretrained(run.uri).sample(2, class_labels=1, steps=2, seed=3, guidance=2.0,
                                                            strategy="top1").images.numpy()[:, 0]
            assert np.array_equal(got, want)
            mp4 = client.post("/v1/generate", json={**body, "format": "mp4"})
            assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
            assert read_mp4(mp4.content).shape[0] == 4
    finally:
        runner.shutdown()
