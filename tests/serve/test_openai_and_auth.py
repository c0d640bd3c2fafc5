"""The OpenAI-compatible endpoint with the official ``openai`` client, and the API key (serve.auth)."""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from test_app import png_array

pytestmark = pytest.mark.slow


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
