"""A video run served on 127.0.0.1 with ``serve.sequenceParallel: 2`` (ensemble mode): the ensemble replica
owns one group of 2 rank actors (Ulysses over gloo) per expert, which split every forward of that expert.

The served clips equal the library's single-rank ``Ensemble.sample`` exactly (uint8), the groups
really run with world size 2, a killed rank brings its whole group back (both ranks new) and the
next request gives the same video, and wrong frames / size get a 422 naming the field.
"""
from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest

from atoll.parallel.groups import free_port

pytestmark = pytest.mark.slow

SERVE = """
serve:
  maxSamples: 4
  maxSteps: 20
  defaultSteps: 3
  sequenceParallel: 2
  ensemble: {numCpus: 0.2, maxBatchSize: 8}
"""
REQUEST = {"n": 2, "class": 3, "steps": 3, "seed": 7, "guidance": 2.0}


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_local):
    from video_serve_helpers import save_video_run

    from atoll.sampling import Ensemble
    from atoll.serve import runner
    from atoll.serve.app import build_app
    from atoll.serve.ingress import IngressOptions

    root = str(tmp_path_factory.mktemp("served-video-store"))
    job, run = save_video_run(root, "clips", 2, serve=SERVE)
    # a group restart (new actors load torch + the expert) must fit in one expert call
    app = build_app(job, options=IngressOptions(expert_timeout_s=180, retry_after_s=1.0, health_poll_s=0.5))
    url = runner.start(app, job.spec.serve, 2, port=free_port())
    try:
        yield {"url": url, "ens": Ensemble.from_pretrained(run.uri)}
    finally:
        runner.shutdown()


@pytest.fixture(scope="module")
def client(served):
    import httpx

    with httpx.Client(base_url=served["url"], timeout=240) as c:
        yield c


@pytest.fixture(scope="module")
def library(served):
    """The library's single-rank clips for REQUEST, per strategy: uint8 [2, 1, 4, 16, 16] and expert rows."""
    ens = served["ens"]
    out = {}
    for strategy in ("top1", "full"):
        r = ens.sample(2, class_labels=3, steps=3, seed=7, guidance=2.0, strategy=strategy)
        out[strategy] = (r.images.numpy(), r.expert_rows)
    return out


def _gif_frames(data: bytes) -> np.ndarray:
    from PIL import Image

    from atoll.sampling.video_io import read_gif

    assert Image.open(io.BytesIO(data)).format == "GIF"
    return read_gif(data)


def _layouts(client) -> dict[str, dict]:
    body = client.get("/v1/experts").json()
    return {f"Expert-{e['id']:03d}": e["parallel"] for e in body["experts"]}


def test_experts_report_the_video_shape_and_two_rank_groups(client):
    body = client.get("/v1/experts").json()
    assert body["video"] is True and body["image_shape"] == [1, 4, 16, 16] and body["frames"] == 4
    assert body["sequence_parallel"] == 2
    for e in body["experts"]:
        p = e["parallel"]
        assert p["sequence_parallel"] == 2 and p["world_size"] == 2, p
        ranks = p["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
        assert {r["sp_world_size"] for r in ranks} == {2} and {r["backend"] for r in ranks} == {"gloo"}
        assert len({r["pid"] for r in ranks}) == 2  # two processes, not one
    pids = [r["pid"] for e in body["experts"] for r in e["parallel"]["ranks"]]
    assert len(set(pids)) == 4  # each expert has its own group


@pytest.mark.parametrize("strategy", ["top1", "full"])
def test_served_video_equals_the_library_sampler_exactly(client, library, strategy):
    from PIL import Image

    from atoll.sampling.grid import grid_array
    from atoll.sampling.video_io import frame_strip

    want, rows = library[strategy]
    assert want.shape == (2, 1, 4, 16, 16) and want.std() > 20  # a real video, not a flat one
    assert not np.array_equal(want[:, :, 0], want[:, :, 1])  # the frames differ (no GIF frame merging)
    body = {**REQUEST, "strategy": strategy}
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/gif" and "x-atoll-degraded" not in r.headers
    got = _gif_frames(r.content)  # [T, H', W']: both clips side by side, frame k at time k
    expected = np.stack([grid_array(want[:, :, k], nrow=2)[..., 0] for k in range(4)])
    assert got.shape == expected.shape and got.dtype == np.uint8
    assert np.array_equal(got, expected), f"max diff {np.abs(got.astype(int) - expected).max()}"

    js = client.post("/v1/generate", json={**body, "format": "json", "frames": 4, "size": 16}).json()
    assert js["format"] == "gif" and js["frames"] == 4 and js["n"] == 2 and js["sequence_parallel"] == 2
    clips = np.stack([_gif_frames(base64.b64decode(v))[:, 2:-2, 2:-2] for v in js["videos"]])
    assert np.array_equal(clips, want[:, 0])
    # the library counts [cond; null] CFG rows twice; the server counts request rows
    assert [2 * js["experts"]["rows"][f"expert-{k:03d}"] for k in range(2)] == rows
    assert all(rows)  # both experts (both rank groups) computed part of this video

    strip = client.post("/v1/generate", json={**body, "format": "png"})
    assert strip.status_code == 200 and strip.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(strip.content))), frame_strip(want)[..., 0])


