"""One or more committed shard artifacts as one sequence of samples, read by ranges of rows.

A ``Collection`` knows the shards (from the manifests, nothing else is read up front),
their sample counts and where each global id lives. ``rows(shard, a, b)`` returns the
raw records of rows ``a..b-1`` of a shard with one ranged read, using the shard's
sample index (``atoll.data.shardindex``), and checks each against its crc32.

Corrupt data (a shard or index that is missing, truncated, does not match its hashes,
or a sample that does not decode) is a ``CorruptShard`` naming the shard and the fix,
unless ``on_corrupt="skip"``: then the unreadable rows come back as ``None`` and are
counted in ``stats`` (``corrupt_shards``, ``skipped_samples``). Whether a sample is
readable depends only on its own bytes, so the streaming and in-memory readers skip the
same samples, and a resumed run the same ones as the run it resumes.
"""
from __future__ import annotations

import hashlib
import threading
import zlib
from collections import OrderedDict

import numpy as np

from atoll.data import shardindex, tario
from atoll.data.errors import CorruptShard, DataError
from atoll.data.readers import committed
from atoll.store import NotFound, Store, join

SKIP_HINT = "; or set data.onCorrupt: skip to train on without it"


class Collection:
    def __init__(self, store: Store, prefixes: list[str], *, on_corrupt: str = "error", verify: bool = True,
                 index_cache_rows: int = 4_000_000):
        if on_corrupt not in ("error", "skip"):
            raise DataError(f"data.onCorrupt must be 'error' or 'skip', got {on_corrupt!r}")
        self.store, self.prefixes, self.on_corrupt, self.verify = store, list(prefixes), on_corrupt, verify
        self.manifests = [committed(store, p) for p in self.prefixes]
        self.shards: list[tuple[int, str, dict]] = []
        starts, art = [0], [0]
        for a, (p, m) in enumerate(zip(self.prefixes, self.manifests)):
            for e in m["shards"]:
                self.shards.append((a, p, e))
                starts.append(starts[-1] + int(e["count"]))
            if starts[-1] - art[-1] != m["count"]:
                raise CorruptShard(f"{store.url(p)}: its shards hold {starts[-1] - art[-1]} samples but its manifest "
                                   f"says {m['count']}; delete the artifact and rerun its stage")
            art.append(starts[-1])
        self.starts, self.artifact_starts = np.asarray(starts, np.int64), np.asarray(art, np.int64)
        self.n = int(starts[-1])
        self._index: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._index_rows, self._cache_rows = 0, index_cache_rows
        self._lock = threading.Lock()
        self.stats = {"corrupt_shards": [], "skipped_samples": 0, "bytes_read": 0, "reads": 0}
        self._bad_rows: set[tuple[int, int]] = set()

    # -- where samples live -------------------------------------------------
    def url(self, s: int) -> str:
        _, p, e = self.shards[s]
        return self.store.url(join(p, e["name"]))

    def artifact_of(self, ids: np.ndarray) -> np.ndarray:
        """Index (into ``prefixes``) of the artifact each global id belongs to."""
        return np.searchsorted(self.artifact_starts, ids, side="right") - 1

    def spans(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """Global ids ``lo..hi-1`` as ``(shard, first row, end row)`` runs."""
        out, g = [], lo
        while g < hi:
            s = int(np.searchsorted(self.starts, g, side="right") - 1)
            end = min(hi, int(self.starts[s + 1]))
            out.append((s, g - int(self.starts[s]), end - int(self.starts[s])))
            g = end
        return out

    def artifact_meta(self, key: str, default=None):
        """A manifest field, from the first artifact that has it."""
        return next((m[key] for m in self.manifests if m.get(key) is not None), default)

    # -- corruption ---------------------------------------------------------
    def corrupt(self, s: int, err: CorruptShard, rows: range) -> None:
        """Raises ``err`` (on_corrupt: error) or records rows of shard ``s`` as skipped."""
        if self.on_corrupt == "error":
            raise CorruptShard(str(err) + SKIP_HINT) from None
        with self._lock:
            name = self.url(s)
            if name not in self.stats["corrupt_shards"]:
                self.stats["corrupt_shards"].append(name)
            new = {(s, r) for r in rows} - self._bad_rows
            self._bad_rows |= new
            self.stats["skipped_samples"] += len(new)

    # -- reading ------------------------------------------------------------
    def whole(self, s: int) -> bytes:
        """A whole shard's bytes, checked against its manifest size and sha256."""
        _, p, e = self.shards[s]
        try:
            data = self.store.get_bytes(join(p, e["name"]))
        except NotFound:
            raise CorruptShard(f"shard {self.url(s)} is missing; delete the artifact {self.store.url(p)} and "
                               "rerun its stage") from None
        if self.verify and (len(data) != e["size"] or hashlib.sha256(data).hexdigest() != e["sha256"]):
            raise CorruptShard(f"shard {self.url(s)} is corrupt: its size/sha256 do not match "
                               f"{self.store.url(join(p, 'manifest.json'))}; delete the artifact {self.store.url(p)} "
                               "and rerun its stage")
        return data

    def index(self, s: int) -> np.ndarray | None:
        """The sample index of shard ``s`` (None when it is unreadable and skipped); a bounded LRU cache."""
        with self._lock:
            if s in self._index:
                self._index.move_to_end(s)
                return self._index[s]
        _, p, e = self.shards[s]
        try:
            meta = e.get("index")
            if meta is None:  # an artifact written before shard indexes existed
                idx = shardindex.scan(self.whole(s), self.url(s))
            else:
                key = join(p, meta["name"])
                try:
                    raw = self.store.get_bytes(key)
                except NotFound:
                    raise CorruptShard(f"shard index {self.store.url(key)} is missing; delete the artifact "
                                       f"{self.store.url(p)} and rerun its stage") from None
                idx = shardindex.parse(raw, self.store.url(key), int(e["count"]), meta if self.verify else None)
            if len(idx) != int(e["count"]) + 1:
                raise CorruptShard(f"shard {self.url(s)} holds {len(idx) - 1} samples, its manifest says "
                                   f"{e['count']}; delete the artifact and rerun its stage")
        except CorruptShard as err:
            self.corrupt(s, err, range(int(e["count"])))
            idx = None
        with self._lock:
            self._index[s] = idx
            self._index_rows += 0 if idx is None else len(idx)
            while self._index_rows > self._cache_rows and len(self._index) > 1:
                _, old = self._index.popitem(last=False)
                self._index_rows -= 0 if old is None else len(old)
        return idx

    def rows(self, s: int, a: int, b: int) -> list[dict | None]:
        """Raw records of rows ``a..b-1`` of shard ``s`` (None: unreadable, skipped)."""
        idx = self.index(s)
        if idx is None:
            return [None] * (b - a)
        _, p, e = self.shards[s]
        offs, crcs = idx[a:b + 1, 0].tolist(), idx[a:b, 1].tolist()
        base, url = offs[0], self.url(s)
        try:
            data = self.store.get_range(join(p, e["name"]), base, offs[-1])
        except NotFound:
            self.corrupt(s, CorruptShard(f"shard {url} is missing; delete the artifact and rerun its stage"),
                         range(a, b))
            return [None] * (b - a)
        with self._lock:
            self.stats["bytes_read"] += len(data)
            self.stats["reads"] += 1
        try:  # the fast path: the whole range parses and every sample matches its index entry
            recs = list(tario.records(data, url, whole=False)) if len(data) == offs[-1] - base else []
        except CorruptShard:
            recs = []
        if len(recs) == b - a and all(
                len(rec["__tar__"]) == offs[i + 1] - offs[i] and (not self.verify or zlib.crc32(rec["__tar__"]) == crcs[i])
                for i, rec in enumerate(recs)):
            return recs
        return self._rows_one_by_one(s, a, b, offs, crcs, data)

    def rows_at(self, s: int, rows: list[int]) -> list[dict | None]:
        """Raw records of the given sorted rows of shard ``s``: one ranged read of their span, and only
        those rows checked and parsed (e.g. a sample of a shard)."""
        if not rows:
            return []
        idx = self.index(s)
        if idx is None:
            return [None] * len(rows)
        _, p, e = self.shards[s]
        base, end = int(idx[rows[0], 0]), int(idx[rows[-1] + 1, 0])
        try:
            data = self.store.get_range(join(p, e["name"]), base, end)
        except NotFound:
            self.corrupt(s, CorruptShard(f"shard {self.url(s)} is missing; delete the artifact and rerun its stage"),
                         range(rows[0], rows[-1] + 1))
            return [None] * len(rows)
        with self._lock:
            self.stats["bytes_read"] += len(data)
            self.stats["reads"] += 1
        out = []
        for r in rows:
            lo = int(idx[r, 0]) - base
            out += self._rows_one_by_one(s, r, r + 1, [int(idx[r, 0]), int(idx[r + 1, 0])], [int(idx[r, 1])],
                                         data[lo:lo + int(idx[r + 1, 0] - idx[r, 0])])
        return out

    def _rows_one_by_one(self, s: int, a: int, b: int, offs: list[int], crcs: list[int], data: bytes) -> list:
        """Rows checked one at a time: which samples of a damaged range are unreadable."""
        url, base, out = self.url(s), offs[0], []
        for i, r in enumerate(range(a, b)):
            lo, hi = offs[i] - base, offs[i + 1] - base
            try:
                if hi > len(data):
                    raise CorruptShard(f"shard {url} is truncated (sample {r} ends at byte {offs[i + 1]}); delete "
                                       "the artifact and rerun its stage")
                block = data[lo:hi]
                if self.verify:
                    shardindex.check_sample(block, crcs[i], url, offs[i])
                recs = list(tario.records(block, url, whole=False))
                if len(recs) != 1:
                    raise CorruptShard(f"shard {url} does not match its index at byte {offs[i]}; delete the "
                                       "artifact and rerun its stage")
                out.append(recs[0])
            except CorruptShard as err:
                self.corrupt(s, err, range(r, r + 1))
                out.append(None)
        return out
