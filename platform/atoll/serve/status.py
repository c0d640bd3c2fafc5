"""Thin wrapper over ``serve.status()``: running replicas per deployment of one application."""
from __future__ import annotations


def running_replicas(app_name: str) -> dict[str, int]:
    """``{deployment name: RUNNING replicas}`` of ``app_name`` (empty when the app is unknown)."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: int(d.replica_states.get("RUNNING", 0)) for name, d in app.deployments.items()}


def deployment_statuses(app_name: str) -> dict[str, str]:
    """``{deployment name: HEALTHY | UPDATING | UNHEALTHY | ...}``."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    return {} if app is None else {name: str(d.status) for name, d in app.deployments.items()}
