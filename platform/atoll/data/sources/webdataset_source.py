"""Existing WebDataset shards (local paths, file:// or s3:// URIs, brace patterns).

S3 shards are read through the store (boto3), with the job's S3 settings; the
tar parsing and sample grouping are the ``webdataset`` library's. For the data
stage, ``prepare`` counts each shard's samples with one Ray task per shard, so a
conversion task opens only the shards of its own range.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from atoll.data.errors import DataError
from atoll.data.sources.base import Sample, Source, as_hwc, resize, safe_key

IMAGE_FIELDS = ("png", "jpg", "jpeg", "webp", "bmp")
LABEL_FIELDS = ("cls", "label")
CAPTION_FIELDS = ("txt", "caption")


def expand(urls: list[str]) -> list[str]:
    from webdataset.shardlists import expand_urls

    return [u for pattern in urls for u in expand_urls(pattern)]


def open_url(url: str, s3=None):
    """A readable binary stream of one shard; errors name the URL and the fix."""
    if url.startswith("s3://"):
        from atoll.store import open_store

        bucket, _, key = url[5:].partition("/")
        return open_store(f"s3://{bucket}", s3).open(key)
    path = Path(url[7:] if url.startswith("file://") else url)
    if not path.is_file():
        raise DataError(f"WebDataset shard {url} does not exist; fix data.source.urls")
    return open(path, "rb")


def raw_samples(urls: list[str], s3=None) -> Iterator[dict]:
    """WebDataset samples (dicts of raw bytes by extension, plus ``__key__``/``__url__``)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    def streams():
        for url in urls:
            yield {"url": url, "stream": open_url(url, s3)}

    try:
        yield from group_by_keys(tar_file_expander(streams()))
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read WebDataset shards {urls} ({e}); check that they are valid tar files") from None


def decode(raw: dict, image_size: int | None) -> Sample:
    from PIL import Image

    field = next((f for f in IMAGE_FIELDS if f in raw), None)
    where = f"{raw.get('__url__')}:{raw.get('__key__')}"
    if field is None:
        raise DataError(f"WebDataset sample {where} has no image ({', '.join(IMAGE_FIELDS)}); "
                        "every sample needs one")
    try:
        with Image.open(io.BytesIO(raw[field])) as im:
            im = im if im.mode in ("L", "RGB") else im.convert("RGB")
            image = as_hwc(np.asarray(im))
    except Exception as e:
        raise DataError(f"cannot decode the image of WebDataset sample {where} ({e}); fix or drop the shard") from None
    label = next((int(raw[f].decode().strip()) for f in LABEL_FIELDS if f in raw), -1)
    caption = next((raw[f].decode("utf-8").strip() for f in CAPTION_FIELDS if f in raw), None)
    return {"key": safe_key(raw["__key__"]), "image": resize(image, image_size), "label": label,
            "caption": caption or None}


def count_url(url: str, s3=None, on_corrupt: str = "error") -> int:
    """Ray task: the number of samples in one shard; -1 for an unreadable one with ``on_corrupt: skip``."""
    try:
        return sum(1 for _ in raw_samples([url], s3))
    except DataError:
        if on_corrupt != "skip":
            raise
        return -1


class WebDatasetShards(Source):
    def __init__(self, urls: list[str], image_size: int | None = None, s3=None):
        self.urls, self.image_size, self.s3 = expand(urls), image_size, s3
        self.counts: list[int] | None = None

    def prepare(self, scratch) -> "WebDatasetShards":
        from atoll.data.distributed import map_tasks

        counts = map_tasks(count_url, [(u, self.s3, self.on_corrupt) for u in self.urls],
                           desc=f"data: count {len(self.urls)} shards", samples_of=lambda c: max(c, 0))
        for u, c in zip(self.urls, counts):
            if c < 0:
                self.skip(u, DataError(f"WebDataset shard {u} cannot be read"))
        self.urls = [u for u, c in zip(self.urls, counts) if c >= 0]
        self.counts = [c for c in counts if c >= 0]
        return self

    def count(self) -> int:
        if self.counts is not None:
            return sum(self.counts)
        return sum(1 for _ in raw_samples(self.urls, self.s3))

    def read(self, start: int, stop: int) -> Iterator[Sample]:
        urls, first = self.urls, 0
        if self.counts is not None:  # open only the shards that hold samples start..stop-1
            bounds = np.concatenate([[0], np.cumsum(self.counts)])
            lo = int(np.searchsorted(bounds, start, side="right") - 1)
            hi = int(np.searchsorted(bounds, stop, side="left"))
            urls, first = self.urls[lo:hi], int(bounds[lo])
        for i, raw in enumerate(raw_samples(urls, self.s3), start=first):
            if i >= stop:
                return
            if i >= start:
                try:
                    yield decode(raw, self.image_size)
                except DataError as e:
                    self.skip(f"{raw.get('__url__')}:{raw.get('__key__')}", e)
