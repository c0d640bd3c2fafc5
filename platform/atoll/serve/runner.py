"""Thin wrapper over ``serve.start`` / ``serve.run`` / ``serve.shutdown`` for a local Atoll app.

HTTP binds to 127.0.0.1 only. A local Ray instance is started with enough logical CPUs for
every replica (``ensure_ray``), so a laptop can serve K experts on fewer cores.

Start-up tolerates a slow, busy machine: Serve's controller gets proxy readiness / health-check
timeouts that fit one (``SLOW_MACHINE_ENV``; Serve's 5 s readiness check killed the proxy three
times on a loaded 2-core machine), a failed ``serve.start`` is retried, the deployment is
watched with a progress line per change (replicas running / starting), and every failure ends in
``ServeStartError`` with what went wrong and what to do, never a Ray traceback.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

from atoll.spec.models import DeploymentSpec, ServeSpec

LOOPBACK = "127.0.0.1"
#: the Serve controller's proxy checks, sized for a loaded machine (Serve's defaults: 5 s / 10 s)
SLOW_MACHINE_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
                    "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "10"}


class ServeStartError(RuntimeError):
    """The app could not be started (the message says why and what to do)."""


def _replicas(d: DeploymentSpec) -> int:
    return d.min_replicas if d.num_replicas == "auto" else int(d.num_replicas)


def cpus_needed(spec: ServeSpec, num_experts: int) -> int:
    """Logical CPUs the app's initial replicas reserve (+1 for the ingress and the proxy), with the
    sequence-parallel rank actors of every expert when ``serve.sequenceParallel > 1``."""
    from atoll.serve.rank_group import DEFAULT_RANK_CPUS as RANK_CPUS

    ranks = spec.sequence_parallel * RANK_CPUS if spec.sequence_parallel > 1 else 0.0
    if spec.mode == "ensemble":
        total = _replicas(spec.ensemble) * (spec.ensemble.num_cpus + num_experts * ranks)
    else:
        total = (_replicas(spec.router) * spec.router.num_cpus
                 + num_experts * _replicas(spec.experts) * (spec.experts.num_cpus + ranks))
    return math.ceil(total + 1)


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _start_serve(port: int, attempts: int, progress: Callable[[str], None]) -> None:
    from ray import serve

    for attempt in range(1, attempts + 1):
        try:
            serve.start(http_options={"host": LOOPBACK, "port": port},
                        controller_options={"runtime_env": {"env_vars": dict(SLOW_MACHINE_ENV)}})
            return
        except Exception as e:  # the controller or the proxy died while starting (a busy machine)
            if attempt == attempts:
                raise ServeStartError(f"Ray Serve did not start after {attempts} attempts ({_describe(e)}). Is "
                                      f"port {port} free (--port)? On a busy machine wait for the load to drop and "
                                      "retry; Serve's own logs are under /tmp/ray/session_latest/logs/serve/") from None
            progress(f"Serve did not start ({_describe(e)}); retrying ({attempt}/{attempts - 1})")
            try:
                serve.shutdown()
            except Exception:  # nothing to shut down
                pass
            time.sleep(2.0 * attempt)


def _replica_line(app) -> str:
    parts = []
    for name, d in app.deployments.items():
        states = d.replica_states
        running = int(states.get("RUNNING", 0))
        total = sum(int(v) for v in states.values())
        parts.append(f"{name} {running}/{max(total, running)}")
    return ", ".join(parts)


def wait_running(name: str, timeout_s: float, progress: Callable[[str], None], poll_s: float = 1.0) -> None:
    """Waits for app ``name`` to be RUNNING, with a progress line whenever its replica counts change."""
    from ray import serve

    deadline, last, t0 = time.monotonic() + timeout_s, None, time.monotonic()
    while True:
        try:
            app = serve.status().applications.get(name)
        except Exception as e:  # the controller is busy: keep waiting
            app, line = None, f"waiting for Serve's controller ({_describe(e)})"
        else:
            line = "waiting for the application" if app is None else f"starting replicas: {_replica_line(app)}"
        status = str(getattr(app, "status", "")).split(".")[-1]
        if status == "RUNNING":
            progress(f"replicas running: {_replica_line(app)} ({time.monotonic() - t0:.0f} s)")
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            msgs = [app.message] + [f"{n}: {d.message}" for n, d in app.deployments.items() if d.message]
            raise ServeStartError(f"the application {name!r} failed to deploy ({status}): "
                                  f"{'; '.join(m for m in msgs if m)[:1500]}")
        if line != last:
            progress(line)
            last = line
        if time.monotonic() > deadline:
            raise ServeStartError(f"the application {name!r} was not running after {timeout_s:.0f} s ({line}); "
                                  "the machine may be too busy or short of CPUs/memory for the replicas: lower "
                                  "serve.*.numReplicas / numCpus, or wait and retry")
        time.sleep(poll_s)


def start(app, spec: ServeSpec, num_experts: int, *, name: str = "atoll", port: int | None = None,
          blocking: bool = False, timeout_s: float = 900.0, attempts: int = 3,
          progress: Callable[[str], None] | None = None) -> str:
    """Starts Ray (if needed) and Serve on 127.0.0.1, deploys ``app``, waits until it runs; returns the base URL.

    ``ServeStartError`` (a clear message, no traceback) when Serve or the app cannot start.
    """
    from ray import serve

    from atoll.runtime import ensure_ray

    say = progress or (lambda line: None)
    ensure_ray(num_cpus=max(os.cpu_count() or 1, cpus_needed(spec, num_experts)))
    port = spec.port if port is None else port
    _start_serve(port, attempts, say)
    prefix = spec.route_prefix if spec.route_prefix.startswith("/") else "/" + spec.route_prefix
    url = f"http://{LOOPBACK}:{port}{prefix.rstrip('/')}"
    try:
        serve._run(app, _blocking=False, name=name, route_prefix=prefix)
    except Exception as e:
        raise ServeStartError(f"could not deploy the application {name!r}: {_describe(e)}") from None
    wait_running(name, timeout_s, say)
    if blocking:
        while True:
            time.sleep(3600)
    return url


def shutdown() -> None:
    from ray import serve

    serve.shutdown()
