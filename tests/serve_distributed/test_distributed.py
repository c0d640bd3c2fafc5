"""Distributed mode on 127.0.0.1 over a tiny K=2 TEXT-conditioned run: the Router deployment (2 replicas)
runs the scheduler with the router and calls Expert-000 / Expert-001 (2 replicas each) once per tick.

Text prompts over HTTP equal the library's ``Ensemble.sample(prompts=...)``; a killed Router replica
or a killed expert replica is retried on the other replica (same images, no 5xx); with no replica of
an expert left its rows are rerouted (``X-Atoll-Degraded``), or held while Serve starts a replacement,
until Serve brings it back.
"""
from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest

from atoll.parallel.groups import free_port
from serve_replicas import kill, replica_actors, wait_replaced

pytestmark = pytest.mark.slow

SERVE = """
serve:
  mode: distributed
  maxSamples: 8
  maxSteps: 60
  defaultSteps: 6
  router: {numReplicas: 2, numCpus: 0.25}
  experts: {numReplicas: 2, numCpus: 0.25}
"""
PROMPT = "a photo of a two"
BODY = {"prompt": PROMPT, "n": 2, "steps": 8, "guidance": 2.0, "seed": 4, "strategy": "full", "format": "json"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_local):
    from distributed_helpers import save_text_run

    from atoll.sampling import Ensemble
    from atoll.serve import runner
    from atoll.serve.app import build_app
    from atoll.serve.ingress import IngressOptions

    root = str(tmp_path_factory.mktemp("served-distributed"))
    job, run = save_text_run(root, "dist", 2, serve=SERVE)
    opts = IngressOptions(expert_timeout_s=20, request_timeout_s=120, retry_after_s=1.0, health_poll_s=0.25)
    url = runner.start(build_app(job, options=opts, environ={}), job.spec.serve, 2, port=free_port())
    ens = Ensemble.from_pretrained(run.uri)
    want = ens.sample(prompts=PROMPT, n=2, steps=8, guidance=2.0, seed=4, strategy="full").images[:, 0].numpy()
    try:
        yield {"url": url, "ens": ens, "want": want}
    finally:
        runner.shutdown()


@pytest.fixture(scope="module")
def client(served):
    import httpx

    with httpx.Client(base_url=served["url"], timeout=150) as c:
        yield c


def images(resp) -> np.ndarray:
    from PIL import Image

    assert resp.status_code == 200, resp.text
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in resp.json()["images"]])


def test_text_prompts_over_http_equal_the_library(client, served):
    assert np.array_equal(images(client.post("/v1/generate", json=BODY)), served["want"])
    other = served["ens"].sample(prompts="a bag", n=1, steps=3, seed=1).images[0, 0].numpy()
    r = client.post("/v1/images/generations", json={"prompt": "a bag", "num_inference_steps": 3, "seed": 1})
    from PIL import Image

    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"]))))
    assert np.array_equal(got, other)
    r = client.post("/v1/generate", json={"class": 1})
    assert r.status_code == 422 and r.json()["error"]["field"] == "class" and "prompt" in r.json()["error"]["message"]
    ex = client.get("/v1/experts").json()
    assert ex["mode"] == "distributed" and [e["deployment"] for e in ex["experts"]] == ["Expert-000", "Expert-001"]
    assert [e["running_replicas"] for e in ex["experts"]] == [2, 2]
    s = client.get("/v1/stats").json()
    assert s["mode"] == "distributed" and s["expert_forwards"] <= 2 * s["ticks"]  # one exchange per expert per tick


def _traffic(client, results: list, stop: threading.Event, body=BODY, limit: int = 200) -> threading.Thread:
    def run():
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline and len(results) < limit:
            results.append(client.post("/v1/generate", json=body))
    t = threading.Thread(target=run)
    t.start()
    return t


def _under_traffic(client, deployment: str, victims: list, replicas: int = 2, threads: int = 2) -> list:
    results, stop = [], threading.Event()
    workers = [_traffic(client, results, stop) for _ in range(threads)]
    time.sleep(1.5)
    for v in victims:
        kill(v)
    wait_replaced(deployment, [v[0] for v in victims], want=replicas)
    time.sleep(1.5)  # traffic after the recovery
    stop.set()
    for w in workers:
        w.join(timeout=180)
    assert results and not any(w.is_alive() for w in workers), "a client hung"
    return results


def test_a_killed_router_replica_is_retried_on_the_other(client, served):
    victim = replica_actors("Router")[0]
    results = _under_traffic(client, "Router", [victim], threads=4)  # both replicas have requests in flight
    for r in results:  # every request answered, each with the library's images
        assert np.array_equal(images(r), served["want"]) and "x-atoll-degraded" not in r.headers
    assert any(r.headers.get("x-atoll-retried") == "1" for r in results), "no request was restarted elsewhere"


