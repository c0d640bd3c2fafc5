"""The chart with the real helm: lint, render value sets, validate against KubeRay CRDs and k8s 1.35."""
from __future__ import annotations

import pytest
import yaml

from k8s_paths import CHART
from k8s_schemas import validate

CI = CHART / "ci"
VALUE_SETS = ["one-island", "eight-gpu-islands", "s3-secret", "serving-only"]


def render(helm, values_file) -> list[dict]:
    out = helm("template", "rel", str(CHART), "-f", str(values_file))
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def env_of(obj: dict) -> dict:
    spec = obj["spec"].get("rayClusterSpec") or obj["spec"]["rayClusterConfig"]
    return {e["name"]: e for e in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}


def workers_of(obj: dict) -> dict:
    spec = obj["spec"].get("rayClusterSpec") or obj["spec"]["rayClusterConfig"]
    return spec["workerGroupSpecs"][0]


def test_lint_default_values(helm):
    out = helm("lint", "--strict", str(CHART))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_value_set_lints_and_validates(helm, name):
    values = CI / f"{name}-values.yaml"
    lint = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(helm, values)
    assert docs
    problems = [p for d in docs for p in validate(d)]
    assert problems == []


def test_one_island(helm):
    docs = render(helm, CI / "one-island-values.yaml")
    jobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "RayJob"}
    assert list(jobs) == ["fmnist-k1-solo", "fmnist-k1-router"]
    spec = jobs["fmnist-k1-solo"]["spec"]
    assert spec["entrypoint"] == "atoll train-expert --spec /etc/atoll/job.yaml --expert 0"
    assert jobs["fmnist-k1-router"]["spec"]["entrypoint"] == "atoll train-router --spec /etc/atoll/job.yaml"
    assert (spec["shutdownAfterJobFinishes"], spec["backoffLimit"], spec["ttlSecondsAfterFinished"]) == (True, 0, 600)
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    assert yaml.safe_load(cms["fmnist-k1-solo-spec"]["data"]["job.yaml"])["metadata"]["name"] == "fmnist-k1"
    pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert pod["volumes"][0]["configMap"]["name"] == "fmnist-k1-solo-spec"
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/etc/atoll"
    assert env_of(jobs["fmnist-k1-solo"])["ATOLL_STORE"]["value"] == "s3://atoll-runs/ci"
    assert "AWS_ACCESS_KEY_ID" not in env_of(jobs["fmnist-k1-solo"])


def test_eight_gpu_islands(helm):
    docs = render(helm, CI / "eight-gpu-islands-values.yaml")
    islands = [d for d in docs if d["kind"] == "RayJob" and d["metadata"]["labels"]["atoll.dev/role"] == "island"]
    assert len(islands) == 8
    for job in islands:
        group = workers_of(job)
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
        assert container["image"] == "registry.example.com/atoll:0.1.0-cuda12"
        assert group["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert job["spec"]["activeDeadlineSeconds"] == 172800
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    by_ns = {d["metadata"]["namespace"] for d in islands}
    assert by_ns == {"island-a", "island-b"}
    last = islands[-1]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert last["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}


def test_s3_credentials_come_from_the_secret(helm):
    docs = render(helm, CI / "s3-secret-values.yaml")
    for job in (d for d in docs if d["kind"] == "RayJob"):
        env = env_of(job)
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"
        assert env["AWS_DEFAULT_REGION"]["value"] == "us-east-1"
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "atoll-s3", "key": "access-key"}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "atoll-s3", "key": "secret-key"}
        container = workers_of(job)["template"]["spec"]["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": "hf-token"}}]


