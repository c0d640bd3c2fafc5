"""The thin layer over Ray core for the local target: remote calls, waits, resources."""
from __future__ import annotations

from collections.abc import Callable


def launch(fn: Callable, *args, name: str = "") -> object:
    """Runs ``fn(*args)`` as a Ray task that holds no CPU (it only drives a trainer)."""
    import ray

    task = ray.remote(num_cpus=0, max_retries=0)(_call)
    # Ray Train's helper actors (e.g. its PlacementGroupCleaner) query the state API without an
    # address; with two local Ray instances on one machine (two drivers) that lookup is ambiguous and
    # fails. RAY_ADDRESS pins them to this instance (env_vars merge with the job's runtime_env).
    ctx = ray.get_runtime_context()
    env = {**(ctx.runtime_env.get("env_vars") or {}), "RAY_ADDRESS": ctx.gcs_address}
    return task.options(name=name or getattr(fn, "__name__", "island"),
                        runtime_env={"env_vars": env}).remote(fn, *args)


def _call(fn, *args):
    return fn(*args)


def wait(refs: list, timeout: float) -> tuple[list, list]:
    import ray

    if not refs:
        return [], []
    return ray.wait(refs, num_returns=1, timeout=timeout)


def get(ref) -> object:
    import ray

    return ray.get(ref)


def cluster_resources() -> dict:
    import ray

    return ray.cluster_resources()
