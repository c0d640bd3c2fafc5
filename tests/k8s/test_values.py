"""Job spec -> chart values: expert assignment and the errors that name the fix."""
from __future__ import annotations

import pytest

import k8s_specs
from atoll.k8s.errors import HelmError, KubernetesError
from atoll.k8s.values import assign_experts, chart_values

ISL = {"target": "kubernetes"}


def test_experts_dealt_round_robin_to_islands_without_a_list():
    job = k8s_specs.job(partition={"k": 5, "fineClusters": 16},
                        islands={**ISL, "islands": [{"name": "a", "experts": [4]}, {"name": "b"}, {"name": "c"}]})
    assert [(i.name, i.experts) for i in assign_experts(job)] == [("a", (4,)), ("b", (0, 2)), ("c", (1, 3))]


def test_no_islands_means_one_per_expert():
    job = k8s_specs.job(partition={"k": 3, "fineClusters": 16}, islands=ISL)
    assert [i.name for i in assign_experts(job)] == ["expert-0", "expert-1", "expert-2"]


@pytest.mark.parametrize("islands,message", [
    ([{"name": "a", "experts": [0, 1]}, {"name": "b", "experts": [1]}], "expert 1 is listed by islands 'a' and 'b'"),
    ([{"name": "a", "experts": [0]}], "experts [1] are on no island"),
    ([{"name": "a", "experts": [0, 1]}, {"name": "b"}], "island 'b' has no expert to train"),
    ([{"name": "router"}, {"name": "b"}], "island name 'router' is reserved"),
    ([{"name": "an-island-with-a-really-rather-long-name-x"}, {"name": "b"}], "KubeRay allows at most 47"),
    ([{"name": "a", "numGpus": 2}, {"name": "b"}], "useGpu is false"),
])
def test_bad_island_layouts(islands, message):
    job = k8s_specs.job(partition={"k": 2, "fineClusters": 16}, islands={**ISL, "islands": islands})
    with pytest.raises(KubernetesError, match=message.replace("[", r"\[").replace("]", r"\]")):
        chart_values(job)


def test_store_must_be_reachable_from_pods():
    job = k8s_specs.job(store={"uri": "/tmp/runs"})
    with pytest.raises(KubernetesError, match="s3://BUCKET/PREFIX"):
        chart_values(job)


def test_inline_s3_keys_need_a_secret():
    with pytest.raises(KubernetesError, match="kubectl create secret generic atoll-s3"):
        chart_values(k8s_specs.s3_with_keys())
    values = chart_values(k8s_specs.s3_with_keys(), s3_secret="atoll-s3")
    assert values["jobSpec"]["spec"]["store"]["s3"]["secretAccessKey"] is None
    assert values["store"]["credentials"] == {"secretName": "atoll-s3"}


def test_gpus_must_split_over_workers():
    job = k8s_specs.job(experts={"scaling": {"numWorkers": 2, "useGpu": True}, "training": {"batchSize": 64}},
                        islands={**ISL, "islands": [{"name": "a", "numGpus": 3}]})
    with pytest.raises(KubernetesError, match=r"numGpus \(3\) must be a multiple"):
        chart_values(job)


def test_image_split():
    assert chart_values(k8s_specs.one_island(), image="reg:5000/atoll:1.2")["image"] == \
        {"repository": "reg:5000/atoll", "tag": "1.2"}
    assert chart_values(k8s_specs.one_island(), image="reg:5000/atoll")["image"] == \
        {"repository": "reg:5000/atoll", "tag": "latest"}


def test_missing_helm_names_the_install_command(monkeypatch, tmp_path):
    from atoll.k8s import helm

    monkeypatch.setenv("ATOLL_HELM", str(tmp_path / "nope"))
    with pytest.raises(HelmError, match="scripts/install_helm.sh"):
        helm.find_helm()
