"""Models: DiT experts, the router, rectified flow, samplers, EMA, checkpoints, FLOPs.

Importing this package is torch-free (spec validation imports ``names``); the
names below load their module on first access.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "DIT_SIZES": "dit", "DiT": "dit", "DiTConfig": "dit",
    "ROUTER_SIZES": "router", "Router": "router", "RouterConfig": "router",
    "flow_loss": "flow", "sample_t": "flow",
    "EulerSampler": "samplers", "HeunSampler": "samplers", "sample": "samplers",
    "EMA": "ema",
    "save_pretrained": "checkpoint", "from_pretrained": "checkpoint",
    "train_flops_per_sample": "flops", "forward_flops": "flops",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"atoll.models.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'atoll.models' has no attribute {name!r}")
