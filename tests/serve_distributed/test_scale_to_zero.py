"""Experts scaled by routed rows, for real (a local Ray, Serve on 127.0.0.1): a tiny K=2 run whose router
sends every top-1 row to expert 0. Under traffic Expert-000 scales up to its maximum while Expert-001,
routed nothing, scales to zero; a request that needs expert 1 (strategy full) cold-starts it and is
answered with the library's images, not rerouted; idle, both go to zero."""
from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
import torch

from atoll.parallel.groups import free_port
from serve_replicas import running
from tiny_runs import perturbed, tiny_job, write_run

pytestmark = pytest.mark.slow

SERVE = """
serve:
  mode: distributed
  maxSamples: 8
  maxSteps: 60
  defaultSteps: 6
  router: {numReplicas: 1, numCpus: 0.25}
  experts: {numReplicas: auto, minReplicas: 0, maxReplicas: 2, numCpus: 0.25, scaleOn: rows, targetRowsPerS: 2,
            idleS: 4, upscaleDelayS: 1}
"""
HOT = {"class": 1, "n": 4, "steps": 6, "strategy": "top1", "seed": 3, "format": "json"}
FULL = {"class": 2, "n": 2, "steps": 4, "guidance": 2.0, "strategy": "full", "seed": 5, "format": "json"}


def biased_run(root: str):
    """K=2 class-conditional experts; the router prefers expert 0 for every input (head bias +-20)."""
    from atoll.models.dit import DiTConfig
    from atoll.models.router import RouterConfig

    job = tiny_job(root, "scaled", 2, extra=SERVE)
    experts = [perturbed(DiTConfig("DiT-XXS/2", 8, 1, num_classes=4).build(), 30 + i, 0.03) for i in range(2)]
    router = perturbed(RouterConfig("Router-XS", 8, 1, num_experts=2, num_classes=4).build(), 7, 0.05)
    with torch.no_grad():
        router.head.bias.copy_(torch.tensor([20.0, -20.0]))
    run = write_run(root, job, experts, router, class_names=["a", "b", "c", "d"], count=40,
                    partition={"k": 2, "cluster_sizes": [30, 10]})
    return job, run


def images(resp) -> np.ndarray:
    from PIL import Image

    assert resp.status_code == 200, resp.text
    assert "x-atoll-degraded" not in resp.headers, "an answer was rerouted instead of cold-starting the expert"
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in resp.json()["images"]])


def watch(until, timeout_s: float, timeline: list) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        timeline.append((time.monotonic(), running("Expert-000"), running("Expert-001")))
        if until(timeline[-1]):
            return True
        time.sleep(0.25)
    return False


def test_experts_scale_on_the_rows_routed_to_them_to_zero_and_back(tmp_path, ray_local):
    import httpx

    from atoll.sampling import Ensemble
    from atoll.serve import runner
    from atoll.serve.app import build_app
    from atoll.serve.ingress import IngressOptions

    job, run = biased_run(str(tmp_path))
    opts = IngressOptions(expert_timeout_s=20, request_timeout_s=150, retry_after_s=1.0, health_poll_s=0.25,
                          cold_start_timeout_s=120)
    url = runner.start(build_app(job, options=opts, environ={}), job.spec.serve, 2, port=free_port())
    timeline: list = []
    try:
        with httpx.Client(base_url=url, timeout=150) as client:
            results, stop = [], threading.Event()

            def traffic():
                deadline = time.monotonic() + 120
                while not stop.is_set() and time.monotonic() < deadline and len(results) < 400:
                    results.append(client.post("/v1/generate", json=HOT))

            workers = [threading.Thread(target=traffic) for _ in range(2)]
            for w in workers:
                w.start()
            seen = {"hot": 0}

            def scaled(row):
                seen["hot"] = max(seen["hot"], row[1])
                return seen["hot"] == 2 and row[2] == 0
            ok = watch(scaled, 90, timeline)
            stop.set()
            for w in workers:
                w.join(timeout=150)
            assert ok, f"Expert-000 up to 2 and Expert-001 at 0 not seen; (t, hot, cold) last: {timeline[-5:]}"
            assert results and all(r.status_code == 200 for r in results)
            bad = [(r.headers.get("x-atoll-degraded"), r.headers.get("x-atoll-wall-s")) for r in results
                   if "x-atoll-degraded" in r.headers]
            assert not bad, (len(bad), len(results), bad[:5], timeline[:8])

            # expert 1 is at zero replicas: a request that needs it starts it and waits, nothing is rerouted
            want = Ensemble.from_pretrained(run.uri).sample(
                [2, 2], strategy="full", steps=4, guidance=2.0, seed=5).images[:, 0].numpy()
            assert running("Expert-001") == 0
            got = images(client.post("/v1/generate", json=FULL))
            assert np.array_equal(got, want)
            assert running("Expert-001") >= 1
            assert client.get("/healthz").status_code == 200

            # idle: both scale to zero, and the app still answers /healthz
            assert watch(lambda row: row[1] == 0 and row[2] == 0, 60, timeline), timeline[-5:]
            assert client.get("/healthz").status_code == 200
    finally:
        runner.shutdown()
