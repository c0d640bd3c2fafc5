"""Finding, killing and waiting for Serve replicas in the serving tests (a real local Ray; 127.0.0.1)."""
from __future__ import annotations

import time


def replica_actors(deployment: str, app: str = "atoll") -> list[tuple[str, str]]:
    """``(actor name, namespace)`` of every live replica of ``deployment``."""
    import ray

    return [(a["name"], a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::") and f"{app}#{deployment}#" in a["name"]]


def running(deployment: str, app: str = "atoll") -> int:
    from atoll.serve.status import running_replicas

    return running_replicas(app).get(deployment, 0)


def kill(actor: tuple[str, str]) -> None:
    import ray

    ray.kill(ray.get_actor(actor[0], namespace=actor[1]), no_restart=True)


def wait_replaced(deployment: str, old: list[str], want: int = 1, timeout_s: float = 120, app: str = "atoll") -> None:
    """Waits until ``want`` replicas of ``deployment`` run and none of them is one of ``old``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = [n for n, _ in replica_actors(deployment, app)]
        if len(names) >= want and not set(old) & set(names) and running(deployment, app) >= want:
            return
        time.sleep(0.5)
    raise AssertionError(f"Serve did not replace the {deployment} replicas {old} within {timeout_s:.0f} s")
