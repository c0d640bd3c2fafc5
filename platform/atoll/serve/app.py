"""The Serve application: ``build_app(job | run_uri) -> Application``.

Graphs (``.bind()``), by ``serve.mode``::

    ensemble (default)   Ingress (FastAPI) --1 call per request--> Ensemble (router + all K experts,
                                                                   continuous batching in-process)
    distributed          Ingress --1 call per request--> Router (scheduler + router)
                                                           --1 call per tick--> Expert-000, Expert-001, ...

Every deployment gets its replicas / autoscaling / resources / rows per tick from ``spec.serve``
(``ensemble``, ``router``, ``experts``). Video runs with ``serve.sequenceParallel: N > 1``: each
expert is a group of N rank actors (``rank_group.py``) owned by the replica that computes it; GPUs,
when ``numGpus > 0``, go to the ranks, one each, not to the replica.
``app_builder(args)`` is the same builder for ``serve run`` / ``serve deploy`` / KubeRay RayService
(``import_path: atoll.serve.app:app_builder``, ``args: {run_uri, spec}``); ``serve_config``
writes that config file.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from atoll.serve.ingress import IngressOptions
from atoll.serve.rank_group import DEFAULT_RANK_CPUS
from atoll.serve.runinfo import RunSource, deployment_name, expert_heads, run_facts
from atoll.serve.schema import Limits
from atoll.spec.models import DeploymentSpec, ServeSpec

ENSEMBLE_NAME = "Ensemble"
ROUTER_NAME = "Router"
#: logical CPUs of each sequence-parallel rank actor (a GPU rank gets 1 GPU besides)
RANK_CPUS = DEFAULT_RANK_CPUS
INGRESS_NAME = "Ingress"
#: Serve's health check of a model replica: a tick or a rank-group restart must fit in it on a slow machine
HEALTH_CHECK = {"health_check_period_s": 10.0, "health_check_timeout_s": 60.0}


def deployment_options(d: DeploymentSpec, sequence_parallel: int = 1) -> dict:
    """``.options(...)`` of a model deployment from its spec (``num_replicas: auto`` -> autoscaling on
    ongoing requests).

    ``sequence_parallel > 1``: the replica's rank actors take the GPUs, the replica asks for none.
    """
    gpus = 0.0 if sequence_parallel > 1 else d.num_gpus
    opts: dict[str, Any] = {"ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": gpus},
                            "max_ongoing_requests": max(4 * d.max_batch_size, 16)}
    if d.num_replicas == "auto" and d.scale_on == "rows":  # experts of distributed mode (serve/autoscale.py)
        from atoll.serve.autoscale import autoscaling_config

        opts["autoscaling_config"] = autoscaling_config(d.min_replicas, d.max_replicas, d.target_rows_per_s,
                                                        d.idle_s, d.upscale_delay_s)
    elif d.num_replicas == "auto":
        opts["autoscaling_config"] = {"min_replicas": d.min_replicas, "max_replicas": d.max_replicas,
                                      "target_ongoing_requests": max(2, d.max_batch_size)}
    else:
        opts["num_replicas"] = d.num_replicas
    return opts


def model_deployments(spec: ServeSpec, num_experts: int, sequence_parallel: int = 1) -> list[tuple[str, dict]]:
    """``(name, options)`` of the app's model deployments in ``spec.serve.mode``, scheduler first."""
    if spec.mode == "ensemble":
        return [(ENSEMBLE_NAME, deployment_options(spec.ensemble, sequence_parallel))]
    return [(ROUTER_NAME, deployment_options(spec.router))] + [
        (deployment_name(k), deployment_options(spec.experts, sequence_parallel)) for k in range(num_experts)]


def resolve_target(target: Any, serve_spec: ServeSpec | None = None, s3=None) -> tuple[RunSource, ServeSpec]:
    """A ``JobSpec``, a job YAML path, or a run URI -> ``(RunSource, ServeSpec)``.

    A bare run URI uses the ``serve`` section of the run's own ``job.json`` when it has one.
    """
    from atoll.pipeline import open_run, s3_config
    from atoll.spec import load
    from atoll.spec.models import JobSpec

    if isinstance(target, (str, Path)) and str(target).endswith((".yaml", ".yml")) and Path(target).is_file():
        target = load(target)
    if isinstance(target, JobSpec):
        cfg = s3 or s3_config(target)
        return RunSource(open_run(target).uri, cfg), serve_spec or target.spec.serve
    source = RunSource(str(target), s3)
    if serve_spec is None:
        store = source.open()
        doc = (store.get_json("job.json") if store.exists("job.json") else {}).get("spec", {})
        body = (doc.get("spec") or {}).get("serve")
        serve_spec = ServeSpec.model_validate(body) if body else ServeSpec()
    return source, serve_spec


