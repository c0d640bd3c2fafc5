"""The kubernetes target's create / watch / retry logic, against the FAKE API in fake_kube.py."""
from __future__ import annotations

import pytest

import k8s_specs
from atoll.islands.k8s_client import KubeClient
from atoll.islands.kubernetes import SUCCEEDED, KubernetesIslands, rayjob_phase, render
from atoll.k8s.errors import IslandsFailed, KubeApiError
from atoll.k8s.manifests import parse, units
from atoll.islands.kubernetes import island_contexts
from fake_kube import FakeCluster
from k8s_schemas import validate


def make_runner(job, clusters: dict, s3_secret=None, **kw):
    """A runner over fake clusters keyed by kube context (None: the current context)."""
    made = []

    def factory(ctx):
        made.append(ctx)
        c = clusters[ctx]
        return KubeClient(c.custom, c.core, ctx)

    reports = []
    runner = KubernetesIslands(job, units(parse(render(job, s3_secret=s3_secret))), contexts=island_contexts(job, kw.pop("contexts", None)),
                               client_factory=factory, on_status=reports.append, poll_s=0.0,
                               sleep=lambda s: None, **kw)
    return runner, reports, made


def created_names(cluster):
    return [b["metadata"]["name"] for b in cluster.created]


def test_all_islands_succeed_then_the_router_runs():
    job = k8s_specs.eight_gpu_islands()        # contexts cluster-0 / cluster-1, routerIsland gpu-7
    clusters = {f"cluster-{i}": FakeCluster(f"cluster-{i}", validator=validate) for i in range(2)}
    runner, reports, made = make_runner(job, clusters)
    status = runner.run()
    assert sorted(made) == ["cluster-0", "cluster-1"]             # one client per context
    assert {k: s.phase for k, s in status.items()} == {**{f"gpu-{i}": SUCCEEDED for i in range(8)},
                                                       "router": SUCCEEDED}
    assert created_names(clusters["cluster-0"]) == [f"k8s-demo-gpu-{i}" for i in (0, 2, 4, 6)]
    assert created_names(clusters["cluster-1"]) == [f"k8s-demo-gpu-{i}" for i in (1, 3, 5, 7)] + ["k8s-demo-router"]
    # the router was created only after every island's RayJob read Complete
    calls = clusters["cluster-1"].calls
    router_at = calls.index(("create", "island-1", "k8s-demo-router"))
    assert all(("create", f"island-{i % 2}", f"k8s-demo-gpu-{i}") in calls[:router_at] for i in (1, 3, 5, 7))
    assert ("k8s-demo-gpu-0" in {n for _, _, n in clusters["cluster-0"].calls})
    assert {("island-0", f"k8s-demo-gpu-{i}-spec") for i in (0, 2, 4, 6)} <= set(clusters["cluster-0"].config_maps)
    phases = [r.phase for r in reports if r.name == "gpu-0"]
    assert phases == ["Pending", "Pending", "Running", "Succeeded"]


def test_a_failed_island_is_retried_alone():
    job = k8s_specs.s3_with_keys()                 # islands a, b; maxRetries 2 (default)
    cluster = FakeCluster(outcomes={"k8s-demo-b": ["fail", "succeed"]}, validator=validate)
    runner, reports, _ = make_runner(job, {None: cluster}, s3_secret="atoll-s3")
    status = runner.run()
    assert status["b"].phase == SUCCEEDED and status["b"].attempt == 2
    assert status["a"].attempt == 1
    assert created_names(cluster) == ["k8s-demo-a", "k8s-demo-b", "k8s-demo-b", "k8s-demo-router"]
    assert [c for c in cluster.calls if c[0] == "delete"] == [("delete", "default", "k8s-demo-b")]
    retry = cluster.created[2]
    assert retry["metadata"]["labels"]["atoll.dev/attempt"] == "2"
    assert "AppFailed" in retry["metadata"]["annotations"]["atoll.dev/previous-failure"]
    assert any(r.name == "b" and r.phase == "Retrying" for r in reports)


def test_retries_exhausted_names_the_island():
    job = k8s_specs.eight_gpu_islands()            # maxRetries 1
    clusters = {f"cluster-{i}": FakeCluster(f"cluster-{i}") for i in range(2)}
    clusters["cluster-1"].outcomes["k8s-demo-gpu-3"] = ["fail", "fail"]
    runner, _, _ = make_runner(job, clusters)
    with pytest.raises(IslandsFailed) as err:
        runner.run()
    assert list(err.value.failures) == ["gpu-3"]
    msg = str(err.value)
    assert "gpu-3" in msg and "AppFailed" in msg and "island-1/k8s-demo-gpu-3" in msg and "cluster-1" in msg
    assert "after 1 retry" in msg
    assert created_names(clusters["cluster-1"]).count("k8s-demo-gpu-3") == 2
    assert "k8s-demo-router" not in created_names(clusters["cluster-1"])        # no router after a failure
    assert all(runner.status[f"gpu-{i}"].phase == SUCCEEDED for i in range(8) if i != 3)  # the others went on


def test_resubmit_adopts_existing_rayjobs():
    job = k8s_specs.one_island()
    cluster = FakeCluster()
    make_runner(job, {None: cluster})[0].run()
    before = len(cluster.created)
    status = make_runner(job, {None: cluster})[0].run()
    assert len(cluster.created) == before             # finished jobs are kept, not recreated
    assert status["solo"].phase == SUCCEEDED and "existing RayJob" in status["solo"].message


def test_contexts_from_the_cli_override_the_spec():
    job = k8s_specs.eight_gpu_islands()
    ctx = island_contexts(job, {"gpu-0": "other"})
    assert ctx["gpu-0"] == "other" and ctx["gpu-1"] == "cluster-1" and ctx["router"] == "cluster-1"
    with pytest.raises(Exception, match="unknown island"):
        island_contexts(job, {"nope": "x"})


def test_api_errors_are_explained():
    from kubernetes.client.exceptions import ApiException

    class Forbidden:
        def create_namespaced_custom_object(self, *a, **kw):
            raise ApiException(status=403, reason="Forbidden", body='{"message": "rayjobs.ray.io is forbidden"}')

    cli = KubeClient(Forbidden(), None, "prod")
    with pytest.raises(KubeApiError, match="context prod.*403.*forbidden.*RBAC"):
        cli.create_rayjob({"metadata": {"name": "x", "namespace": "ns"}})


@pytest.mark.parametrize("status,phase", [
    (None, "Pending"), ({"jobDeploymentStatus": "Initializing"}, "Pending"),
    ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, "Running"),
    ({"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED"}, "Running"),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, "Succeeded"),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, "Failed"),
    ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded"}, "Failed"),
])
def test_rayjob_phase(status, phase):
    assert rayjob_phase({"status": status})[0] == phase
