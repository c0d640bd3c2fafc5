"""Moving-MNIST-style clips built from real images (Fashion-MNIST or digits) bouncing in a frame.

Each clip ``i`` is generated from its own RNG ``np.random.default_rng([seed, i])``,
so a clip does not depend on which range is read (``read(5, 6)`` equals the 6th
sample of ``read(0, 10)``) and the whole set is deterministic for a seed.

Generation: ``objects`` images are drawn from the base set (Fashion-MNIST train
split, or sklearn digits), resized to ``obj = size // 2`` pixels square, placed
at a random position, and moved with a random velocity of 1..``max(2, size//8)``
pixels per frame in each axis; an object that would leave the frame bounces
(its velocity flips and the position is reflected back inside). Objects are
composited with ``max`` (as in Moving MNIST). Every frame keeps every object
entirely inside the ``size x size`` frame.

Storage layout (so the existing PNG shard format is unchanged): a clip's
``image`` is its frames tiled **vertically**, uint8 ``[T*size, size, C]``
(frame ``k`` = rows ``k*size .. (k+1)*size``). Frames are square, so the frame
count is ``height // width`` (``frames_of``); the key also says it
(``mclip-f{T}-{i:06d}``). ``clip_frames`` / ``clips_tensor`` turn stored images
back into ``[T, C, H, W]`` / ``[N, C, T, H, W]``.

``label`` is the class of the first object; ``caption`` names every object,
e.g. ``"a video of a sneaker and a bag moving"``.
"""
from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

from atoll.data.errors import DataError
from atoll.data.sources.base import Sample, Source, as_hwc, resize


@lru_cache(maxsize=4)
def _base_images(images: str, path: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Base images uint8 ``[N, h, w]``, labels ``[N]`` and class names for ``images``."""
    if images == "fashion-mnist":
        from atoll.data.sources.fashion_mnist import load_split

        imgs, labels = load_split(Path(path), "train")
        return imgs, labels.astype(np.int64), tuple(_class_names(images))
    if images == "digits":
        from atoll.data.sources.digits import digits_arrays

        imgs, labels = digits_arrays()
        return imgs, labels, tuple(_class_names(images))
    raise DataError(f"moving-clips images {images!r} is unknown; use 'fashion-mnist' or 'digits'")


def _class_names(images: str) -> list[str]:
    """Class names without reading the images (sources are cheap to construct)."""
    if images == "fashion-mnist":
        from atoll.data.sources.fashion_mnist import CLASS_NAMES

        return list(CLASS_NAMES)
    if images == "digits":
        from atoll.data.sources.digits import NAMES

        return [f"digit {n}" for n in NAMES]
    raise DataError(f"moving-clips images {images!r} is unknown; use 'fashion-mnist' or 'digits'")


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def clip_caption(names: list[str]) -> str:
    """``["sneaker", "bag"]`` -> ``"a video of a sneaker and a bag moving"``."""
    parts = [f"{_article(n)} {n}" for n in names]
    return f"a video of {' and '.join(parts)} moving"


def bounce_track(pos: float, vel: float, span: int, frames: int) -> np.ndarray:
    """Top-left coordinates ``[frames]`` (int) of one axis, bouncing inside ``[0, span]``."""
    out = np.empty(frames, dtype=np.int64)
    for k in range(frames):
        out[k] = int(round(pos))
        pos += vel
        if pos < 0:
            pos, vel = -pos, -vel
        elif pos > span:
            pos, vel = 2 * span - pos, -vel
        pos = min(max(pos, 0.0), float(span))  # a velocity larger than the span cannot escape either
    return out


def make_clip(rng: np.random.Generator, base: np.ndarray, frames: int, size: int, objects: int,
              obj: int) -> tuple[np.ndarray, list[int]]:
    """One clip uint8 ``[frames, size, size]`` and the base indices of its objects."""
    span = size - obj
    vmax = max(2, size // 8)
    idx = [int(i) for i in rng.integers(0, len(base), size=objects)]
    video = np.zeros((frames, size, size), dtype=np.uint8)
    for i in idx:
        sprite = resize(as_hwc(base[i]), obj)[:, :, 0]
        ys = bounce_track(rng.uniform(0, span), rng.choice([-1, 1]) * rng.uniform(1, vmax), span, frames)
        xs = bounce_track(rng.uniform(0, span), rng.choice([-1, 1]) * rng.uniform(1, vmax), span, frames)
        for k in range(frames):
            win = video[k, ys[k]:ys[k] + obj, xs[k]:xs[k] + obj]
            np.maximum(win, sprite, out=win)
    return video, idx


class MovingClips(Source):
    """``num_clips`` clips of ``frames`` frames, ``size x size``, ``objects`` moving objects each."""

    def __init__(self, images: str = "fashion-mnist", path: str = "/usr/share/datasets/fashion-mnist",
                 num_clips: int = 2000, frames: int = 8, size: int = 32, objects: int = 1, seed: int = 0):
        if size < 8:
            raise DataError(f"moving-clips size must be >= 8, got {size}")
        if frames < 1 or objects < 1 or num_clips < 1:
            raise DataError(f"moving-clips needs frames, objects and num_clips >= 1 "
                            f"(got {frames}, {objects}, {num_clips})")
        self.images, self.path, self.num_clips = images, path, num_clips
        self.frames, self.size, self.objects, self.seed = frames, size, objects, seed
        self.obj = size // 2
        self.class_names = _class_names(images)

    def count(self) -> int:
        return self.num_clips

    def caption_for(self, label: int) -> str | None:
        if not 0 <= label < len(self.class_names):
            return None
        return clip_caption([self.class_names[label]])

    def clip(self, i: int) -> tuple[np.ndarray, list[int]]:
        """Clip ``i`` as uint8 ``[T, H, W]`` and the labels of its objects."""
        base, labels, _ = _base_images(self.images, self.path)
        rng = np.random.default_rng([self.seed, i])
        video, idx = make_clip(rng, base, self.frames, self.size, self.objects, self.obj)
        return video, [int(labels[j]) for j in idx]

    def read(self, start: int, stop: int) -> Iterator[Sample]:
        for i in range(max(start, 0), min(stop, self.num_clips)):
            video, labels = self.clip(i)
            yield {"key": f"mclip-f{self.frames}-{i:06d}",
                   "image": video.reshape(self.frames * self.size, self.size, 1),
                   "label": labels[0],
                   "caption": clip_caption([self.class_names[lb] for lb in labels])}


# --------------------------------------------------------------------------- readers
def frames_of(image_hw: tuple[int, int]) -> int:
    """Frame count of a stored clip of height x width ``image_hw`` (frames are square)."""
    h, w = image_hw
    if w < 1 or h % w:
        raise DataError(f"a stored clip must be T square frames tiled vertically; height {h} is not a "
                        f"multiple of width {w}")
    return h // w


def clip_frames(image: np.ndarray) -> np.ndarray:
    """A stored clip uint8 ``[T*H, W, C]`` -> ``[T, C, H, W]``."""
    th, w, c = image.shape
    t = frames_of((th, w))
    return np.ascontiguousarray(image.reshape(t, w, w, c).transpose(0, 3, 1, 2))


def clips_tensor(images: np.ndarray) -> np.ndarray:
    """Stored clips as ``Arrays.images`` uint8 ``[N, C, T*H, W]`` -> ``[N, C, T, H, W]``."""
    n, c, th, w = images.shape
    t = frames_of((th, w))
    return images.reshape(n, c, t, w, w)
