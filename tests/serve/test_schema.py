"""Request checks against the run and the limits: every bad request names its field and limit."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from atoll.serve.schema import GenerateRequest, Limits, RequestError, RunFacts, resolve, validation_error_body

LIMITS = Limits(max_samples=8, max_steps=50, default_steps=10)
FACTS = RunFacts(num_experts=2, num_classes=3, class_names=("cat", "dog", "fox"), image_shape=(1, 8, 8),
                 text_conditioned=False)


def _r(**kw):
    return resolve(GenerateRequest.model_validate(kw), LIMITS, FACTS)


def test_defaults_and_class_by_name_or_index():
    r = _r()
    assert (r.n, r.steps, r.strategy, r.label, r.format) == (1, 10, "top1", None, "png")
    assert _r(**{"class": "Dog"}).label == 1 and _r(**{"class": 2}).label == 2 and _r(**{"class": "0"}).label == 0
    assert _r(top_k=2).strategy == "top2" and _r(strategy="full").strategy == "full"


@pytest.mark.parametrize("body,field,limit", [
    ({"class": "wolf"}, "class", ["cat", "dog", "fox"]),
    ({"class": 3}, "class", ["cat", "dog", "fox"]),
    ({"n": 9}, "n", 8), ({"n": 0}, "n", 8),
    ({"steps": 51}, "steps", 50),
    ({"strategy": "top3"}, "strategy", ["full", "top1", "top2"]),
    ({"strategy": "best"}, "strategy", ["full", "top1", "top2"]),
    ({"top_k": 5}, "top_k", 2),
    ({"size": 16}, "size", 8),
    ({"prompt": "a dog"}, "prompt", None),
])
def test_bad_requests_name_the_field_and_the_limit(body, field, limit):
    with pytest.raises(RequestError) as e:
        _r(**body)
    assert e.value.field == field and e.value.limit == limit and e.value.status == 422
    assert e.value.body()["error"]["field"] == field


def test_shape_errors_from_pydantic():
    with pytest.raises(ValidationError) as e:
        GenerateRequest.model_validate({"n": "many", "colour": "red"})
    body = validation_error_body(e.value.errors())
    assert {d["field"] for d in body["error"]["details"]} == {"n", "colour"}
    with pytest.raises(ValidationError) as e:
        GenerateRequest.model_validate({"guidance": 99})
    assert validation_error_body(e.value.errors())["error"] == {
        "field": "guidance", "message": e.value.errors()[0]["msg"], "limit": 50.0,
        "details": [{"field": "guidance", "message": e.value.errors()[0]["msg"]}]}


TEXT = RunFacts(num_experts=2, num_classes=0, class_names=(), image_shape=(1, 8, 8), text_conditioned=True)


def test_text_runs_take_prompts_and_refuse_classes():
    r = resolve(GenerateRequest.model_validate({"prompt": "a red sneaker", "guidance": 2}), LIMITS, TEXT)
    assert r.prompt == "a red sneaker" and r.label is None and r.guidance == 2.0
    with pytest.raises(RequestError) as e:
        resolve(GenerateRequest.model_validate({"class": 1}), LIMITS, TEXT)
    assert e.value.field == "class" and "prompt" in e.value.message and e.value.status == 422
    with pytest.raises(RequestError, match="not both"):
        resolve(GenerateRequest.model_validate({"class": 1, "prompt": "x"}), LIMITS, TEXT)


def _images(facts=FACTS, **kw):
    from atoll.serve.openai_schema import ImagesRequest, resolve_images

    return resolve_images(ImagesRequest.model_validate(kw), LIMITS, facts, ("atoll", "run"))


def test_openai_requests_read_as_atoll_requests():
    r, name = _images(prompt="a picture of a dog", n=3, size="8x8", num_inference_steps=7, guidance_scale=2.5,
                      seed=9, model="run")
    assert (r.label, name, r.n, r.steps, r.guidance, r.seed, r.format) == (1, "dog", 3, 7, 2.5, 9, "json")
    assert _images(prompt="FOX")[0].label == 2 and _images(prompt="0")[0].label == 0
    r, name = _images(prompt="")
    assert r.label is None and name is None and r.steps == LIMITS.default_steps
    r, _ = _images(TEXT, prompt="a photo of a bag")
    assert r.prompt == "a photo of a bag" and r.label is None


@pytest.mark.parametrize("kw,field", [
    ({"prompt": "a wolf"}, "prompt"), ({"prompt": "a cat and a dog"}, "prompt"),
    ({"prompt": "dog", "size": "16x16"}, "size"), ({"prompt": "dog", "size": "8x9"}, "size"),
    ({"prompt": "dog", "size": "eight"}, "size"), ({"prompt": "dog", "n": 9}, "n"),
    ({"prompt": "dog", "num_inference_steps": 51}, "num_inference_steps"),
    ({"prompt": "dog", "model": "dall-e-3"}, "model"), ({"prompt": "dog", "response_format": "url"}, "response_format"),
    ({"prompt": "dog", "strategy": "top5"}, "strategy"),
])
def test_bad_openai_requests_name_the_openai_field(kw, field):
    with pytest.raises(RequestError) as e:
        _images(**kw)
    assert e.value.field == field and e.value.status == 422
    if field == "num_inference_steps":
        assert e.value.message.startswith("num_inference_steps = 51")


def test_unknown_openai_fields_are_rejected():
    from atoll.serve.openai_schema import ImagesRequest

    with pytest.raises(ValidationError):
        ImagesRequest.model_validate({"prompt": "dog", "quality": "hd"})
    with pytest.raises(ValidationError):
        ImagesRequest.model_validate({"n": 1})  # prompt is required, as in OpenAI's API
