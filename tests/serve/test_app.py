"""The Serve app on 127.0.0.1 (ensemble mode) over a tiny K=2 run, shared by the package (conftest).

Image equality with the library sampler, every bad request, the HTTP surface, and a bounded load
test in which the scheduler really forms batches (its own counters say so).
"""
from __future__ import annotations

import base64
import io
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def png_array(data: bytes) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return np.asarray(img)


def test_health_experts_stats_and_openapi(client):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["mode"] == "ensemble"
    ex = client.get("/v1/experts").json()
    assert ex["num_experts"] == 2 and ex["mode"] == "ensemble"
    assert [e["deployment"] for e in ex["experts"]] == ["Ensemble", "Ensemble"]  # both live in one replica
    assert ex["experts"][0]["partition_size"] == 30 and ex["experts"][1]["top_labels"][0]["class"] == "three"
    assert all(e["healthy"] and e["parallel"]["device"] == "cpu" for e in ex["experts"])
    s = client.get("/v1/stats").json()
    assert s["mode"] == "ensemble" and s["max_rows"] == 32 and s["device"] == "cpu"
    spec = client.get("/openapi.json").json()
    assert {"/v1/generate", "/v1/images/generations", "/v1/experts", "/v1/stats", "/healthz"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("strategy,guidance,cls,n", [("top1", 1.0, "two", 1), ("full", 2.0, 1, 3),
                                                     ("top2", 1.5, None, 2)])
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
        assert r.content == grid_png(want, nrow=math.ceil(math.sqrt(n)))  # byte-equal grid
    else:
        assert np.array_equal(png_array(r.content), want[0, 0].numpy())
    js = client.post("/v1/generate", json={**body, "format": "json"}).json()
    got = np.stack([png_array(base64.b64decode(s)) for s in js["images"]])
    assert np.array_equal(got, want[:, 0].numpy())
    assert js["seed"] == 11 and len(js["experts"]["per_step"]) == 5 and js["timings"]["wall_s"] > 0
    assert js["timings"]["mean_batch_rows"] >= n


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


def test_concurrent_requests_share_ticks_and_each_gets_its_own_image(client, served):
    """64 requests at concurrency 16: all 200, the scheduler's mean rows per expert forward > 1."""
    before = client.get("/v1/stats").json()

    def one(i):
        body = {"n": 1 + i % 2, "steps": 4 + i % 3, "seed": i, "class": i % 4, "strategy": ["top1", "full"][i % 2],
                "guidance": [1.0, 2.0][i % 2], "format": "json"}
        return body, client.post("/v1/generate", json=body)

    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64), timeout=240))
    assert time.monotonic() - t0 < 240
    assert all(r.status_code == 200 for _, r in results), [r.text for _, r in results if r.status_code != 200][:3]
    after = client.get("/v1/stats").json()
    forwards = after["expert_forwards"] - before["expert_forwards"]
    rows = sum(after["expert_rows"]) - sum(before["expert_rows"])
    assert forwards > 0 and rows / forwards > 1.0, (rows, forwards)  # batches really formed
    assert after["max_rows_per_tick"] > 2
    assert max(r.json()["timings"]["mean_batch_rows"] for _, r in results) > 2
    ens = served["ens"]
    for body, r in results[:8]:  # each still gets (to the last bit of batched matmuls) its own image
        want = ens.sample(body["n"], class_labels=body["class"], steps=body["steps"], guidance=body["guidance"],
                          seed=body["seed"], strategy=body["strategy"]).images[:, 0].numpy()
        got = np.stack([png_array(base64.b64decode(s)) for s in r.json()["images"]])
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
