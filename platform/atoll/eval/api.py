"""One-call scoring of generated images against a real reference data set.

    from atoll.eval.api import score
    score(images, labels)   # images [N, 1, 28, 28] uint8 or float in [-1, 1]; labels [N] or None
    -> {"fid": ..., "class_accuracy": ..., "precision": ..., "recall": ..., "density": ..., "coverage": ..., ...}

The classifier is trained on the reference's training split once (about a
minute on 2 CPU cores) and cached in a store (``~/.cache/atoll/eval`` or
``$ATOLL_EVAL_CACHE``); the real images it is compared with are the
reference's test split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from atoll.eval.cache import DEFAULT_KEY, get_classifier
from atoll.eval.classifier import Classifier, predict, train_classifier
from atoll.eval.errors import EvalError
from atoll.eval.images import to_float
from atoll.eval.metrics import evaluate_samples
from atoll.store import Store

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


def train_fashion_mnist(epochs: int = 3, seed: int = 0, folder: str | Path = FASHION_MNIST_FOLDER) -> Classifier:
    """The reference classifier: trained on the 60k training images, its test accuracy recorded in ``meta``."""
    x, y = fashion_mnist_reference("train", folder=folder)
    model = train_classifier(x, y, epochs=epochs, seed=seed, num_classes=10)
    xt, yt = fashion_mnist_reference("test", folder=folder)
    model.meta = {**model.meta, "data": "fashion-mnist train (60k)",
                  "test_accuracy": float((predict(model, xt) == yt).mean())}
    return model


def reference_classifier(reference: str = "fashion-mnist", store: Store | str | None = None) -> Classifier:
    """The cached classifier of a reference data set (trained on first use)."""
    if reference not in REFERENCES:
        raise EvalError(f"unknown reference {reference!r}; supported: {', '.join(REFERENCES)}")
    return get_classifier(store, key=DEFAULT_KEY, train_fn=train_fashion_mnist)


def score(images, labels=None, *, reference: str = "fashion-mnist", store: Store | str | None = None,
          n_real: int | None = None) -> dict:
    """FID, class accuracy, precision/recall and density/coverage of generated images against the reference's test split.

    ``images``: [N, 1, 28, 28], uint8 or float in [-1, 1]; ``labels``: the
    class each image was generated for, [N], or None. ``n_real`` limits the
    real images used (default: the whole test split, 10k). Adds
    ``classifier_test_accuracy`` (the classifier's own accuracy on real data).
    """
    model = reference_classifier(reference, store)
    x = to_float(images)
    if tuple(x.shape[1:]) != (1, 28, 28):
        raise EvalError(f"Fashion-MNIST scoring needs images [N, 1, 28, 28], got {tuple(x.shape)}; "
                        f"generate at 28x28 grey (or resize) before scoring")
    real_x, real_y = fashion_mnist_reference("test", n=n_real)
    out = evaluate_samples(x, labels, real_x, real_y, model)
    out["classifier_test_accuracy"] = model.meta.get("test_accuracy")
    return out
