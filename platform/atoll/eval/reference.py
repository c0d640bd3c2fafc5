"""The reference data sets generated images are scored against (today: Fashion-MNIST).

The real images and the reference classifier's training live here, below both
``eval.cache`` (which trains the classifier on first use) and ``eval.api``
(which scores), so neither imports the other.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from atoll.eval.classifier import Classifier, predict, train_classifier
from atoll.eval.errors import EvalError

FASHION_MNIST_FOLDER = "/usr/share/datasets/fashion-mnist"
REFERENCES = ("fashion-mnist",)


def fashion_mnist_reference(split: str = "test", n: int | None = None,
                            folder: str | Path = FASHION_MNIST_FOLDER) -> tuple[np.ndarray, np.ndarray]:
    """Real Fashion-MNIST images uint8 [N, 1, 28, 28] and labels int64 [N] (the first ``n`` of the split)."""
    from atoll.data.sources.fashion_mnist import load_split

    if split not in ("train", "test"):
        raise EvalError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    images, labels = load_split(Path(folder), split)
    if n is not None:
        if n < 1:
            raise EvalError(f"n must be >= 1 (or None for the whole split), got {n}")
        images, labels = images[:n], labels[:n]
    return np.ascontiguousarray(images[:, None]), labels.astype(np.int64)


def train_fashion_mnist(epochs: int = 3, seed: int = 0, folder: str | Path = FASHION_MNIST_FOLDER,
                        threads: int | None = 2) -> Classifier:
    """The reference classifier: trained on the 60k training images, its test accuracy recorded in ``meta``.
    ``threads``: torch threads while training (see ``train_classifier``)."""
    x, y = fashion_mnist_reference("train", folder=folder)
    model = train_classifier(x, y, epochs=epochs, seed=seed, num_classes=10, threads=threads)
    xt, yt = fashion_mnist_reference("test", folder=folder)
    model.meta = {**model.meta, "data": "fashion-mnist train (60k)",
                  "test_accuracy": float((predict(model, xt) == yt).mean())}
    return model
