"""FID, class accuracy and precision/recall on real Fashion-MNIST vs degraded images."""
from __future__ import annotations

import numpy as np
import pytest

from atoll.eval.classifier import features
from atoll.eval.errors import EvalError
from atoll.eval.metrics import (class_accuracy, density_coverage, evaluate_samples, fid_from_features,
                                precision_recall)


@pytest.fixture(scope="module")
def degraded(small_classifier, fmnist_test):
    """Features of 2000 uniform-noise images and of 2000 test images with their pixels shuffled."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(2000, 1, 28, 28), dtype=np.uint8)
    shuffled = np.stack([rng.permutation(im.ravel()).reshape(im.shape) for im in fmnist_test[0][:2000]])
    return features(small_classifier, noise), features(small_classifier, shuffled)


def test_fid_real_halves_small_noise_and_shuffled_large(test_features, degraded):
    real_a, real_b = test_features[:5000], test_features[5000:]
    noise, shuffled = degraded
    same = fid_from_features(real_a, real_b)
    assert same < 2.0
    assert fid_from_features(real_a, noise) > 100 * max(same, 1.0)
    assert fid_from_features(real_a, shuffled) > 100 * max(same, 1.0)


def test_fid_grows_when_a_class_is_missing(test_features, fmnist_test):
    labels = fmnist_test[1]
    full = test_features[5000:]
    no_bags = test_features[5000:][labels[5000:] != 8]
    reference = test_features[:5000]
    assert fid_from_features(reference, no_bags) > 3 * fid_from_features(reference, full)


def test_class_accuracy_high_with_true_labels_chance_with_shuffled(small_classifier, fmnist_test):
    x, y = fmnist_test
    assert class_accuracy(small_classifier, x, y) >= 0.85
    shuffled = np.random.default_rng(0).permutation(y[:3000])
    assert abs(class_accuracy(small_classifier, x[:3000], shuffled) - 0.1) < 0.03


def test_class_accuracy_accepts_float_images(small_classifier, fmnist_test):
    x, y = fmnist_test[0][:500], fmnist_test[1][:500]
    as_float = x.astype(np.float32) / 127.5 - 1.0
    assert class_accuracy(small_classifier, as_float, y) == class_accuracy(small_classifier, x, y)


def test_real_vs_real_high_real_vs_noise_low(test_features, degraded):
    """Noise is told from real data on every machine by recall, density and coverage. Not by
    precision: noise collapses to ~one feature point whose precision is 0 or 1 depending on the
    classifier's weights (which differ between CPUs), see the next test and ``eval.metrics``."""
    real_a, real_b, noise = test_features[:2000], test_features[5000:7000], degraded[0]
    p, r = precision_recall(real_a, real_b)
    assert p > 0.75 and r > 0.75
    d, c = density_coverage(real_a, real_b)
    assert d > 0.8 and c > 0.85
    _, r = precision_recall(real_a, noise)
    assert r < 0.05
    d, c = density_coverage(real_a, noise)
    assert d < 0.35 and c < 0.02
    spread = noise.std(axis=0).mean()
    nearest = np.sqrt(((noise.mean(axis=0) - real_a) ** 2).sum(axis=1)).min()
    assert spread < 0.2 * nearest  # the degenerate case: all noise images at ~one point


def test_precision_counts_a_collapsed_set_next_to_a_real_outlier_density_coverage_do_not():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(2000, 8))
    real[0] = 12.0  # one outlier: its 3-NN ball is huge
    fake = 12.0 - 3.0 + rng.normal(scale=0.01, size=(500, 8))  # collapsed, far from the data, near the outlier
    p, r = precision_recall(real, fake)
    assert p == 1.0 and r == 0.0
    d, c = density_coverage(real, fake)
    assert d <= 1.0 / 5 + 1e-9 and c <= 1.0 / len(real) + 1e-9
    d_real, c_real = density_coverage(real[1:1001], rng.normal(size=(1000, 8)))
    assert 0.7 < d_real < 1.3 and c_real > 0.9
    with pytest.raises(EvalError, match="more than 5 real"):
        density_coverage(real[:5], fake)


def test_precision_recall_separate_fidelity_from_coverage():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(1500, 4))
    collapsed = real[:1500] * 0.05  # every sample near the mode: faithful but no coverage
    p, r = precision_recall(real, collapsed)
    assert p > 0.9 and r < 0.2
    with pytest.raises(EvalError, match="more than 3 samples"):
        precision_recall(real, real[:3])


def test_evaluate_samples_on_real_images(small_classifier, fmnist_test, fmnist_train):
    x, y = fmnist_test
    out = evaluate_samples(fmnist_train[0][:2000], fmnist_train[1][:2000], x[:2000], y[:2000], small_classifier)
    assert set(out) >= {"fid", "class_accuracy", "precision", "recall", "density", "coverage", "real_class_accuracy"}
    assert out["fid"] < 5.0
    assert out["class_accuracy"] > 0.85 and out["real_class_accuracy"] > 0.85
    assert out["precision"] > 0.7 and out["recall"] > 0.7
    assert out["density"] > 0.8 and out["coverage"] > 0.8
    assert out["n_samples"] == 2000 and out["n_real"] == 2000
    unconditional = evaluate_samples(x[:100], None, x[100:300], None, small_classifier)
    assert unconditional["class_accuracy"] is None and unconditional["real_class_accuracy"] is None


def test_bad_inputs_are_clear_errors(small_classifier, fmnist_test):
    x, y = fmnist_test
    with pytest.raises(EvalError, match=r"\[N, C, H, W\]"):
        class_accuracy(small_classifier, x[:10, 0], y[:10])
    with pytest.raises(EvalError, match="one per image"):
        class_accuracy(small_classifier, x[:10], y[:9])
    with pytest.raises(EvalError, match="channels"):
        class_accuracy(small_classifier, np.repeat(x[:10], 3, axis=1), y[:10])
