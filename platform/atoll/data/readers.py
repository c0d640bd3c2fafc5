"""Reading committed shard artifacts whole: ``load_arrays`` (all in memory, for small data and
tests), ``iter_raw`` / ``iter_shard`` (raw records, whole-shard reads) and ``iter_samples``
(a plain ``webdataset`` pipeline). Training reads through ``atoll.data.loader`` instead."""
from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from atoll.data import tario
from atoll.data.errors import CorruptShard, DataError
from atoll.data.records import decode_image, decode_record  # noqa: F401  (re-exported)
from atoll.store import Store, join


@dataclass
class Arrays:
    """A whole artifact in memory. ``captions`` is None when no sample has one."""

    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N] (-1: no label)
    captions: list[str | None] | None
    keys: list[str]
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.keys)


def committed(store: Store, prefix: str) -> dict:
    m = store.manifest(prefix)
    if m is None:
        raise DataError(f"{store.url(prefix)} has no committed manifest.json; run the stage that writes it "
                        "(e.g. `atoll run JOB.yaml`) or check the run name")
    return m


def shard_bytes(store: Store, prefix: str, entry: dict, verify: bool = True) -> bytes:
    """The bytes of one shard, checked against the manifest's size and sha256."""
    key = join(prefix, entry["name"])
    data = store.get_bytes(key)
    if verify and (len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]):
        raise CorruptShard(f"shard {store.url(key)} is corrupt: its size/sha256 do not match "
                           f"{store.url(join(prefix, 'manifest.json'))}; delete the artifact "
                           f"{store.url(prefix)} and rerun its stage")
    return data


def raw_records(streams: Iterator[dict]) -> Iterator[dict]:
    """WebDataset raw samples (``__key__``, ``__url__``, ext -> bytes) from ``{"url", "stream"}`` dicts."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    return group_by_keys(tar_file_expander(streams))


def iter_shard(store: Store, prefix: str, entry: dict, verify: bool = True) -> Iterator[dict]:
    """Raw records of one Atoll shard (``tario``: fast); a malformed shard raises CorruptShard naming its URI."""
    url = store.url(join(prefix, entry["name"]))
    yield from tario.records(shard_bytes(store, prefix, entry, verify), url)


def iter_raw(store: Store, prefix: str, verify: bool = True) -> Iterator[dict]:
    """Raw records of every shard of a committed artifact, in manifest order."""
    for entry in committed(store, prefix)["shards"]:
        yield from iter_shard(store, prefix, entry, verify)


def load_arrays(store: Store, prefix: str, *, verify: bool = True, limit: int | None = None) -> Arrays:
    """Reads every shard of the artifact at ``prefix`` into memory (for small data), or only
    its first ``limit`` samples (reading only the shards that hold them)."""
    m = committed(store, prefix)
    images, labels, captions, keys = [], [], [], []
    for entry in m["shards"]:
        if limit is not None and len(keys) >= limit:
            break
        for raw in iter_shard(store, prefix, entry, verify):
            if limit is not None and len(keys) >= limit:
                break
            s = decode_record(raw)
            images.append(s["image"])
            labels.append(s["label"])
            captions.append(s["caption"])
            keys.append(s["key"])
    if len(keys) != (m["count"] if limit is None else min(limit, m["count"])):
        raise CorruptShard(f"{store.url(prefix)} holds {len(keys)} samples but its manifest says {m['count']}; "
                           "delete the artifact and rerun its stage")
    if images:
        arr = np.stack(images).transpose(0, 3, 1, 2)
    else:
        arr = np.zeros((0, *(m.get("image_shape") or (1, 1, 1))), np.uint8)
    return Arrays(images=np.ascontiguousarray(arr), labels=np.asarray(labels, dtype=np.int64),
                  captions=captions if any(c is not None for c in captions) else None,
                  keys=keys, class_names=m.get("class_names"))


def iter_samples(store: Store, prefix: str, *, rank: int = 0, world_size: int = 1,
                 shuffle_seed: int | None = None, shuffle_buffer: int = 2000,
                 verify: bool = True) -> Iterator[dict]:
    """Streams samples ``{"key", "image" uint8 [H,W,C], "label", "caption"}`` of one artifact.

    Rank ``rank`` of ``world_size`` gets a disjoint part: whole shards when there
    are at least ``world_size`` shards, else every ``world_size``-th sample.
    ``shuffle_seed`` shuffles the shard order and samples (buffer of
    ``shuffle_buffer``) reproducibly; None keeps manifest order.
    """
    import webdataset as wds

    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank ({rank}) must be in 0..world_size-1 and world_size ({world_size}) >= 1")
    shards = list(committed(store, prefix)["shards"])
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(shards)
    by_shard = len(shards) >= world_size
    mine = shards[rank::world_size] if by_shard else shards

    def opened(_=None):
        for e in mine:
            yield {"url": store.url(join(prefix, e["name"])), "stream": io.BytesIO(shard_bytes(store, prefix, e, verify))}

    stages = [opened, wds.tariterators.tar_file_expander, wds.tariterators.group_by_keys]
    if not by_shard and world_size > 1:
        stages.append(lambda src: (s for i, s in enumerate(src) if i % world_size == rank))
    if shuffle_seed is not None:
        stages.append(wds.filters.shuffle(shuffle_buffer, initial=min(100, shuffle_buffer),
                                          rng=random.Random(shuffle_seed + 1 + rank)))
    stages.append(wds.filters.map(decode_record))
    yield from wds.DataPipeline(*stages)
