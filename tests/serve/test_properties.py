"""Property-based HTTP tests: schemathesis generates requests from ``/openapi.json`` (valid and invalid
bodies) for every operation; bounded in examples and time.

Checks: no 5xx; every status code is documented; every answer's content type and JSON body match
the document (so every 4xx carries the documented ``{"error": {...}}`` body).
"""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.slow

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
