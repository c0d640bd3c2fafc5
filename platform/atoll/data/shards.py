"""WebDataset tar shards in the store: writing, and the artifact manifest.

Each sample is ``KEY.png`` (lossless), ``KEY.cls`` (label, -1 if none) and
``KEY.txt`` (caption, when present). Shards are named ``shard-00000.tar``,
built in memory and written with one atomic ``put_bytes``, each with its sample
index ``shard-00000.idx`` beside it (``atoll.data.shardindex``: byte offset and
crc32 of every sample, for ranged reads); the artifact's ``manifest.json``
(counts, shards and indexes with sizes and sha256, image shape, classes) is
committed last by ``commit_shards``. Readers live in ``atoll.data.readers`` and
``atoll.data.stream``.
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable

import numpy as np

from atoll.data import shardindex
from atoll.data.errors import DataError
from atoll.data.tario import END, member
from atoll.store import Store, join

FORMAT = "atoll.webdataset/v1"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.tar"


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def sample_record(sample: dict) -> tuple[str, dict[str, bytes]]:
    """A source sample as a WebDataset record: key and ``{ext: bytes}``."""
    image = sample["image"]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise DataError(f"sample {sample['key']}: image must be uint8 [H, W, 1 or 3], got "
                        f"{image.dtype} {list(image.shape)}")
    rec = {"png": encode_png(image), "cls": str(int(sample["label"])).encode()}
    if sample.get("caption"):
        rec["txt"] = sample["caption"].encode("utf-8")
    return sample["key"], rec


def sample_blocks(records: Iterable[tuple[str, dict[str, bytes]]]) -> list[bytes]:
    """Each record's tar members (fixed mtime/owner, extensions sorted), one bytes object per sample."""
    out, seen = [], set()
    for key, rec in records:
        if key in seen or "." in key:
            raise DataError(f"sample key {key!r} is repeated or holds a '.'; keys must be unique, without dots")
        seen.add(key)
        out.append(b"".join(member(f"{key}.{ext}", rec[ext]) for ext in sorted(rec)))
    return out


def put_blocks(store: Store, prefix: str, index: int, blocks: list[bytes], **stats) -> dict:
    """Writes one shard made of samples' tar blocks (new, or ``__tar__`` of ``tario.records`` copied
    from other shards) and its sample index, each atomically; returns its manifest entry
    (name, count, size, sha256, index, + stats)."""
    name = shard_name(index)
    data = b"".join(blocks) + END
    idx = shardindex.to_bytes(shardindex.build(blocks))
    iname = shardindex.index_name(name)
    store.put_bytes(join(prefix, iname), idx)
    store.put_bytes(join(prefix, name), data)
    return {"name": name, "count": len(blocks), "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "index": shardindex.entry(iname, idx), **stats}


def put_shard(store: Store, prefix: str, index: int, records: Iterable[tuple[str, dict[str, bytes]]],
              **stats) -> dict:
    """Encodes records into one shard and writes it atomically; returns its manifest entry."""
    return put_blocks(store, prefix, index, sample_blocks(records), **stats)


def write_samples_shard(store: Store, prefix: str, index: int, samples: Iterable[dict]) -> dict:
    """Encodes source samples into one shard; the entry also carries image shapes,
    the largest label and the caption count (the stage checks them across shards)."""
    shapes, max_label, captions = set(), -1, 0

    def records():
        nonlocal max_label, captions
        for s in samples:
            c, h, w = s["image"].shape[2], s["image"].shape[0], s["image"].shape[1]
            shapes.add((c, h, w))
            max_label = max(max_label, int(s["label"]))
            captions += bool(s.get("caption"))
            yield sample_record(s)

    entry = put_shard(store, prefix, index, records())
    return {**entry, "image_shapes": sorted(list(s) for s in shapes), "max_label": max_label, "captions": captions}


def commit_shards(store: Store, prefix: str, shards: list[dict], **fields) -> dict:
    """Commits the artifact at ``prefix``: its manifest, written last, lists the shards."""
    entries = [{k: s[k] for k in ("name", "count", "size", "sha256", "index") if k in s} for s in shards]
    manifest = {"format": FORMAT, "count": sum(s["count"] for s in entries), "num_shards": len(entries),
                "shards": entries, **fields}
    return store.commit(prefix, manifest)
