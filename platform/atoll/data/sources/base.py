"""The sample format every source yields, and helpers shared by sources.

A sample is a dict ``{"key": str, "image": np.uint8 [H, W, C], "label": int
(-1 if none), "caption": str | None}``. Keys hold no '.' (WebDataset splits
file names on the first dot).
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TypedDict

import numpy as np


class Sample(TypedDict):
    key: str
    image: np.ndarray
    label: int
    caption: str | None


_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def safe_key(text: str) -> str:
    """A WebDataset-safe key: letters, digits, '_' and '-' only."""
    return _KEY_BAD.sub("_", text).strip("_") or "sample"


def caption_from_class(name: str) -> str:
    """``"sneaker"`` -> ``"a photo of a sneaker"`` (used when a labelled source has no captions)."""
    name = name.replace("_", " ").strip()
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"a photo of {article} {name}"


def as_hwc(image: np.ndarray) -> np.ndarray:
    """Makes an image uint8 [H, W, C] (grayscale [H, W] gets C=1)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    return np.ascontiguousarray(a, dtype=np.uint8)


def resize(image: np.ndarray, size: int | None) -> np.ndarray:
    """Center-crops to a square and resizes to ``size`` x ``size`` (Pillow, bicubic)."""
    if size is None or image.shape[:2] == (size, size):
        return image
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    sq = image[top:top + s, left:left + s]
    pil = Image.fromarray(sq[:, :, 0] if sq.shape[2] == 1 else sq)
    return as_hwc(np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC)))


class Source(ABC):
    """A readable data source. ``read(start, stop)`` may run in a Ray worker,
    so sources are cheap to construct and hold no open handles."""

    #: class names indexed by label, or None when the source has no labels
    class_names: list[str] | None = None
    #: "error": an unreadable file or shard raises DataError naming it; "skip": it is left out and
    #: recorded in ``skipped`` (``data.onCorrupt``)
    on_corrupt: str = "error"

    def skip(self, what: str, err: Exception) -> None:
        """Raises ``err`` or records ``what`` (a file or shard) as skipped, per ``on_corrupt``."""
        if self.on_corrupt != "skip":
            raise err
        if "skipped" not in self.__dict__:
            self.skipped: list[str] = []
        self.skipped.append(what)

    def prepare(self, scratch) -> "Source":
        """Called once by the data stage, in the driver, before the conversion tasks: a source with
        many files lists them here (with Ray tasks, keeping the listing in the ``scratch`` store) so
        that ``count`` is cheap and ``read`` opens only what its range needs. Returns the source
        the tasks get (pickled). Default: nothing to do."""
        return self

    @abstractmethod
    def count(self) -> int:
        """Number of samples (may read the source once)."""

    @abstractmethod
    def read(self, start: int, stop: int) -> Iterator[Sample]:
        """Samples ``start`` .. ``stop - 1`` in a fixed order."""

    def caption_for(self, label: int) -> str | None:
        if self.class_names is None or not 0 <= label < len(self.class_names):
            return None
        return caption_from_class(self.class_names[label])
