"""scikit-learn's bundled 8x8 digits (1797 images): values 0..16 become uint8 0..255."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from atoll.data.sources.base import Sample, Source, as_hwc, resize

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


class Digits(Source):
    class_names = [str(i) for i in range(10)]

    def __init__(self, image_size: int | None = None):
        self.image_size = image_size

    def count(self) -> int:
        return len(digits_arrays()[1])

    def caption_for(self, label: int) -> str | None:
        return f"a handwritten digit {NAMES[label]}" if 0 <= label < 10 else None

    def read(self, start: int, stop: int) -> Iterator[Sample]:
        images, labels = digits_arrays()
        for i in range(start, min(stop, len(images))):
            lbl = int(labels[i])
            yield {"key": f"digits-{i:05d}", "image": resize(as_hwc(images[i]), self.image_size),
                   "label": lbl, "caption": self.caption_for(lbl)}
