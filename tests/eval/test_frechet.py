"""The Frechet distance against closed forms."""
from __future__ import annotations

import numpy as np
import pytest

from atoll.eval.errors import EvalError
from atoll.eval.metrics import fid_from_features, frechet_distance


def random_cov(rng, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.normal(size=16), random_cov(rng, 16)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-6)


def test_one_dimensional_closed_form():
    # N(m1, v1) vs N(m2, v2): (m1 - m2)^2 + (sqrt(v1) - sqrt(v2))^2
    d = frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]])
    assert d == pytest.approx(9.0 + 1.0, rel=1e-9)


def test_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    v1, v2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-7)


def test_symmetric_for_full_covariances():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    s1, s2 = random_cov(rng, 12), random_cov(rng, 12)
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 > 0.1
    assert d12 == pytest.approx(d21, rel=1e-6)


def test_singular_covariances_stay_finite_and_zero_for_the_same_set():
    rng = np.random.default_rng(3)
    few = rng.normal(size=(5, 64))  # 5 samples in 64-d: rank-4 covariance
    assert fid_from_features(few, few) == pytest.approx(0.0, abs=1e-4)
    d = fid_from_features(few, rng.normal(size=(5, 64)) + 3.0)
    assert np.isfinite(d) and d > 64 * 9 * 0.5


def test_fid_from_samples_approaches_the_closed_form():
    rng = np.random.default_rng(4)
    a = rng.normal(0.0, 1.0, size=(20000, 2))
    b = rng.normal([2.0, 0.0], [2.0, 1.0], size=(20000, 2))
    assert fid_from_features(a, b) == pytest.approx(4.0 + 1.0, rel=0.03)


def test_mismatched_shapes_are_clear_errors():
    with pytest.raises(EvalError, match="same D"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(EvalError, match="width"):
        fid_from_features(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(EvalError, match="N >= 2"):
        fid_from_features(np.zeros((1, 3)), np.zeros((10, 3)))
