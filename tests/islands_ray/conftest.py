"""Two independent Ray clusters on 127.0.0.1 (own ports, worker port ranges, temp dirs), once per session."""
from __future__ import annotations

import os
import random

import pytest

from atoll.parallel.groups import free_port
from ray_clusters import VENV_BIN, cleanup, start_cluster, wait_jobs_api


def _cluster_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS", "ATOLL_STORE"))}
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PATH": VENV_BIN + os.pathsep + env.get("PATH", "")})
    return env


@pytest.fixture(scope="session")
def ray_islands():
    """{"a": Cluster, "b": Cluster}: each its own GCS, dashboard (Jobs API) and 1 CPU. Torn down by
    killing each cluster's own processes (never ``ray stop``, which would kill every cluster here)."""
    from concurrent.futures import ThreadPoolExecutor

    base = random.randrange(20000, 29000, 200)
    ports: list[int] = []
    while len(ports) < 18:
        p = free_port()
        if p not in ports:
            ports.append(p)
    clusters = {}
    started = {}
    try:
        with ThreadPoolExecutor(2) as pool:   # both start at once (~8 s each)
            for i, name in enumerate(("a", "b")):
                lo = base + i * 100
                started[name] = pool.submit(start_cluster, name, ports[9 * i: 9 * i + 9], (lo, lo + 99),
                                            _cluster_env())
            for name, f in started.items():
                clusters[name] = f.result()
        for c in clusters.values():
            wait_jobs_api(c)
        yield clusters
    finally:
        for c in clusters.values():
            cleanup(c)
