"""The Serve config file (serve deploy / RayService) and the app builder's arguments; no Ray."""
from __future__ import annotations

import pytest

from atoll.serve.app import app_builder, deployment_options, resolve_target, serve_config
from atoll.spec.models import DeploymentSpec, ServeSpec


def test_config_has_router_and_one_deployment_per_expert():
    spec = ServeSpec.model_validate({"experts": {"numReplicas": "auto", "minReplicas": 1, "maxReplicas": 3,
                                                 "numGpus": 0.5}})
    doc = serve_config("s3://b/runs/x", None, spec, 3)
    app = doc["applications"][0]
    assert doc["http_options"] == {"host": "127.0.0.1", "port": 8000}
    assert app["import_path"] == "atoll.serve.app:app_builder" and app["args"] == {"run_uri": "s3://b/runs/x"}
    names = [d["name"] for d in app["deployments"]]
    assert names == ["Router", "Expert-000", "Expert-001", "Expert-002"]
    e = app["deployments"][1]
    assert e["num_replicas"] == "auto" and e["autoscaling_config"]["max_replicas"] == 3
    assert e["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert app["deployments"][0]["num_replicas"] == 1


def test_deployment_options_leave_room_for_batches():
    assert deployment_options(DeploymentSpec(max_batch_size=32))["max_ongoing_requests"] >= 32


def test_app_builder_rejects_bad_args():
    with pytest.raises(ValueError, match="run_uri"):
        app_builder({})
    with pytest.raises(ValueError, match="unknown args"):
        app_builder({"run": "x"})


def test_a_run_uri_uses_the_runs_own_serve_section(tiny_run):
    source, spec = resolve_target(tiny_run["uri"])
    assert source.uri == tiny_run["uri"] and spec == ServeSpec()
    source, spec = resolve_target(tiny_run["job"])
    assert source.uri == tiny_run["uri"]
