"""Fashion-MNIST arrays and one classifier trained on a subset, shared by the eval tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atoll.eval.api import FASHION_MNIST_FOLDER, fashion_mnist_reference
from atoll.eval.classifier import features, train_classifier


def _need_data() -> None:
    if not (Path(FASHION_MNIST_FOLDER) / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed at {FASHION_MNIST_FOLDER} (Debian package dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def fmnist_train() -> tuple[np.ndarray, np.ndarray]:
    _need_data()
    return fashion_mnist_reference("train")


@pytest.fixture(scope="session")
def fmnist_test() -> tuple[np.ndarray, np.ndarray]:
    _need_data()
    return fashion_mnist_reference("test")


@pytest.fixture(scope="session")
def small_classifier(fmnist_train):
    """Trained on 15k training images for 3 epochs (~25 s on one core; 87.7% test accuracy).

    One thread: a second one buys little here and stalls badly when other jobs share the cores.
    """
    x, y = fmnist_train
    return train_classifier(x[:15000], y[:15000], epochs=3, seed=0, batch_size=64, num_classes=10, threads=1)


@pytest.fixture(scope="session")
def test_features(small_classifier, fmnist_test) -> np.ndarray:
    """Embeddings [10000, 128] of the real test images."""
    return features(small_classifier, fmnist_test[0])
