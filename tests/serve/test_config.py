"""The Serve config file (serve deploy / RayService), the app builder's arguments, the serve spec's
checks, the replicas' device decision and the API key; no Ray."""
from __future__ import annotations

import pytest

from atoll.serve.app import app_builder, deployment_options, model_deployments, resolve_target, serve_config
from atoll.spec.models import DeploymentSpec, ServeSpec


def test_ensemble_mode_is_one_model_deployment():
    doc = serve_config("s3://b/runs/x", None, ServeSpec(), 3)
    app = doc["applications"][0]
    assert doc["http_options"] == {"host": "127.0.0.1", "port": 8000}
    assert app["import_path"] == "atoll.serve.app:app_builder" and app["args"] == {"run_uri": "s3://b/runs/x"}
    (dep,) = app["deployments"]
    assert dep["name"] == "Ensemble" and dep["num_replicas"] == 1
    assert dep["max_ongoing_requests"] == 4 * 64  # 64 rows per tick by default


def test_distributed_mode_has_the_router_and_one_deployment_per_expert():
    spec = ServeSpec.model_validate({"mode": "distributed", "experts": {"numReplicas": "auto", "minReplicas": 1,
                                                                        "maxReplicas": 3, "numGpus": 0.5}})
    app = serve_config("s3://b/runs/x", None, spec, 3)["applications"][0]
    assert [d["name"] for d in app["deployments"]] == ["Router", "Expert-000", "Expert-001", "Expert-002"]
    e = app["deployments"][1]
    assert e["num_replicas"] == "auto" and e["autoscaling_config"]["max_replicas"] == 3
    assert e["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert app["deployments"][0]["num_replicas"] == 1
    assert [n for n, _ in model_deployments(spec, 3)] == [d["name"] for d in app["deployments"]]


def test_deployment_options_leave_room_for_batches():
    assert deployment_options(DeploymentSpec(max_batch_size=32))["max_ongoing_requests"] >= 32
    auto = deployment_options(DeploymentSpec(num_replicas="auto", min_replicas=2, max_replicas=5))
    assert auto["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 5, "target_ongoing_requests": 8}


def test_scheduler_sections_default_to_64_rows_per_tick():
    s = ServeSpec.model_validate({"mode": "distributed", "ensemble": {"numCpus": 2}, "router": {"numReplicas": 2},
                                  "experts": {}})
    assert (s.ensemble.max_batch_size, s.router.max_batch_size, s.experts.max_batch_size) == (64, 64, 8)
    assert ServeSpec.model_validate({"ensemble": {"maxBatchSize": 16}}).ensemble.max_batch_size == 16


@pytest.mark.parametrize("serve,path,words", [
    ({"experts": {"numReplicas": 0}}, "spec.serve.experts.numReplicas", ["numReplicas >= 1", "auto"]),
    ({"ensemble": {"numReplicas": -2}}, "spec.serve.ensemble.numReplicas", ["numReplicas >= 1"]),
    ({"router": {"numReplicas": "auto", "minReplicas": 5, "maxReplicas": 2}}, "spec.serve.router.minReplicas",
     ["minReplicas (5) is larger than maxReplicas (2)", "lower minReplicas or raise maxReplicas"]),
    ({"mode": "fast"}, "spec.serve.mode", []),
    ({"onExpertFailure": "ignore"}, "spec.serve.onExpertFailure", []),
    ({"auth": {"apiKey": "secret"}}, "spec.serve.auth.apiKey", ["unknown key"]),
])
def test_bad_serve_sections_name_the_field_and_the_fix(serve, path, words):
    import textwrap

    import yaml

    from atoll.spec import SpecError, loads

    body = textwrap.indent(yaml.safe_dump({"serve": serve}), "  ")
    with pytest.raises(SpecError) as e:
        loads("apiVersion: atoll/v1\nkind: Job\nmetadata: {name: x}\nspec:\n  data: {source: {type: digits}}\n"
              + body)
    problems = {p.path: p.message for p in e.value.problems}
    assert path in problems, problems
    assert all(w in problems[path] for w in words), problems[path]


def test_cpus_needed_by_mode():
    from atoll.serve.runner import cpus_needed

    assert cpus_needed(ServeSpec.model_validate({"ensemble": {"numCpus": 2, "numReplicas": 2}}), 4) == 5
    spec = ServeSpec.model_validate({"mode": "distributed", "router": {"numCpus": 0.5}, "experts": {"numCpus": 0.5}})
    assert cpus_needed(spec, 4) == 4  # 0.5 + 4 * 0.5 + 1


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


def test_replicas_put_router_and_experts_on_their_gpu_when_they_have_one(monkeypatch):
    import torch

    import atoll.devices as devices
    from atoll.devices import DeviceError
    from atoll.serve.deployments import replica_placement

    assert replica_placement(0).device == torch.device("cpu")
    with pytest.raises(DeviceError, match="numGpus"):
        replica_placement(1)  # no CUDA device here: a clear error, never a silent CPU fallback
    monkeypatch.setattr(devices, "cuda_count", lambda: 1)  # the decision only; nothing is moved
    assert replica_placement(1).device == torch.device("cuda", 0)
    assert replica_placement(0.5).is_cuda
    assert replica_placement(1, sequence_parallel=2).device == torch.device("cpu")  # the ranks take the GPUs


def test_a_replica_loads_every_model_onto_its_device(tiny_run):
    import torch

    from atoll.devices import check_placed
    from atoll.serve.deployments import EnsembleReplica
    from atoll.serve.runinfo import RunSource

    rep = EnsembleReplica(RunSource(tiny_run["uri"]))  # the plain class: no Ray, no Serve
    assert rep.placement.device == torch.device("cpu") and rep.placement.reason == "numGpus is 0"
    for i, m in enumerate([rep.engine.router, *rep.engine.experts]):
        check_placed(m, rep.placement.device, f"model {i}")


def test_api_key_digest_comes_from_the_environment_only():
    from atoll.serve.auth import AuthConfigError, api_key_digest, digest
    from atoll.spec.models import AuthSpec

    assert api_key_digest(AuthSpec(), {}) is None
    d = api_key_digest(AuthSpec(), {"ATOLL_API_KEY": " k3y "})
    assert d == digest("k3y") and "k3y" not in d
    assert api_key_digest(AuthSpec(api_key_env="MY_KEY"), {"MY_KEY": "x"}) == digest("x")
    with pytest.raises(AuthConfigError, match="serve.auth.apiKeySecret is 'atoll-api'.*ATOLL_API_KEY is empty"):
        api_key_digest(AuthSpec(api_key_secret="atoll-api"), {})
    with pytest.raises(AuthConfigError, match="required"):
        api_key_digest(AuthSpec(required=True), {"ATOLL_API_KEY": ""})


def test_router_or_expert_settings_in_ensemble_mode_are_an_error_naming_the_fix():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="move the settings to serve.ensemble, or set serve.mode: distributed"):
        ServeSpec.model_validate({"experts": {"numGpus": 1}})
    # a spec dumped with the defaults (every run's job.json) and batch-size-only sections stay valid
    assert ServeSpec.model_validate(ServeSpec().model_dump(by_alias=True)) == ServeSpec()
    ServeSpec.model_validate({"router": {"maxBatchSize": 8, "batchWaitTimeoutS": 0.01}})
    assert ServeSpec.model_validate({"mode": "distributed", "experts": {"numGpus": 1}}).experts.num_gpus == 1
