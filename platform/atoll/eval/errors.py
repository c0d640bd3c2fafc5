"""Errors of the evaluation package. Messages name the problem and the fix."""
from __future__ import annotations


class EvalError(ValueError):
    """Bad input to an evaluation (shapes, dtypes, sizes) or an unusable cached classifier."""
