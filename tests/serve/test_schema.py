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
