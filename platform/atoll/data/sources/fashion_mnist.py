"""Fashion-MNIST from its idx ``.gz`` files (parsed with gzip + numpy)."""
from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from atoll.data.errors import DataError
from atoll.data.sources.base import Sample, Source, as_hwc, resize

CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot"]
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FIX = ("reinstall the Debian package dataset-fashion-mnist (or copy the four original "
       "*-idx?-ubyte.gz files there), or point data.source.path at a folder that has them")
_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned bytes, 3 dims (images) / 1 dim (labels)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parses one idx file; any missing, truncated or malformed file raises DataError naming it."""
    if not path.is_file():
        raise DataError(f"Fashion-MNIST file {path} is missing; {FIX}")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"Fashion-MNIST file {path} is corrupt or truncated ({e}); {FIX}") from None
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"Fashion-MNIST file {path} is truncated (only {len(raw)} bytes); {FIX}")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _MAGIC[ndim]:
        raise DataError(f"Fashion-MNIST file {path} is not an idx{ndim}-ubyte file (magic {magic:#010x}, "
                        f"expected {_MAGIC[ndim]:#010x}); {FIX}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    need = head + int(np.prod(dims))
    if len(raw) != need:
        raise DataError(f"Fashion-MNIST file {path} is truncated or padded: header says {dims} "
                        f"({need} bytes), file has {len(raw)} bytes; {FIX}")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_name, lbl_name = FILES[split]
    images = read_idx(folder / img_name, 3)
    labels = read_idx(folder / lbl_name, 1)
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split}: {folder / img_name} has {len(images)} images but "
                        f"{folder / lbl_name} has {len(labels)} labels; {FIX}")
    return images, labels


class FashionMnist(Source):
    class_names = CLASS_NAMES

    def __init__(self, path: str, split: str = "all", image_size: int | None = None):
        self.folder, self.split, self.image_size = Path(path), split, image_size
        self.splits = ["train", "test"] if split == "all" else [split]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """All images [N, 28, 28], labels [N] and keys [N] of the chosen split(s)."""
        parts = [(*load_split(self.folder, s), s) for s in self.splits]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        keys = [f"fmnist-{s}-{i:05d}" for imgs, _, s in parts for i in range(len(imgs))]
        return images, labels, keys

    def count(self) -> int:
        return sum(len(load_split(self.folder, s)[1]) for s in self.splits)

    def read(self, start: int, stop: int) -> Iterator[Sample]:
        images, labels, keys = self.arrays()
        for i in range(start, min(stop, len(images))):
            lbl = int(labels[i])
            yield {"key": keys[i], "image": resize(as_hwc(images[i]), self.image_size),
                   "label": lbl, "caption": self.caption_for(lbl)}
