"""Experts scaled by routed rows (``serve.experts.scaleOn: rows``): the meter, the policy, the spec and the
Serve options they become (no Ray here; the scaling itself is tests/serve_distributed/test_scale_to_zero.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from atoll.serve.autoscale import RowMeter, RowsPolicy, desired_replicas
from atoll.spec.models import ServeSpec


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_the_meter_counts_rows_of_its_window_over_its_age():
    c = Clock()
    m = RowMeter(window_s=10.0, clock=c)
    c.t += 2.0
    m.add(8)
    m.add(8)
    assert m.rate() == pytest.approx(16 / 2.0)  # a young replica: its age is the window
    c.t += 8.0
    m.add(4)
    assert m.rate() == pytest.approx(20 / 10.0)
    c.t += 9.0  # the first two fell out of the window
    assert m.rate() == pytest.approx(4 / 10.0)
    c.t += 20.0
    assert m.rate() == 0.0


def ctx(current: int, rates: dict | None, waiting: float = 0.0):
    return SimpleNamespace(current_num_replicas=current, total_num_requests=waiting,
                           aggregated_metrics=None if rates is None else {"rows_per_s": rates})


def test_the_policy_asks_for_rows_over_the_target_and_zero_when_nothing_is_routed():
    p = RowsPolicy(target_rows_per_s=10.0)
    assert p(ctx(1, {"a": 4.0, "b": 0.0}))[0] == 1
    assert p(ctx(2, {"a": 14.0, "b": 12.0}))[0] == 3          # 26 rows/s over 10 per replica
    assert p(ctx(2, {"a": 0.0, "b": 0.0}))[0] == 0            # nobody routed to it: to zero (after idleS)
    assert p(ctx(2, {"a": 0.0}, waiting=1))[0] == 1           # a call in flight keeps one
    assert p(ctx(0, None, waiting=2))[0] == 1                 # cold start: one at once
    assert p(ctx(0, None))[0] == 0
    assert p(ctx(3, {}))[0] == 3                              # nothing reported yet: hold
    assert desired_replicas(20.0, 10.0) == 2 and desired_replicas(20.01, 10.0) == 3
    with pytest.raises(ValueError, match="target_rows_per_s"):
        RowsPolicy(0)


def test_rows_scaling_is_an_expert_setting_of_distributed_mode():
    ok = ServeSpec.model_validate({"mode": "distributed", "experts": {
        "numReplicas": "auto", "minReplicas": 0, "maxReplicas": 3, "scaleOn": "rows", "targetRowsPerS": 8,
        "idleS": 30}})
    assert ok.experts.scale_on == "rows"
    assert "scaleOn" not in ServeSpec().model_dump(by_alias=True)["experts"]  # old specs hash as before
    for body, field in [({"mode": "distributed", "experts": {"numReplicas": 2, "scaleOn": "rows"}}, "scaleOn"),
                        ({"mode": "distributed", "router": {"numReplicas": "auto", "scaleOn": "rows"}}, "router.scaleOn"),
                        ({"experts": {"numReplicas": "auto", "scaleOn": "rows"}}, "experts.scaleOn")]:
        with pytest.raises(ValueError, match=field):
            ServeSpec.model_validate(body)


def test_the_expert_deployments_get_serves_autoscaling_config_with_the_rows_policy():
    from ray.serve.config import AutoscalingConfig

    from atoll.serve.app import deployment_options

    spec = ServeSpec.model_validate({"mode": "distributed", "experts": {
        "numReplicas": "auto", "minReplicas": 0, "maxReplicas": 3, "scaleOn": "rows", "targetRowsPerS": 8,
        "idleS": 30, "upscaleDelayS": 2}})
    cfg = deployment_options(spec.experts)["autoscaling_config"]
    assert cfg["downscale_to_zero_delay_s"] == 30 and cfg["upscale_delay_s"] == 2 and cfg["initial_replicas"] == 1
    serve_cfg = AutoscalingConfig(**cfg)  # what Serve validates (it imports the policy by its path)
    assert serve_cfg.policy.policy_function == "atoll.serve.autoscale:RowsPolicy"
    assert serve_cfg.policy.policy_kwargs == {"target_rows_per_s": 8.0} and serve_cfg.min_replicas == 0