def test_a_killed_expert_replica_is_retried_on_the_other(client, served):
    """What a client sees: every answer right, none degraded. Where the retry happens depends on the kill's
    timing: a call already running on the killed replica fails in ``RemoteExpert`` and is retried there
    (``expert_retries``, tested deterministically below); a call sent after the kill is re-routed by
    Serve's own router, which never hands it to us as a failure (the xfail of stops 22-24 asserted the
    first on a kill that mostly lands between calls)."""
    victim = replica_actors("Expert-000")[0]
    results = _under_traffic(client, "Expert-000", [victim])
    for r in results:
        assert np.array_equal(images(r), served["want"]) and "x-atoll-degraded" not in r.headers


def test_an_expert_call_running_on_a_dying_replica_is_retried_on_the_other(served, tmp_path):
    """Deterministic: a real two-replica Serve deployment whose first call kills its own replica mid-call
    (``os._exit``), behind the real ``RemoteExpert`` of the Router replicas: the call is retried on the
    other replica, counted once, and answered; with no replica left it is ``ExpertDown``."""
    import asyncio
    import os
    from types import SimpleNamespace

    import torch
    from ray import serve

    from atoll.serve.deployments import ReplicaOptions, RemoteExpert
    from atoll.serve.expert_batch import ExpertBatch
    from atoll.serve.routing import ExpertDown

    @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0})
    class DiesOnFirstCall:
        def __init__(self, marker: str):
            self.marker = marker

        def velocity(self, b):
            try:
                os.remove(self.marker)  # only the replica that removes the marker dies
            except FileNotFoundError:
                return b.x * 2
            os._exit(1)

    marker = tmp_path / "die"
    marker.write_text("")
    handle = serve.run(DiesOnFirstCall.bind(str(marker)), name="dies-once", route_prefix=None)
    running = {"n": 2}
    owner = SimpleNamespace(options=ReplicaOptions(expert_timeout_s=30),
                            scheduler=SimpleNamespace(counters=SimpleNamespace(expert_retries=0)),
                            running=lambda name: running["n"])
    batch = ExpertBatch(x=torch.ones(3, 1, 4, 4), t=torch.full((3,), 0.5))
    try:
        out = asyncio.run(RemoteExpert(0, handle, owner)(batch))
        assert torch.equal(out, batch.x * 2) and not marker.exists()
        # retried by RemoteExpert (counted once), or by Serve itself (seen in CI: its router re-sends a call
        # whose replica died before answering, and RemoteExpert then sees no failure at all)
        retries = owner.scheduler.counters.expert_retries
        assert retries <= 1
        marker.write_text("")
        running["n"] = 1   # the status poll says one replica is left: the next death is not retried by us
        try:
            out = asyncio.run(RemoteExpert(0, handle, owner)(batch))
            assert torch.equal(out, batch.x * 2)  # Serve re-sent it to the other replica
        except ExpertDown as e:
            assert "DiesOnFirstCall" in str(e) or "Expert-000" in str(e)
        assert owner.scheduler.counters.expert_retries == retries
    finally:
        serve.delete("dies-once")


def test_with_no_expert_replica_left_every_answer_is_rerouted_or_exact_then_it_recovers(client, served):
    """Both Expert-001 replicas killed under traffic. What a client may see depends on how long the outage
    lasts: while the status poll sees no running replica (or a held call times out) the expert's rows are
    rerouted and the answer says so (``X-Atoll-Degraded``, the path tested deterministically in
    tests/serve/test_scheduler.py and above); when Serve starts a replacement within ``expert_timeout_s``
    it holds the calls instead, and the answer is exactly the library's (seen in 1 of 4 CI runs). Never
    a 5xx, never a silently wrong image, and afterwards the replaced expert is used again."""
    results = _under_traffic(client, "Expert-001", replica_actors("Expert-001"))
    assert all(r.status_code == 200 for r in results), sorted({r.status_code for r in results})
    for r in results:
        if "x-atoll-degraded" in r.headers:
            assert r.headers["x-atoll-degraded"] == "expert-001"
        else:
            assert np.array_equal(images(r), served["want"]), "an answer not marked degraded differs from the library's"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the replaced expert is used again
        r = client.post("/v1/generate", json=BODY)
        if "x-atoll-degraded" not in r.headers:
            break
        time.sleep(0.5)
    assert np.array_equal(images(r), served["want"]) and "x-atoll-degraded" not in r.headers