@pytest.mark.parametrize("body,field,limit,words", [
    ({"frames": 8}, "frames", 4, ["frames = 8", "4-frame"]),
    ({"size": 32}, "size", 16, ["size = 32", "trained size 16"]),
    ({"format": "webm"}, "format", "'png', 'json', 'gif' or 'mp4'", ["'mp4'"]),
])
def test_wrong_frames_or_size_get_422_naming_the_field(client, body, field, limit, words):
    r = client.post("/v1/generate", json={**REQUEST, **body})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field and err.get("limit") == limit
    assert all(w in err["message"] for w in words), err


def _kill(rank_info: dict) -> None:
    import ray

    ray.kill(ray.get_actor(rank_info["name"], namespace=rank_info["namespace"]), no_restart=True)


def test_a_killed_rank_restarts_its_whole_group_and_the_video_is_the_same(client, library):
    want, _ = library["full"]
    # [clip, frame, H + 4, W + 4]: each clip's GIF has the grid's 2-pixel white border
    expected = np.pad(want[:, 0], ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=255)
    body = {**REQUEST, "strategy": "full", "format": "json"}  # both experts get every row

    def clips(resp) -> np.ndarray:
        assert resp.status_code == 200, resp.text
        assert "x-atoll-degraded" not in resp.headers  # the expert answered; no rows were rerouted
        return np.stack([_gif_frames(base64.b64decode(v)) for v in resp.json()["videos"]])

    # between requests: kill rank 1 of Expert-000
    before = _layouts(client)
    _kill(before["Expert-000"]["ranks"][1])
    assert np.array_equal(clips(client.post("/v1/generate", json=body)), expected)
    after = _layouts(client)
    g0, g1 = before["Expert-000"], after["Expert-000"]
    assert g1["restarts"] == g0["restarts"] + 1 and g1["generation"] == g0["generation"] + 1
    assert g1["world_size"] == 2 and [r["rank"] for r in g1["ranks"]] == [0, 1]
    old = {r["pid"] for r in g0["ranks"]} | {r["actor_id"] for r in g0["ranks"]}
    assert not old & ({r["pid"] for r in g1["ranks"]} | {r["actor_id"] for r in g1["ranks"]})  # both ranks new
    assert after["Expert-001"]["generation"] == before["Expert-001"]["generation"]  # the other group untouched

    # during requests: kill rank 0 of Expert-001 while a client keeps asking. One client only: concurrent
    # requests share batched forwards (continuous batching), whose float results may differ in the last bit
    # from an unbatched forward (docs/serving.md), and this test compares videos exactly.
    results, stop = [], threading.Event()

    def traffic():
        deadline = time.monotonic() + 240
        while not stop.is_set() and time.monotonic() < deadline and len(results) < 50:
            results.append(client.post("/v1/generate", json=body))

    threads = [threading.Thread(target=traffic)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    _kill(after["Expert-001"]["ranks"][0])
    deadline = time.monotonic() + 240
    restarts = after["Expert-001"]["restarts"]
    while time.monotonic() < deadline and (_layouts(client)["Expert-001"] or {}).get("restarts", restarts) == restarts:
        time.sleep(0.5)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=300)
    assert results and not any(t.is_alive() for t in threads)
    for resp in results:
        assert np.array_equal(clips(resp), expected)
    final = _layouts(client)["Expert-001"]
    assert final["restarts"] == after["Expert-001"]["restarts"] + 1 and final["world_size"] == 2
    assert not {r["pid"] for r in after["Expert-001"]["ranks"]} & {r["pid"] for r in final["ranks"]}
    assert np.array_equal(clips(client.post("/v1/generate", json=body)), expected)
