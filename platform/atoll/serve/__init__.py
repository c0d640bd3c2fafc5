"""Serving a trained run over HTTP with Ray Serve: ingress (FastAPI) + Router + one deployment per expert.

``build_app(job | run_uri) -> Application`` (``app.py``), ``app_builder(args)`` for ``serve run`` /
Serve config files, the HTTP schema (``schema.py``), the per-request loop (``denoise.py``).
See docs/serving.md.
"""
from __future__ import annotations

__all__ = ["app_builder", "build_app"]


def __getattr__(name: str):  # lazy: importing atoll.serve does not import ray
    if name in __all__:
        from atoll.serve import app

        return getattr(app, name)
    raise AttributeError(name)
