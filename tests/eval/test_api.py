"""The one-call API: reference data and score()."""
from __future__ import annotations

import numpy as np
import pytest

from atoll.eval.api import fashion_mnist_reference, score
from atoll.eval.cache import DEFAULT_KEY, save_classifier
from atoll.eval.errors import EvalError
from atoll.store import open_store


def test_reference_shapes(fmnist_test):
    x, y = fashion_mnist_reference("test", n=100)
    assert x.shape == (100, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (100,) and y.dtype == np.int64 and set(y) <= set(range(10))
    np.testing.assert_array_equal(x, fmnist_test[0][:100])
    with pytest.raises(EvalError, match="split"):
        fashion_mnist_reference("validation")


def test_score_uses_the_cached_classifier(tmp_path, small_classifier, fmnist_train):
    store = open_store(str(tmp_path))
    save_classifier(store, DEFAULT_KEY, small_classifier)  # pre-seeded: score() must not train
    x, y = fmnist_train[0][:1000], fmnist_train[1][:1000]
    out = score(x, y, store=store, n_real=2000)
    assert out["fid"] < 5 and out["class_accuracy"] > 0.85 and out["precision"] > 0.7
    noise = np.random.default_rng(0).uniform(-1, 1, size=(500, 1, 28, 28)).astype(np.float32)
    bad = score(noise, y[:500], store=store, n_real=2000)
    assert bad["fid"] > 20 * out["fid"] and bad["coverage"] < 0.02 and bad["density"] < 0.35
    assert out["coverage"] > 0.8 and out["density"] > 0.8
    with pytest.raises(EvalError, match=r"\[N, 1, 28, 28\]"):
        score(np.zeros((4, 1, 32, 32), np.uint8), store=store)
    with pytest.raises(EvalError, match="unknown reference"):
        score(x, y, reference="imagenet", store=store)
