"""Job specs for the kubernetes tests (built in code, validated by atoll.spec)."""
from __future__ import annotations

import copy

from atoll.spec import JobSpec, parse

BASE = {
    "apiVersion": "atoll/v1", "kind": "Job", "metadata": {"name": "k8s-demo"},
    "spec": {
        "store": {"uri": "s3://atoll-runs/prod", "s3": {"endpointUrl": "http://minio.storage:9000",
                                                       "region": "us-east-1"}},
        "data": {"source": {"type": "digits"}},
        "partition": {"k": 1, "fineClusters": 16},
        "experts": {"model": "DiT-XS/2"},
        "islands": {"target": "kubernetes", "islands": [{"name": "solo"}]},
    },
}


def job(**over) -> JobSpec:
    """BASE with top-level spec sections replaced by ``over`` (e.g. islands={...})."""
    doc = copy.deepcopy(BASE)
    for key, val in over.items():
        if key == "name":
            doc["metadata"]["name"] = val
        else:
            doc["spec"][key] = val
    return parse(doc)


def one_island() -> JobSpec:
    return job()


def eight_gpu_islands() -> JobSpec:
    return job(partition={"k": 8, "fineClusters": 64},
               experts={"model": "DiT-XS/2", "scaling": {"numWorkers": 2, "useGpu": True, "gpusPerWorker": 1},
                        "training": {"batchSize": 64}},
               router={"scaling": {"numWorkers": 1, "useGpu": True, "gpusPerWorker": 1}},
               islands={"target": "kubernetes", "maxRetries": 1, "routerIsland": "gpu-7",
                        "islands": [{"name": f"gpu-{i}", "numGpus": 8, "namespace": f"island-{i % 2}",
                                     "context": f"cluster-{i % 2}"} for i in range(8)]})


def s3_with_keys() -> JobSpec:
    return job(store={"uri": "s3://atoll-runs/secret", "s3": {"endpointUrl": "https://s3.example.com",
                                                             "region": "eu-west-1", "accessKeyId": "AKIA-EXAMPLE",
                                                             "secretAccessKey": "not-for-configmaps"}},
               partition={"k": 4, "fineClusters": 32},
               islands={"target": "kubernetes", "islands": [{"name": "a", "experts": [0, 3]}, {"name": "b"}]})


def serving() -> JobSpec:
    """Distributed serving: a router (scheduler) replica and autoscaled per-expert deployments."""
    return job(partition={"k": 4, "fineClusters": 32},
               serve={"mode": "distributed", "router": {"numGpus": 0.25},
                      "experts": {"numReplicas": "auto", "minReplicas": 1, "maxReplicas": 3, "numGpus": 1}})


def ensemble_serving() -> JobSpec:
    """The default serving: autoscaled ensemble replicas (router + all experts on one GPU each), with an API key."""
    return job(partition={"k": 4, "fineClusters": 32},
               serve={"ensemble": {"numReplicas": "auto", "minReplicas": 2, "maxReplicas": 6, "numGpus": 1},
                      "auth": {"apiKeySecret": "atoll-api", "apiKeySecretKey": "token"}})
