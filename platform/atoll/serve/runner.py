"""Thin wrapper over ``serve.start`` / ``serve.run`` / ``serve.shutdown`` for a local Atoll app.

HTTP binds to 127.0.0.1 only. A local Ray instance is started with enough logical CPUs for
every replica (``ensure_ray``), so a laptop can serve K experts on fewer cores.
"""
from __future__ import annotations

import math
import os

from atoll.spec.models import DeploymentSpec, ServeSpec

LOOPBACK = "127.0.0.1"


def _replicas(d: DeploymentSpec) -> int:
    return d.min_replicas if d.num_replicas == "auto" else int(d.num_replicas)


def cpus_needed(spec: ServeSpec, num_experts: int) -> int:
    """Logical CPUs the app's initial replicas reserve (+1 for the ingress and the proxy), with the
    sequence-parallel rank actors of every expert replica when ``serve.sequenceParallel > 1``."""
    from atoll.serve.rank_group import DEFAULT_RANK_CPUS as RANK_CPUS

    per_expert = spec.experts.num_cpus + (spec.sequence_parallel * RANK_CPUS if spec.sequence_parallel > 1 else 0)
    total = _replicas(spec.router) * spec.router.num_cpus + num_experts * _replicas(spec.experts) * per_expert
    return math.ceil(total + 1)


def start(app, spec: ServeSpec, num_experts: int, *, name: str = "atoll", port: int | None = None,
          blocking: bool = False) -> str:
    """Starts Ray (if needed) and Serve on 127.0.0.1, deploys ``app``; returns the base URL."""
    from ray import serve

    from atoll.runtime import ensure_ray

    ensure_ray(num_cpus=max(os.cpu_count() or 1, cpus_needed(spec, num_experts)))
    port = spec.port if port is None else port
    serve.start(http_options={"host": LOOPBACK, "port": port})
    prefix = spec.route_prefix if spec.route_prefix.startswith("/") else "/" + spec.route_prefix
    url = f"http://{LOOPBACK}:{port}{prefix.rstrip('/')}"
    serve.run(app, name=name, route_prefix=prefix, blocking=blocking)
    return url


def shutdown() -> None:
    from ray import serve

    serve.shutdown()
