"""Optional class accuracy of samples, when ``atoll.eval`` (a real-data classifier) is installed.

Looks for ``atoll.eval.class_accuracy(run: Store, images: uint8 [N, C, H, W], labels: long [N]) -> float``;
returns None when the package or the function is absent, so the samples stage works without it.
"""
from __future__ import annotations

import importlib
import importlib.util

import torch

from atoll.progress import console
from atoll.store import Store


def class_accuracy(run: Store, images: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    """The accuracy of a real-data classifier on ``images`` against ``labels``, or None if unavailable."""
    if labels is None or importlib.util.find_spec("atoll.eval") is None:
        return None
    fn = getattr(importlib.import_module("atoll.eval"), "class_accuracy", None)
    if fn is None:
        return None
    try:
        return float(fn(run, images, labels))
    except Exception as e:  # an evaluation problem must not lose the samples themselves
        console().print(f"[yellow]warning:[/yellow] sample classifier failed ({type(e).__name__}: {e}); "
                        "accuracy left out of samples/manifest.json")
        return None