def test_serving_only(helm):
    docs = render(helm, CI / "serving-only-values.yaml")
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayService"]
    svc = docs[1]
    config = yaml.safe_load(svc["spec"]["serveConfigV2"])
    app = config["applications"][0]
    assert app["import_path"] == "atoll.serve.app:app_builder"
    assert app["args"] == {"run_uri": "s3://atoll-runs/prod/fmnist-k4", "spec": "/etc/atoll/job.yaml"}
    assert [d["name"] for d in app["deployments"]] == ["Router", "Expert-000", "Expert-001", "Expert-002",
                                                        "Expert-003"]
    deps = {d["name"]: d for d in app["deployments"]}
    assert deps["Router"]["num_replicas"] == 1 and deps["Router"]["ray_actor_options"]["num_gpus"] == 0.25
    for name in ("Expert-000", "Expert-001", "Expert-003"):
        assert deps[name]["num_replicas"] == "auto"
        assert deps[name]["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 8}
        assert deps[name]["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1}
    # the per-expert override of expert 2: fixed replicas, more CPUs, the shared GPUs
    assert deps["Expert-002"]["num_replicas"] == 2 and "autoscaling_config" not in deps["Expert-002"]
    assert deps["Expert-002"]["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}
    assert svc["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    group = workers_of(svc)
    assert (group["minReplicas"], group["maxReplicas"]) == (5, 13)


BAD = [
    (["--set", "training.isands[0].name=a"], "additional properties 'isands' not allowed"),
    (["--set", "imagee.tag=x"], "additional properties 'imagee' not allowed"),
    (["--set", "training.islands[0].name=a,training.islands[0].experts[0]=0,training.islands[0].gpus=-2"],
     "/training/islands/0/gpus"),
    (["--set", "serve.gpus=-1"], "/serve/gpus"),
    (["--set", "serve.enabled=true,serve.mode=distributed,store.uri=s3://b,jobSpec.a=1"],
     "serve.numExperts is required"),
    (["--set", "serve.enabled=true,serve.mode=distributed,store.uri=s3://b,jobSpec.a=1,serve.numExperts=2,"
      "serve.experts.overrides.2.numReplicas=3"], "serve.experts.overrides has expert 2, but serve.numExperts is 2"),
    (["--set", "serve.mode=fast"], "/serve/mode"),
    (["--set", "serve.auth.apiKeySecret=Not_A_Name"], "/serve/auth/apiKeySecret"),
    (["--set", "serve.auth.apiKey=plaintext"], "additional properties 'apiKey' not allowed"),
    (["--set", "serve.experts.overrides.first.numReplicas=3"], "does not match pattern"),
    (["--set", "serve.experts.overrides.0.deploymentNameFormat=x"], "additional properties 'deploymentNameFormat'"),
    (["--set", "serve.experts.deploymentName=Expert"], "additional properties 'deploymentName' not allowed"),
    (["--set", "training.islands[0].name=a"], "missing property 'experts'"),
    (["--set", "training.islands[0].name=Bad_Name,training.islands[0].experts[0]=0"], "/training/islands/0/name"),
    (["--set", "store.uri=s3://b,jobSpec.a=1,training.islands[0].name=router,training.islands[0].experts[0]=0"],
     '"router" is reserved'),
    (["--set", "store.uri=s3://b,jobSpec.a=1,run=a-very-long-run-name-for-kuberay-limits,"
      "training.islands[0].name=and-a-long-island,training.islands[0].experts[0]=0"], "at most 47 for a RayJob"),
    (["--set", "jobSpec.a=1,training.islands[0].name=a,training.islands[0].experts[0]=0"], "store.uri is required"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_bad_values_fail_with_a_clear_message(helm, args, message):
    out = helm("template", "rel", str(CHART), *args)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_bad_values_fail_lint(helm):
    out = helm("lint", str(CHART), "--set", "serve.experts.numGpus=-1")
    assert out.returncode != 0
    assert "/serve/experts/numGpus" in out.stdout + out.stderr


def test_readme_lists_every_value():
    """The README's values table matches values.yaml: every leaf key is listed, with a `# --` comment."""
    text = (CHART / "values.yaml").read_text()
    readme = (CHART / "README.md").read_text()

    def leaves(d, prefix=""):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v and key not in ("headResources", "training.workerResources"):
                yield from leaves(v, key + ".")
            else:
                yield key

    keys = list(leaves(yaml.safe_load(text)))
    missing = [k for k in keys if f"`{k}`" not in readme]
    assert missing == [], f"helm/atoll/README.md does not list: {missing}"
    assert text.count("# --") == len(keys), "every value in values.yaml needs one `# --` comment"
