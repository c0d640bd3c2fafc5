"""Serving a trained run over HTTP with Ray Serve: an ingress (FastAPI) and a continuous-batching scheduler.

``build_app(job | run_uri) -> Application`` (``app.py``), ``app_builder(args)`` for ``serve run`` /
Serve config files, the HTTP schema (``schema.py``, ``openai_schema.py``, ``api_models.py``), the
scheduler (``scheduler.py``, pure asyncio + torch) and the deployments around it (``deployments.py``).
See docs/serving.md.
"""
from __future__ import annotations

__all__ = ["app_builder", "build_app"]


def __getattr__(name: str):  # lazy: importing atoll.serve does not import ray
    if name in __all__:
        from atoll.serve import app

        return getattr(app, name)
    raise AttributeError(name)
