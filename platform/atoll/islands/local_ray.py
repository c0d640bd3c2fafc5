"""The thin layer over Ray core for the local target: remote calls, waits, resources."""
from __future__ import annotations

from collections.abc import Callable


def launch(fn: Callable, *args, name: str = "", runtime_env: dict | None = None, cpus: float = 0) -> object:
    """Runs ``fn(*args)`` as a Ray task holding ``cpus`` CPUs (default none: it only drives a trainer).

    The task's worker process exits when it returns (``max_calls=1``): with a runtime env of its own no
    other task could reuse it, and idle leftovers count towards Ray's worker-count warning.

    ``runtime_env``: more of the task's runtime env (e.g. a ``worker_process_setup_hook``);
    its ``env_vars`` are added to the job's. Tasks and actors the task creates inherit it.
    """
    import ray

    task = ray.remote(num_cpus=cpus, max_retries=0, max_calls=1)(_call)
    # Ray Train's helper actors (e.g. its PlacementGroupCleaner) query the state API without an
    # address; with two local Ray instances on one machine (two drivers) that lookup is ambiguous and
    # fails. RAY_ADDRESS pins them to this instance (env_vars merge with the job's runtime_env).
    ctx = ray.get_runtime_context()
    extra = dict(runtime_env or {})
    env = {**(ctx.runtime_env.get("env_vars") or {}), "RAY_ADDRESS": ctx.gcs_address, **extra.pop("env_vars", {})}
    return task.options(name=name or getattr(fn, "__name__", "island"),
                        runtime_env={**extra, "env_vars": env}).remote(fn, *args)


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


def single_node() -> bool:
    """Whether the Ray cluster is one node (the local instance, or a one-machine island)."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive")) <= 1


def setup_hook_env(hook: str) -> dict[str, str]:
    """Env vars that make every worker process of a task's runtime env (and of the tasks and actors it
    creates, which inherit its env vars) run ``hook`` (``"module.function"``) first.

    Ray's ``runtime_env={"worker_process_setup_hook": ...}`` does this for a whole job only (``ray.init``); it
    works by this env var, which per-task runtime envs may carry too."""
    from ray._private import ray_constants

    return {ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR: hook}
