"""The sample index of a shard: where each sample's tar blocks start, and their crc32.

Every shard Atoll writes gets a sidecar ``shard-NNNNN.idx`` (an ``.npy`` of int64
``[count + 1, 2]``: column 0 is the byte offset of sample ``i``'s first tar header, the
last row's offset is the end of the last sample; column 1 is the crc32 of sample ``i``'s
bytes). The artifact manifest lists it with its size and sha256 next to the shard's.

Readers use it for ranged reads of a few consecutive samples (``Store.get_range``: a
``pread`` on files, a ranged GET on S3) and check each sample they read against its
crc32, so a corrupt byte is found at the sample it hits. The shard stays a standard tar
(``tarfile``, ``webdataset`` read it as before). Shards committed without an index
(artifacts written before it existed) get one built by scanning the whole shard once
(``scan``), after the shard's sha256 is checked.
"""
from __future__ import annotations

import hashlib
import io
import zlib

import numpy as np

from atoll.data import tario
from atoll.data.errors import CorruptShard


def index_name(shard_name: str) -> str:
    """``shard-00003.tar`` -> ``shard-00003.idx``."""
    return shard_name.rsplit(".", 1)[0] + ".idx"


def build(sample_blocks: list[bytes]) -> np.ndarray:
    """The index of a shard made of these samples' tar blocks, in order (from byte 0)."""
    idx = np.zeros((len(sample_blocks) + 1, 2), np.int64)
    pos = 0
    for i, b in enumerate(sample_blocks):
        idx[i] = (pos, zlib.crc32(b))
        pos += len(b)
    idx[-1, 0] = pos
    return idx


def to_bytes(idx: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(idx, dtype=np.int64), allow_pickle=False)
    return buf.getvalue()


def entry(name: str, data: bytes) -> dict:
    """The manifest entry of an index file's bytes."""
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def parse(data: bytes, url: str, count: int, meta: dict | None = None) -> np.ndarray:
    """An index file's bytes -> int64 ``[count + 1, 2]``; CorruptShard names ``url`` when it is damaged."""
    fix = "delete the artifact and rerun its stage"
    if meta is not None and (len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]):
        raise CorruptShard(f"shard index {url} is corrupt: its size/sha256 do not match the manifest; {fix}")
    try:
        idx = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        raise CorruptShard(f"shard index {url} cannot be read ({e}); {fix}") from None
    if idx.dtype != np.int64 or idx.shape != (count + 1, 2) or (np.diff(idx[:, 0]) <= 0).any():
        raise CorruptShard(f"shard index {url} does not describe {count} samples; {fix}")
    return idx


def scan(data: bytes, url: str) -> np.ndarray:
    """The index of a whole shard's bytes (for shards committed without one)."""
    blocks = [r["__tar__"] for r in tario.records(data, url)]
    return build(blocks)


def check_sample(block: bytes, crc: int, url: str, pos: int) -> None:
    if zlib.crc32(block) != crc:
        raise CorruptShard(f"shard {url} is corrupt: the sample at byte {pos} does not match its crc32 in the "
                           "shard index; delete the artifact and rerun its stage")
