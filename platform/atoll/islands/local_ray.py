"""The thin layer over Ray core for the local target: remote calls, waits, resources."""
from __future__ import annotations

from collections.abc import Callable


def launch(fn: Callable, *args, name: str = "") -> object:
    """Runs ``fn(*args)`` as a Ray task that holds no CPU (it only drives a trainer)."""
    import ray

    task = ray.remote(num_cpus=0, max_retries=0)(_call)
    return task.options(name=name or getattr(fn, "__name__", "island")).remote(fn, *args)


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
