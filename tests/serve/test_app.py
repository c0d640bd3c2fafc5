"""The Serve app on 127.0.0.1 (ensemble mode, with an API key) over a tiny K=2 run, started once here.

Image equality with the library sampler, every bad request, the HTTP surface, a bounded load test
in which the scheduler really forms batches (its own counters say so), the OpenAI endpoint with the
official ``openai`` client, the API key, property-based tests (schemathesis) and, last, killing
the ensemble replica under traffic, and growing the run under traffic (a new registry version served
without a redeploy).
"""
from __future__ import annotations

import base64
import io
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from serve_helpers import save_tiny_run
from serve_replicas import kill, replica_actors, wait_replaced

pytestmark = pytest.mark.slow
API_KEY = "atoll-test-key-7f3a9c"  # a test key: the auth tests check it never reaches a log file
SERVE = """
serve:
  maxSamples: 8
  maxSteps: 50
  defaultSteps: 6
  ensemble: {numCpus: 1, maxBatchSize: 32}
  registryPollS: 1
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_local):
    from atoll.parallel.groups import free_port
    from atoll.sampling import Ensemble
    from atoll.serve import runner
    from atoll.serve.app import build_app
    from atoll.serve.ingress import IngressOptions

    root = str(tmp_path_factory.mktemp("served-store"))
    job, run = save_tiny_run(root, "served", 2, serve=SERVE)
    opts = IngressOptions(request_timeout_s=60, retry_after_s=1.0, health_poll_s=0.25)
    app = build_app(job, options=opts, environ={"ATOLL_API_KEY": API_KEY})
    url = runner.start(app, job.spec.serve, 2, port=free_port())
    try:
        yield {"url": url, "ens": Ensemble.from_pretrained(run.uri), "run": run, "key": API_KEY}
    finally:
        runner.shutdown()


@pytest.fixture(scope="module")
def client(served):
    import httpx

    with httpx.Client(base_url=served["url"], timeout=90, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        yield c


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


def test_start_up_that_does_not_finish_is_one_clear_message(served):
    from atoll.serve.runner import ServeStartError, wait_running

    lines: list[str] = []
    with pytest.raises(ServeStartError, match=r"'no-such-app' was not running after 2 s .*numReplicas / numCpus"):
        wait_running("no-such-app", 2, lines.append, poll_s=0.5)
    assert lines and lines[0] == "waiting for the application"


# -- the OpenAI endpoint and the API key ------------------------------------------------------
@pytest.fixture(scope="module")
def oai(served):
    import openai

    return openai.OpenAI(base_url=served["url"] + "/v1", api_key=served["key"], max_retries=0, timeout=90)


def test_the_openai_client_generates_the_library_images(oai, served):
    res = oai.images.generate(prompt="a picture of a two", n=3, size="8x8", response_format="b64_json",
                              model="atoll", extra_body={"seed": 5, "num_inference_steps": 4, "guidance_scale": 2.0})
    assert res.created > 0 and len(res.data) == 3 and res.data[0].revised_prompt == "two"
    got = np.stack([png_array(base64.b64decode(d.b64_json)) for d in res.data])
    want = served["ens"].sample(3, class_labels=2, steps=4, guidance=2.0, seed=5).images[:, 0].numpy()
    assert np.array_equal(got, want)
    # the run's own name is a model name too; an empty prompt is unconditional
    res = oai.images.generate(prompt="", model="served", extra_body={"num_inference_steps": 3})
    want = served["ens"].sample(1, steps=3).images[0, 0].numpy()
    assert np.array_equal(png_array(base64.b64decode(res.data[0].b64_json)), want)


@pytest.mark.parametrize("kwargs,field", [
    ({"prompt": "a wolf"}, "prompt"), ({"prompt": "zero and one"}, "prompt"),
    ({"prompt": "two", "size": "16x16"}, "size"), ({"prompt": "two", "size": "big"}, "size"),
    ({"prompt": "two", "n": 9}, "n"), ({"prompt": "two", "model": "dall-e-3"}, "model"),
    ({"prompt": "two", "response_format": "url"}, "response_format"),
    ({"prompt": "two", "extra_body": {"num_inference_steps": 500}}, "num_inference_steps"),
])
def test_openai_errors_name_the_openai_field(oai, kwargs, field):
    import openai

    with pytest.raises(openai.UnprocessableEntityError) as e:
        oai.images.generate(**kwargs)
    assert e.value.status_code == 422 and e.value.body["field"] == field, e.value.body


def test_without_or_with_a_wrong_key_every_route_is_401(served):
    import httpx
    import openai

    with httpx.Client(base_url=served["url"], timeout=30) as c:
        for method, path, body in [("POST", "/v1/generate", {"n": 1}), ("POST", "/v1/images/generations",
                                                                        {"prompt": "two"}),
                                   ("GET", "/v1/experts", None), ("GET", "/v1/stats", None)]:
            for headers in ({}, {"Authorization": "Bearer not-the-key-31415"}, {"Authorization": "Basic abc"}):
                r = c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers, r.text)
                assert r.json()["error"]["field"] == "authorization" and r.headers["www-authenticate"] == "Bearer"
                assert "not-the-key" not in r.text
        assert c.get("/healthz").status_code == 200 and c.get("/openapi.json").status_code == 200
        spec = c.get("/openapi.json").json()
        assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served["url"] + "/v1", api_key="not-the-key-31415", max_retries=0).images.generate(
            prompt="two")


def test_the_key_is_never_logged(served, client):
    import ray

    assert client.post("/v1/generate", json={"n": 1, "steps": 1}).status_code == 200
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert any("Ingress" in p.name for p in files)  # Serve's access logs of the ingress are there
    for p in files:
        data = p.read_bytes()
        assert served["key"].encode() not in data and b"not-the-key-31415" not in data, p


# -- property-based: schemathesis from /openapi.json ------------------------------------------------
EXAMPLES = 40        # per operation and mode
BUDGET_S = 150.0     # for the whole test


def test_every_operation_answers_as_documented(served):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis import checks as sc

    schema = schemathesis.openapi.from_url(served["url"] + "/openapi.json", timeout=30)
    checks = [sc.not_a_server_error, sc.status_code_conformance, sc.content_type_conformance,
              sc.response_schema_conformance]
    headers = {"Authorization": f"Bearer {served['key']}"}
    deadline = time.monotonic() + BUDGET_S
    seen: dict[str, set[int]] = {}
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/generate", "/v1/images/generations", "/v1/experts", "/healthz"}
    for op in operations:
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if op.method.upper() == "POST" else [])
        for mode in modes:  # a GET without parameters has no invalid request
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                if time.monotonic() > deadline:
                    return
                response = case.call_and_validate(headers=headers, checks=checks, timeout=90)
                seen.setdefault(op.label, set()).add(response.status_code)

            run()
    assert time.monotonic() < deadline + 120, "the bounded run took far too long"
    codes = set().union(*seen.values())
    assert 200 in codes and 422 in codes, seen  # both valid and invalid requests were made


# -- last: the ensemble replica dies under traffic ---------------------------------------------------
def test_killing_the_ensemble_replica_gives_503_then_recovers(client, served):
    (actor,) = replica_actors("Ensemble")
    body = {"n": 2, "steps": 40, "class": 1, "strategy": "full", "seed": 3}
    stop, results = threading.Event(), []

    def traffic():
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline and len(results) < 300:
            t0 = time.monotonic()
            r = client.post("/v1/generate", json=body)
            results.append((r.status_code, r.headers.get("retry-after"), r.text if r.status_code != 200 else "",
                            time.monotonic() - t0, r.headers.get("x-atoll-retried")))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    kill(actor)
    wait_replaced("Ensemble", [actor[0]])
    time.sleep(2.0)  # traffic after the recovery
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a client hung"
    codes = [c for c, *_ in results]
    assert set(codes) <= {200, 503}, sorted(set(codes))
    # the requests in flight when it died: a 503 with Retry-After, or (when the ingress already saw the
    # replacement running) retried on it and answered (X-Atoll-Retried)
    assert 503 in codes or any(c == 200 and retried for c, *_, retried in results), \
        "no request was in flight when the replica died"
    for c, retry, text, _, _ in results:
        if c == 503:
            assert retry and int(retry) >= 1 and '"error"' in text
    assert max(s for *_, s, _ in results) < 75  # bounded by the ingress's request timeout, never a hang
    assert codes[-1] == 200 or any(c == 200 for c in codes[-3:])  # served again after the replacement
    r = client.post("/v1/generate", json={**body, "steps": 5, "n": 1})
    want = served["ens"].sample(1, class_labels=1, steps=5, seed=3, strategy="full").images[0, 0].numpy()
    assert r.status_code == 200 and np.array_equal(png_array(r.content), want)


# -- very last: the run grows under traffic (it changes what the app serves) ----------------------------
def test_a_grown_run_is_served_without_a_redeploy_and_no_request_fails(client, served):
    """``atoll add-experts`` writes registry version 2: the replica's watcher (``serve.registryPollS: 1``) loads
    it beside version 1; every request during the switch is answered, and the next ones get version 2."""
    from tiny_runs import grow_by_hand

    from atoll.sampling import Ensemble

    run = served["run"]
    body = {"n": 1, "steps": 30, "class": 2, "strategy": "top1", "seed": 4}
    stop, codes = threading.Event(), []

    def traffic():
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline and len(codes) < 300:
            codes.append(client.post("/v1/generate", json=body).status_code)

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    grow_by_hand(run, 2)
    deadline, info = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        info = client.get("/v1/experts").json()
        if info["version"] == 2:
            break
        time.sleep(0.5)
    time.sleep(1.0)  # traffic on the new version
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert info["version"] == 2 and info["num_experts"] == 3 and len(info["experts"]) == 3, info
    assert codes and set(codes) == {200}, sorted(set(codes))
    stats = client.get("/v1/stats").json()
    assert stats["registry_version"] == 2 and stats["reloads"] == 1
    r = client.post("/v1/generate", json={**body, "steps": 5})
    want = Ensemble.from_pretrained(run.uri).sample(1, class_labels=2, steps=5, seed=4, strategy="top1").images[0, 0]
    assert r.status_code == 200 and np.array_equal(png_array(r.content), want.numpy())
