"""The Serve app on 127.0.0.1 over a tiny K=2 run: started once for the module.

Image equality with the library sampler, every bad request, the HTTP surface, a bounded load
test, and killing an expert replica under traffic (degraded header, no 5xx, recovery).
"""
from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from atoll.parallel.groups import free_port

pytestmark = pytest.mark.slow

SERVE = """
serve:
  maxSamples: 8
  maxSteps: 50
  defaultSteps: 6
  router: {numCpus: 0.25, maxBatchSize: 16, batchWaitTimeoutS: 0.005}
  experts: {numCpus: 0.25, maxBatchSize: 16, batchWaitTimeoutS: 0.005}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_local):
    from serve_helpers import save_tiny_run

    from atoll.sampling import Ensemble
    from atoll.serve import runner
    from atoll.serve.app import build_app
    from atoll.serve.ingress import IngressOptions

    root = str(tmp_path_factory.mktemp("served-store"))
    job, run = save_tiny_run(root, "served", 2, serve=SERVE)
    app = build_app(job, options=IngressOptions(expert_timeout_s=5, retry_after_s=1.0, health_poll_s=0.25))
    url = runner.start(app, job.spec.serve, 2, port=free_port())
    try:
        yield {"url": url, "ens": Ensemble.from_pretrained(run.uri), "run": run}
    finally:
        runner.shutdown()


@pytest.fixture(scope="module")
def client(served):
    import httpx

    with httpx.Client(base_url=served["url"], timeout=60) as c:
        yield c


def _png_array(data: bytes) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return np.asarray(img)


def test_health_experts_and_openapi(client):
    assert client.get("/healthz").json()["status"] == "ok"
    ex = client.get("/v1/experts").json()
    assert ex["num_experts"] == 2 and [e["deployment"] for e in ex["experts"]] == ["Expert-000", "Expert-001"]
    assert ex["experts"][0]["partition_size"] == 30 and ex["experts"][1]["top_labels"][0]["class"] == "three"
    spec = client.get("/openapi.json").json()
    assert "/v1/generate" in spec["paths"] and client.get("/docs").status_code == 200


@pytest.mark.parametrize("strategy,guidance,cls,n", [("top1", 1.0, "two", 1), ("full", 2.0, 1, 3), ("top2", 1.5, None, 2)])
def test_same_image_as_the_library_sampler(client, served, strategy, guidance, cls, n):
    from atoll.sampling import grid_png

    label = None if cls is None else served["ens"].class_index(cls)
    want = served["ens"].sample(n, class_labels=label, steps=5, guidance=guidance, seed=11, strategy=strategy).images
    body = {"n": n, "steps": 5, "guidance": guidance, "seed": 11, "strategy": strategy, "size": 8}
    if cls is not None:
        body["class"] = cls
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    if n > 1:
        import math

        assert r.content == grid_png(want, nrow=math.ceil(math.sqrt(n)))  # byte-equal grid
    else:
        assert np.array_equal(_png_array(r.content), want[0, 0].numpy())
    js = client.post("/v1/generate", json={**body, "format": "json"}).json()
    got = np.stack([_png_array(base64.b64decode(s)) for s in js["images"]])
    assert np.array_equal(got, want[:, 0].numpy())
    assert js["seed"] == 11 and len(js["experts"]["per_step"]) == 5 and js["timings"]["wall_s"] > 0


@pytest.mark.parametrize("body,field,status", [
    ({"class": "wolf"}, "class", 422), ({"class": 9}, "class", 422),
    ({"n": 9}, "n", 422), ({"steps": 51}, "steps", 422),
    ({"strategy": "top3"}, "strategy", 422), ({"strategy": "bogus"}, "strategy", 422),
    ({"size": 16}, "size", 422), ({"prompt": "a cat"}, "prompt", 422),
    ({"n": "lots"}, "n", 422), ({"colour": "red"}, "colour", 422), ({"guidance": -1}, "guidance", 422),
    ({"format": "gif"}, "format", 422),
])
def test_bad_requests_get_4xx_naming_the_field(client, body, field, status):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field


def test_malformed_json_and_wrong_types_do_not_crash(client):
    for content in (b"{not json", b"[1, 2]", b"", b"null", b"\xff\xfe"):
        r = client.post("/v1/generate", content=content, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (content, r.status_code, r.text)
        assert "error" in r.json()
    assert client.post("/v1/generate", json={"n": 1, "steps": 2}).status_code == 200  # still alive


def test_load_64_requests_at_concurrency_16(client):
    def one(i):
        return client.post("/v1/generate", json={"n": 1 + i % 2, "steps": 4, "seed": i, "class": i % 4,
                                                 "strategy": ["top1", "full"][i % 2]})

    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64), timeout=180))
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200][:3]
    for r in results:
        _png_array(r.content)
    assert time.monotonic() - t0 < 180


def _replica_names(deployment: str) -> list[tuple[str, str]]:
    import ray

    return [(a["name"], a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in a["name"]]


def _running(deployment: str) -> int:
    from atoll.serve.status import running_replicas

    return running_replicas("atoll").get(deployment, 0)


def test_killing_an_expert_replica_degrades_then_recovers(client):
    import ray

    (name, ns), = _replica_names("Expert-001")
    stop, results = threading.Event(), []

    def traffic():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and len(results) < 400:
            r = client.post("/v1/generate", json={"n": 2, "steps": 4, "strategy": "full", "class": 1})
            results.append((r.status_code, r.headers.get("x-atoll-degraded")))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    ray.kill(ray.get_actor(name, namespace=ns), no_restart=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (_replica_names("Expert-001") and _running("Expert-001") >= 1
                                               and _replica_names("Expert-001")[0][0] != name):
        time.sleep(0.5)
    time.sleep(2.0)  # traffic after the recovery
    stop.set()
    for t in threads:
        t.join(timeout=90)
    assert _running("Expert-001") >= 1, "Serve did not bring the replica back within 60 s"
    codes = [c for c, _ in results]
    assert codes and all(c == 200 for c in codes), sorted(set(codes))
    assert any(d == "expert-001" for _, d in results), "no response said it was degraded"
    # after recovery the expert is used again
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = client.post("/v1/generate", json={"n": 1, "steps": 2, "strategy": "full"})
        if r.status_code == 200 and "x-atoll-degraded" not in r.headers:
            break
        time.sleep(0.5)
    assert r.status_code == 200 and "x-atoll-degraded" not in r.headers
