"""Errors of the sampling package: bad requests and runs that cannot be loaded.

Both carry a message that names the problem and the fix; the CLI prints them
without a traceback.
"""
from __future__ import annotations


class SamplingError(ValueError):
    """A bad sampling request: unknown strategy, class out of range, bad ``n``."""


class RunNotFound(SamplingError, FileNotFoundError):
    """The run URI points at no usable run (no experts, a missing checkpoint, no router)."""
