"""Image batches for evaluation: validation and conversion to float tensors in [-1, 1]."""
from __future__ import annotations

import numpy as np
import torch

from atoll.eval.errors import EvalError


def to_float(images, *, name: str = "images") -> torch.Tensor:
    """uint8 [N, C, H, W] (0..255) or float [N, C, H, W] (in [-1, 1]) -> float32 tensor in [-1, 1].

    Accepts numpy arrays and torch tensors. Float input is clamped to [-1, 1]
    (samplers overshoot a little); a batch that is not 4-D raises EvalError.
    """
    if isinstance(images, torch.Tensor):
        t = images
    else:
        arr = np.asarray(images)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if t.ndim != 4:
        raise EvalError(f"{name} must be a 4-D batch [N, C, H, W], got shape {tuple(t.shape)}; "
                        f"add a channel axis for grey images (x[:, None])")
    if len(t) == 0:
        raise EvalError(f"{name} is empty (shape {tuple(t.shape)}); pass at least one image")
    if t.dtype == torch.uint8:
        return t.detach().cpu().float().div_(127.5).sub_(1.0)
    if t.is_floating_point():
        return t.detach().cpu().float().clamp(-1.0, 1.0)
    raise EvalError(f"{name} has dtype {t.dtype}; pass uint8 (0..255) or float in [-1, 1]")


def to_labels(labels, n: int, *, name: str = "labels") -> np.ndarray:
    """Labels [N] (any integer array-like) -> int64 numpy [N]; the length must be ``n``."""
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise EvalError(f"{name} must be a 1-D array of {n} class ids (one per image), got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise EvalError(f"{name} has dtype {y.dtype}; pass integer class ids")
    return y.astype(np.int64)
