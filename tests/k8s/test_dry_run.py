"""One source of truth: the CLI's dry-run output is the chart's `helm template` output for the same spec."""
from __future__ import annotations

import json

import pytest
import yaml

import k8s_specs
from atoll.islands.kubernetes import submit_kubernetes
from atoll.k8s.values import chart_values
from k8s_paths import CHART
from k8s_schemas import validate

SPECS = {"one-island": k8s_specs.one_island, "eight-gpu-islands": k8s_specs.eight_gpu_islands,
         "s3-secret": k8s_specs.s3_with_keys}


def no_client(context):
    raise AssertionError("a dry run must not talk to any cluster")


@pytest.mark.parametrize("name", SPECS)
def test_dry_run_equals_helm_template(helm, tmp_path, name):
    job = SPECS[name]()
    secret = "atoll-s3" if name == "s3-secret" else None
    cli = submit_kubernetes(job, contexts=None, dry_run=True, output="yaml", s3_secret=secret,
                            client_factory=no_client)
    chart = helm("template", job.name, str(CHART), "--namespace", "default",
                 values=chart_values(job, s3_secret=secret), tmp=tmp_path)
    assert chart.returncode == 0, chart.stderr
    assert cli == chart.stdout
    docs = [d for d in yaml.safe_load_all(cli) if d]
    assert [p for d in docs for p in validate(d)] == []
    as_json = json.loads(submit_kubernetes(job, contexts=None, dry_run=True, output="json", s3_secret=secret,
                                           client_factory=no_client))
    assert as_json["kind"] == "List" and as_json["items"] == docs


def test_eight_islands_manifests_follow_the_spec():
    job = k8s_specs.eight_gpu_islands()
    docs = [d for d in yaml.safe_load_all(submit_kubernetes(job, dry_run=True, output="yaml")) if d]
    jobs = [d for d in docs if d["kind"] == "RayJob"]
    assert [j["metadata"]["name"] for j in jobs] == [f"k8s-demo-gpu-{i}" for i in range(8)] + ["k8s-demo-router"]
    for i, j in enumerate(jobs[:8]):
        assert j["metadata"]["namespace"] == f"island-{i % 2}"
        assert j["spec"]["entrypoint"] == f"atoll train-expert --spec /etc/atoll/job.yaml --expert {i}"
        group = j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
        assert group["replicas"] == 2          # experts.scaling.numWorkers
        assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4  # 8 / 2
    assert jobs[-1]["metadata"]["namespace"] == "island-1"   # routerIsland gpu-7


def test_s3_keys_never_reach_a_configmap():
    job = k8s_specs.s3_with_keys()
    text = submit_kubernetes(job, dry_run=True, output="yaml", s3_secret="atoll-s3")
    assert "not-for-configmaps" not in text and "AKIA-EXAMPLE" not in text
    assert "secretKeyRef" in text


def test_serving_values_render_a_valid_rayservice(helm, tmp_path):
    job = k8s_specs.serving()
    out = helm("template", job.name, str(CHART), values=chart_values(job, training=False, serving=True), tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayService"]
    assert [p for d in docs for p in validate(d)] == []
    group = docs[1]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (1 + 4 * 1, 1 + 4 * 3)   # one pod per replica


SERVE_SPECS = {
    "k4-autoscaled-experts": k8s_specs.serving,
    "k1": k8s_specs.one_island,
    "monolith": lambda: k8s_specs.job(partition={"k": 3, "fineClusters": 32},
                                      experts={"model": "DiT-XS/2", "mode": "monolith"}),
    "k6-batching-and-prefix": lambda: k8s_specs.job(
        partition={"k": 6, "fineClusters": 32},
        serve={"mode": "distributed", "routePrefix": "/atoll",
               "router": {"numReplicas": "auto", "maxReplicas": 2, "maxBatchSize": 32},
               "experts": {"numReplicas": 2, "numCpus": 0.5, "maxBatchSize": 2}}),
    "k4-ensemble-autoscaled-with-key": k8s_specs.ensemble_serving,
}


@pytest.mark.parametrize("name", SERVE_SPECS)
def test_rayservice_deployments_equal_the_serve_config(helm, tmp_path, name):
    """One source of truth for serving: the chart's serveConfigV2 has the application and deployments
    (names, replicas, autoscaling, actor options) that `atoll serve JOB --config-out` writes for the spec."""
    from ray.serve.schema import ServeDeploySchema

    from atoll.serve.app import serve_config          # what `atoll serve --config-out` writes (imports, never starts, Ray)

    job = SERVE_SPECS[name]()
    expected = serve_config(None, "/etc/atoll/job.yaml", job.spec.serve, job.spec.num_experts)["applications"]
    out = helm("template", job.name, str(CHART), values=chart_values(job, training=False, serving=True), tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    svc = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "RayService")
    assert validate(svc) == []
    config = yaml.safe_load(svc["spec"]["serveConfigV2"])
    ServeDeploySchema.parse_obj(config)                # Ray Serve's own schema of a config file (types, auto)
    rendered = config["applications"]
    assert [a["name"] for a in rendered] == [a["name"] for a in expected]
    for got, want in zip(rendered, expected):
        assert [d["name"] for d in got["deployments"]] == [d["name"] for d in want["deployments"]]
        assert got["deployments"] == want["deployments"]
        assert (got["import_path"], got["route_prefix"]) == (want["import_path"], want["route_prefix"])
        assert got["args"]["spec"] == want["args"]["spec"]
    names = [d["name"] for d in rendered[0]["deployments"]]
    if job.spec.serve.mode == "distributed":
        assert names == ["Router"] + [f"Expert-{k:03d}" for k in range(job.spec.num_experts)]
    else:
        assert names == ["Ensemble"]  # the router and every expert in one deployment


def test_ensemble_serving_renders_one_pod_per_replica_and_the_api_key_from_its_secret(helm, tmp_path):
    job = k8s_specs.ensemble_serving()
    out = helm("template", job.name, str(CHART), values=chart_values(job, training=False, serving=True), tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    svc = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "RayService")
    assert validate(svc) == []
    cluster = svc["spec"]["rayClusterConfig"]
    group = cluster["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (2, 6) and cluster["enableInTreeAutoscaling"] is True
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    for pod in (cluster["headGroupSpec"]["template"], group["template"]):
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["ATOLL_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "atoll-api", "key": "token"}}
