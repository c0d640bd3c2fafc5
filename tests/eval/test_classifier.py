"""Training the evaluation classifier: accuracy, determinism, RNG hygiene."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from atoll.eval.api import train_fashion_mnist
from atoll.eval.classifier import features, features_and_predictions, predict, train_classifier
from atoll.eval.errors import EvalError


def test_subset_training_reaches_good_accuracy(small_classifier, fmnist_test):
    x, y = fmnist_test
    acc = float((predict(small_classifier, x) == y).mean())
    assert acc > 0.85
    assert small_classifier.meta["n_train"] == 15000 and small_classifier.meta["epochs"] == 3


def test_features_are_the_embedding(small_classifier, fmnist_test):
    f = features(small_classifier, fmnist_test[0][:64])
    assert f.shape == (64, small_classifier.config.embed_dim) and f.dtype == np.float64
    assert np.isfinite(f).all() and f.std(axis=0).mean() > 0
    f2, pred = features_and_predictions(small_classifier, fmnist_test[0][:64])
    np.testing.assert_allclose(f2, f, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(pred, predict(small_classifier, fmnist_test[0][:64]))


def test_training_is_deterministic_and_leaves_global_rng_alone(fmnist_train):
    x, y = fmnist_train[0][:1000], fmnist_train[1][:1000]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = train_classifier(x, y, epochs=1, seed=7, batch_size=100, threads=1)
    after = torch.rand(1)
    b = train_classifier(x, y, epochs=1, seed=7, batch_size=100, threads=1)
    c = train_classifier(x, y, epochs=1, seed=8, batch_size=100, threads=1)
    assert torch.equal(before, after)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_bad_training_input_is_a_clear_error(fmnist_train):
    x, y = fmnist_train[0][:100], fmnist_train[1][:100]
    with pytest.raises(EvalError, match="one per image"):
        train_classifier(x, y[:50], epochs=1)
    with pytest.raises(EvalError, match=r"labels must lie in \[0, 5\)"):
        train_classifier(x, y, epochs=1, num_classes=5)
    with pytest.raises(EvalError, match="dtype"):
        train_classifier(x.astype(np.int32), y, epochs=1)


@pytest.mark.slow
def test_full_reference_classifier_reaches_88_percent():
    start = time.perf_counter()
    model = train_fashion_mnist()
    seconds = time.perf_counter() - start
    print(f"reference classifier: test accuracy {model.meta['test_accuracy']:.4f}, "
          f"training {model.meta['train_seconds']} s, with evaluation {seconds:.0f} s")
    assert model.meta["test_accuracy"] >= 0.88
