"""Job spec -> values of the Helm chart ``helm/atoll``.

The chart is the one source of the Kubernetes manifests: ``helm install`` renders
it with values a person writes, ``atoll submit --target kubernetes`` renders it
(``helm template``) with the values this module computes from a job spec. Pure:
no I/O, the caller's objects are never changed.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from atoll.k8s.errors import KubernetesError
from atoll.spec import JobSpec, dump
from atoll.spec.models import DeploymentSpec, ScalingSpec

#: KubeRay's RayJob/RayService name limit (RayCluster 53 minus the 6-character suffix it appends)
MAX_OBJECT_NAME = 47
RESERVED_ISLAND_NAMES = ("router", "serve")


@dataclass(frozen=True)
class Island:
    """One island as the kubernetes target runs it: a RayJob training ``experts`` in order."""
    name: str
    experts: tuple[int, ...]
    namespace: str
    context: str | None
    num_gpus: int


def assign_experts(job: JobSpec) -> list[Island]:
    """Which experts each island trains.

    Islands that list ``experts`` keep them; the other experts are dealt round-robin
    to the islands that list none. No islands in the spec: one island per expert,
    named ``expert-K``. Raises ``KubernetesError`` for an expert trained twice or
    never, or an island left with nothing to train.
    """
    k = job.spec.num_experts
    specs = job.spec.islands.islands
    if not specs:
        return [Island(f"expert-{e}", (e,), "default", None, 0) for e in range(k)]
    owner: dict[int, str] = {}
    for isl in specs:
        for e in isl.experts or []:
            if e in owner:
                raise KubernetesError(f"expert {e} is listed by islands {owner[e]!r} and {isl.name!r}; "
                                      f"list each expert on one island only")
            owner[e] = isl.name
    free = [e for e in range(k) if e not in owner]
    open_islands = [isl.name for isl in specs if isl.experts is None]
    if free and not open_islands:
        raise KubernetesError(f"experts {free} are on no island; list them under an island's experts "
                              f"or add an island without an experts list")
    dealt: dict[str, list[int]] = {n: [] for n in open_islands}
    for i, e in enumerate(free):
        dealt[open_islands[i % len(open_islands)]].append(e)
    out = []
    for isl in specs:
        experts = tuple(isl.experts) if isl.experts is not None else tuple(dealt[isl.name])
        if not experts:
            raise KubernetesError(f"island {isl.name!r} has no expert to train ({k} experts for {len(specs)} "
                                  f"islands); remove the island or give it experts")
        out.append(Island(isl.name, experts, isl.namespace, isl.context, isl.num_gpus))
    return out


def router_island(job: JobSpec, islands: list[Island]) -> Island:
    """The island whose namespace/context hosts the router job: ``routerIsland``, else the first."""
    name = job.spec.islands.router_island
    return next((i for i in islands if i.name == name), islands[0])


def _worker_gpus(scaling: ScalingSpec, island_gpus: int, where: str) -> int:
    workers = scaling.num_workers
    if island_gpus:
        if not scaling.use_gpu:
            raise KubernetesError(f"{where} has numGpus {island_gpus} but experts.scaling.useGpu is false; "
                                  f"set useGpu: true (or numGpus: 0)")
        if island_gpus % workers:
            raise KubernetesError(f"{where}: numGpus ({island_gpus}) must be a multiple of scaling.numWorkers "
                                  f"({workers}): there is one worker pod per Ray Train worker")
        return island_gpus // workers
    return max(1, math.ceil(scaling.gpus_per_worker)) if scaling.use_gpu else 0


def _check_names(run: str, islands: list[Island]) -> None:
    if not run[0].isalpha():
        raise KubernetesError(f"metadata.name {run!r} must start with a letter on Kubernetes "
                              f"(KubeRay names are DNS-1035 labels); e.g. 'run-{run}'")
    for suffix in [i.name for i in islands] + list(RESERVED_ISLAND_NAMES):
        name = f"{run}-{suffix}"
        if len(name) > MAX_OBJECT_NAME:
            raise KubernetesError(f"object name {name!r} has {len(name)} characters; KubeRay allows at most "
                                  f"{MAX_OBJECT_NAME}: shorten metadata.name or the island name")
    for i in islands:
        if i.name in RESERVED_ISLAND_NAMES:
            raise KubernetesError(f"island name {i.name!r} is reserved (it names the {i.name} objects); rename it")


def _deployment(d: DeploymentSpec) -> dict:
    """Chart values of a Serve deployment (``serve.router`` / ``serve.experts``) from ``spec.serve``.

    ``maxOngoingRequests`` / ``targetOngoingRequests`` follow ``atoll.serve.app.deployment_options``
    (not imported: it imports Ray); tests/k8s checks the rendered Serve config equals ``serve_config``'s.
    The deployment names are the chart's defaults (``Router``, ``Expert-%03d``), checked the same way.
    """
    return {"numReplicas": d.num_replicas, "minReplicas": d.min_replicas, "maxReplicas": d.max_replicas,
            "numCpus": d.num_cpus, "numGpus": d.num_gpus,
            "maxOngoingRequests": max(4 * d.max_batch_size, 16),
            "targetOngoingRequests": max(2, d.max_batch_size)}


def _serve_pods(job: JobSpec) -> tuple[int, int, int]:
    """(workers, maxWorkers, gpus per worker): one worker pod per model replica (ensemble replicas in
    ``serve.mode: ensemble``; router + expert replicas in ``distributed``)."""
    s, k = job.spec.serve, job.spec.num_experts

    def bounds(d: DeploymentSpec) -> tuple[int, int]:
        return (d.min_replicas, d.max_replicas) if d.num_replicas == "auto" else (d.num_replicas, d.num_replicas)

    if s.mode == "ensemble":
        lo, hi = bounds(s.ensemble)
        workers = max(1, lo)
        return workers, max(workers, hi), math.ceil(s.ensemble.num_gpus)
    (r_min, r_max), (e_min, e_max) = bounds(s.router), bounds(s.experts)
    workers = max(1, r_min + k * e_min)
    gpus = math.ceil(max(s.router.num_gpus, s.experts.num_gpus))
    return workers, max(workers, r_max + k * e_max), gpus


def _job_spec_for_pods(job: JobSpec, s3_secret: str | None) -> dict:
    doc = dump(job)
    s3 = doc["spec"]["store"]["s3"]
    if (s3.get("accessKeyId") or s3.get("secretAccessKey")) and not s3_secret:
        raise KubernetesError(
            "spec.store.s3 holds access keys, which must not go into a ConfigMap: create a Secret "
            "(kubectl create secret generic atoll-s3 --from-literal=AWS_ACCESS_KEY_ID=... "
            "--from-literal=AWS_SECRET_ACCESS_KEY=...) in each island's namespace and pass its name "
            "(s3_secret='atoll-s3'); the pods then read the keys from it")
    s3["accessKeyId"] = s3["secretAccessKey"] = None
    return doc


def _split_image(image: str) -> dict:
    repo, _, tag = image.rpartition(":")
    if not repo or "/" in tag:          # no tag, or the ':' was a registry port
        return {"repository": image, "tag": "latest"}
    return {"repository": repo, "tag": tag}


def chart_values(job: JobSpec, *, image: str | None = None, s3_secret: str | None = None,
                 training: bool = True, serving: bool = False) -> dict:
    """The chart values that make ``helm template`` render ``job``'s objects.

    ``training``: the islands' and the router's RayJobs; ``serving``: the RayService.
    ``image``: ``repository:tag`` of the Atoll image (default: the chart's).
    ``s3_secret``: an existing Secret with ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``.
    """
    store = job.spec.store
    if not (store.uri or "").startswith("s3://"):
        raise KubernetesError(f"the kubernetes target needs a store the pods can reach; spec.store.uri is "
                              f"{store.uri!r}: set it to s3://BUCKET/PREFIX (and store.s3.endpointUrl for "
                              f"a non-AWS server)")
    islands = assign_experts(job)
    _check_names(job.name, islands)
    experts_scaling, router_scaling = job.spec.experts.scaling, job.spec.router.scaling
    values: dict = {
        "run": job.name,
        "managedBy": "atoll",
        "jobSpec": _job_spec_for_pods(job, s3_secret),
        "store": {"uri": store.uri,
                  "s3": {"endpointUrl": store.s3.endpoint_url or "", "region": store.s3.region or ""},
                  "credentials": {"secretName": s3_secret or ""}},
        "training": {"enabled": training,
                     "islands": [{"name": i.name, "experts": list(i.experts), "namespace": i.namespace,
                                  "workers": experts_scaling.num_workers,
                                  "gpus": _worker_gpus(experts_scaling, i.num_gpus, f"island {i.name!r}")}
                                 for i in islands],
                     "router": {"enabled": training,
                                "namespace": router_island(job, islands).namespace,
                                "workers": router_scaling.num_workers,
                                "gpus": _worker_gpus(router_scaling, 0, "router")}},
        "serve": {"enabled": serving},
    }
    if image:
        values["image"] = _split_image(image)
    if serving:
        workers, max_workers, gpus = _serve_pods(job)
        sv = job.spec.serve
        values["serve"].update({"workers": workers, "maxWorkers": max_workers, "gpus": gpus,
                                "routePrefix": sv.route_prefix, "mode": sv.mode,
                                "numExperts": job.spec.num_experts,
                                "auth": {"apiKeySecret": sv.auth.api_key_secret or "",
                                         "apiKeySecretKey": sv.auth.api_key_secret_key,
                                         "apiKeyEnv": sv.auth.api_key_env},
                                "ensemble": _deployment(sv.ensemble),
                                "router": _deployment(sv.router),
                                "experts": _deployment(sv.experts)})
    return values


def merge_values(base: dict, override: dict | None) -> dict:
    """``base`` with ``override`` merged in (mappings deeply, everything else replaced); new dict."""
    out = copy.deepcopy(base)
    for key, val in (override or {}).items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out
