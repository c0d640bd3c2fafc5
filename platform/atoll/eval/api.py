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

from atoll.eval.cache import DEFAULT_KEY, get_classifier
from atoll.eval.classifier import Classifier
from atoll.eval.errors import EvalError
from atoll.eval.images import to_float
from atoll.eval.metrics import evaluate_samples
from atoll.eval.reference import FASHION_MNIST_FOLDER, REFERENCES, fashion_mnist_reference, train_fashion_mnist
from atoll.store import Store

__all__ = ["FASHION_MNIST_FOLDER", "REFERENCES", "fashion_mnist_reference", "reference_classifier", "score",
           "train_fashion_mnist"]

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