def build_app(target: Any, *, serve_spec: ServeSpec | None = None, s3=None,
              options: IngressOptions | None = None, environ: dict | None = None):
    """The Serve ``Application`` for a trained run (``target``: JobSpec, job YAML or run URI).

    Reads only small JSON files from the store here (``RunNotFound`` if the run is incomplete);
    the replicas load the weights. ``environ`` (default ``os.environ``) holds the API key, if any.
    """
    from ray import serve

    from atoll.serve.auth import api_key_digest
    from atoll.serve.deployments import EnsembleReplica, ExpertModel, ReplicaOptions
    from atoll.serve.ingress import make_ingress

    source, spec = resolve_target(target, serve_spec, s3)
    store = source.open()
    facts = run_facts(store)
    K = facts.num_experts
    sp = sequence_parallel_degree(spec, facts.is_video, expert_heads(store, 0))
    opts = options or IngressOptions()
    rank_gpus = 1.0 if (spec.ensemble if spec.mode == "ensemble" else spec.experts).num_gpus > 0 else 0.0
    (name, dopts), *expert_deps = model_deployments(spec, K, sp)
    sched = spec.ensemble if spec.mode == "ensemble" else spec.router
    cold = spec.mode == "distributed" and spec.experts.num_replicas == "auto" and spec.experts.min_replicas == 0
    if cold:  # experts may scale to zero: the ingress and the scheduler wait for a cold start, not reroute
        opts = replace(opts, experts_scale_to_zero=True)
    replica = ReplicaOptions(mode=spec.mode, max_rows=sched.max_batch_size, on_expert_failure=spec.on_expert_failure,
                             num_gpus=dopts["ray_actor_options"]["num_gpus"], sequence_parallel=sp,
                             attention=spec.attention if sp > 1 else "ulysses",
                             ring_degree=spec.ring_degree if sp > 1 else None,
                             rank_cpus=RANK_CPUS, rank_gpus=rank_gpus, expert_timeout_s=opts.expert_timeout_s,
                             retry_after_s=opts.retry_after_s, health_poll_s=opts.health_poll_s,
                             app_name=opts.app_name, cold_start_s=opts.cold_start_timeout_s if cold else 0.0,
                             registry_poll_s=spec.registry_poll_s)
    experts = None
    if spec.mode == "distributed":
        experts = [serve.deployment(ExpertModel, name=n, **o, **HEALTH_CHECK).bind(
            source, k, spec.experts.num_gpus, sp, RANK_CPUS, rank_gpus, spec.attention if sp > 1 else "ulysses",
            spec.ring_degree if sp > 1 else None) for k, (n, o) in enumerate(expert_deps)]
    backend = serve.deployment(EnsembleReplica, name=name, **dopts, **HEALTH_CHECK).bind(source, replica, experts)
    ingress = serve.deployment(make_ingress(api_key_digest(spec.auth, environ)), name=INGRESS_NAME,
                               max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0.1})
    limits = Limits(spec.max_samples, spec.max_steps, min(spec.default_steps, spec.max_steps))
    models = ("atoll", store.uri.rstrip("/").rsplit("/", 1)[-1])
    return ingress.bind(source, backend, limits, opts, sp, spec.mode, name, models)


def sequence_parallel_degree(spec: ServeSpec, is_video: bool, num_heads: int) -> int:
    """``serve.sequenceParallel`` checked against the run: video experts only, and it must divide the heads
    (``ParallelConfigError`` / ``ValueError`` naming the field, before any replica starts)."""
    n = int(spec.sequence_parallel)
    if n > 1 and not is_video:
        raise ValueError(f"serve.sequenceParallel = {n} is for video runs (VDiT experts); this run generates "
                         "images on one rank per replica: set serve.sequenceParallel: 1")
    if n > 1:
        from atoll.serve.rank_group import check_degree

        check_degree(num_heads, n, spec.attention, spec.ring_degree)
    return n


def app_builder(args: dict) -> Any:
    """Entry point for ``serve run atoll.serve.app:app_builder run_uri=... spec=...`` and Serve config files.

    ``args``: ``run_uri`` (the run to serve) and/or ``spec`` (a job YAML: its ``serve`` section and,
    without ``run_uri``, its run). One of them is required.
    """
    from atoll.spec import load

    args = dict(args or {})
    unknown = sorted(set(args) - {"run_uri", "spec"})
    if unknown:
        raise ValueError(f"app_builder got unknown args {unknown}; it takes run_uri and spec")
    run_uri, spec_path = args.get("run_uri"), args.get("spec")
    if not run_uri and not spec_path:
        raise ValueError("app_builder needs args.run_uri (the run to serve) or args.spec (a job YAML)")
    if spec_path and not run_uri:
        return build_app(str(spec_path))
    if spec_path:
        from atoll.pipeline import s3_config

        job = load(spec_path)
        return build_app(str(run_uri), serve_spec=job.spec.serve, s3=s3_config(job))
    return build_app(str(run_uri))


def serve_config(run_uri: str | None, spec_path: str | None, spec: ServeSpec, num_experts: int,
                 name: str = "atoll", video: bool = False) -> dict:
    """A Serve config file (``serve deploy`` / RayService ``serveConfigV2``) for this app."""
    sp = spec.sequence_parallel if video else 1
    deps = [dict(name=n, **_config_options(o)) for n, o in model_deployments(spec, num_experts, sp)]
    args = {k: v for k, v in {"run_uri": run_uri, "spec": spec_path}.items() if v}
    return {"http_options": {"host": spec.host, "port": spec.port},
            "applications": [{"name": name, "import_path": "atoll.serve.app:app_builder",
                              "route_prefix": spec.route_prefix, "args": args, "deployments": deps}]}


def _config_options(opts: dict) -> dict:
    out = dict(opts)
    if "autoscaling_config" in out:
        out["num_replicas"] = "auto"
    return out
