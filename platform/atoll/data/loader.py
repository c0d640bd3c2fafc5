"""Training batches from shard artifacts: streamed (default) or held in memory, the same samples either way.

Both loaders follow one ``Schedule`` (``atoll.data.schedule``): the samples at positions
``start..stop-1`` of rank ``r`` are a pure function of (seed, world, rank, positions),
so a resumed run gets exactly the batches the interrupted one would have had.

* ``StreamLoader`` holds one shuffle window (``window`` samples) plus ``prefetch`` more,
  assembled on a background thread from ranged reads (``threads`` at once) of the
  store: memory depends on the window and the sample size, not on the dataset.
* ``MemoryLoader`` gathers batches from ``MemoryData``, the whole collection decoded once
  (the path of small data, and the baseline the benchmark compares with).

Unreadable samples (``on_corrupt: skip``) are replaced inside their window by the next
readable one in trained order, so batches keep their size and stay deterministic.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from atoll.data.collection import Collection
from atoll.data.errors import DataError
from atoll.data.records import model_array
from atoll.data.schedule import Schedule, fill_invalid


@dataclass
class Part:
    """Samples in trained order: payload arrays ``x`` [n, ...], labels, the artifact each came from, captions."""
    x: np.ndarray
    label: np.ndarray
    artifact: np.ndarray
    captions: list | None

    def take(self, sel: slice) -> "Part":
        return Part(self.x[sel], self.label[sel], self.artifact[sel],
                    None if self.captions is None else self.captions[sel])

    @staticmethod
    def cat(parts: list["Part"]) -> "Part":
        if len(parts) == 1:
            return parts[0]
        caps = None if any(p.captions is None for p in parts) else sum((p.captions for p in parts), [])
        return Part(np.concatenate([p.x for p in parts]), np.concatenate([p.label for p in parts]),
                    np.concatenate([p.artifact for p in parts]), caps)


def _window_error(col: Collection, e: int, w: int) -> DataError:
    return DataError(f"every sample of shuffle window {w} of epoch {e} is unreadable (corrupt shards: "
                     f"{', '.join(col.stats['corrupt_shards'][:5])}); delete the artifact and rerun its stage")


class Loader:
    """``batch(start, stop) -> Part`` for rank-local positions; ``stats()`` for the metrics."""

    def __init__(self, col: Collection, schedule: Schedule):
        self.col, self.schedule = col, schedule
        self.wait_s = 0.0

    def window(self, e: int, w: int) -> Part: ...

    def batch(self, start: int, stop: int) -> Part:
        t0 = time.perf_counter()
        parts = [self.window(e, w).take(slice(lo, hi)) for e, w, lo, hi in self.schedule.windows(start, stop)]
        self.wait_s += time.perf_counter() - t0
        return Part.cat(parts)

    def stats(self) -> dict:
        s = self.col.stats
        return {"reader": type(self).__name__, "corrupt_shards": len(s["corrupt_shards"]),
                "corrupt_shard_names": list(s["corrupt_shards"]), "skipped_samples": s["skipped_samples"],
                "bytes_read": s["bytes_read"], "reads": s["reads"], "wait_s": round(self.wait_s, 3)}

    def close(self) -> None:
        pass


class MemoryData:
    """Every sample of a collection decoded once (shard by shard, one ranged read each); shared by the
    memory loaders of all schedules (training ranks, the router's eval set)."""

    def __init__(self, col: Collection):
        x, labels, caps, valid = None, np.full(col.n, -1, np.int64), [None] * col.n, np.zeros(col.n, bool)
        for s in range(len(col.shards)):
            g0, count = int(col.starts[s]), int(col.starts[s + 1] - col.starts[s])
            if count == 0:
                continue
            for r, raw in enumerate(col.rows(s, 0, count)):
                if raw is None:
                    continue
                arr, label, cap = _decode(col, s, g0 + r, raw)
                if arr is None:
                    continue
                if x is None:
                    x = np.zeros((col.n, *arr.shape), arr.dtype)
                x[g0 + r], labels[g0 + r], caps[g0 + r], valid[g0 + r] = arr, label, cap, True
        if x is None:
            raise DataError(f"no readable sample in {', '.join(col.store.url(p) for p in col.prefixes)}")
        self.x, self.labels, self.valid = x, labels, valid
        self.captions = caps if any(c is not None for c in caps) else None
        self.artifact = col.artifact_of(np.arange(col.n))


class MemoryLoader(Loader):
    """Batches gathered from ``MemoryData`` by the schedule."""

    def __init__(self, col: Collection, schedule: Schedule, data: MemoryData | None = None):
        super().__init__(col, schedule)
        self.data = data or MemoryData(col)
        self._last: tuple | None = None

    def window(self, e: int, w: int) -> Part:
        if self._last is None or self._last[0] != (e, w):
            ids = self.schedule.window_ids(e, w)
            try:
                ids = ids[fill_invalid(self.data.valid[ids])]
            except ValueError:
                raise _window_error(self.col, e, w) from None
            self._last = ((e, w), ids)
        return _LazyPart(self.data, self._last[1])


class _LazyPart(Part):
    """A window of the in-memory loader: gathers only the rows a batch takes."""

    def __init__(self, m: MemoryData, ids: np.ndarray):
        self.m, self.ids = m, ids

    def take(self, sel) -> Part:
        ids = self.ids[sel]
        caps = None if self.m.captions is None else [self.m.captions[i] for i in ids.tolist()]
        return Part(self.m.x[ids], self.m.labels[ids], self.m.artifact[ids], caps)


def _decode(col: Collection, s: int, gid: int, raw: dict):
    """(array, label, caption) of a raw record; (None, -1, None) when it does not decode and is skipped."""
    from atoll.data.errors import CorruptShard

    try:
        return model_array(raw)
    except CorruptShard as err:
        col.corrupt(s, err, range(gid - int(col.starts[s]), gid - int(col.starts[s]) + 1))
        return None, -1, None


class StreamLoader(Loader):
    """Assembles shuffle windows from ranged reads, ``prefetch`` windows ahead on a background thread."""

    def __init__(self, col: Collection, schedule: Schedule, *, prefetch: int = 1, threads: int = 4):
        super().__init__(col, schedule)
        self.prefetch, self.pool = max(0, prefetch), ThreadPoolExecutor(max(1, threads), "atoll-read")
        self._ready: dict[tuple[int, int], Part | BaseException] = {}
        self._cursor: tuple[int, int] | None = None
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.read_s = 0.0

    def _next(self, ew: tuple[int, int]) -> tuple[int, int]:
        e, w = ew
        return (e, w + 1) if w + 1 < self.schedule.num_windows else (e + 1, 0)

    def assemble(self, e: int, w: int) -> Part:
        t0 = time.perf_counter()
        sch, col = self.schedule, self.col
        order = sch.window_ids(e, w)
        chunks = sorted({cid for cid, _ in sch.window_chunks(e, w)})
        got = dict(zip(chunks, self.pool.map(lambda c: self._read_chunk(c), chunks)))
        C = sch.chunk
        cells = [got[g // C][g % C] for g in order.tolist()]
        valid = np.array([c[0] is not None for c in cells], bool)
        try:
            cells = [cells[i] for i in fill_invalid(valid).tolist()]
        except ValueError:
            raise _window_error(col, e, w) from None
        caps = [c[2] for c in cells]
        part = Part(np.stack([c[0] for c in cells]), np.array([c[1] for c in cells], np.int64),
                    np.array([c[3] for c in cells], np.int64), caps if any(c is not None for c in caps) else None)
        self.read_s += time.perf_counter() - t0
        return part

    def _read_chunk(self, cid: int) -> list[tuple]:
        C, col = self.schedule.chunk, self.col
        lo, hi = cid * C, min(cid * C + C, col.n)
        out = []
        for s, a, b in col.spans(lo, hi):
            art = int(col.shards[s][0])
            for r, raw in zip(range(a, b), col.rows(s, a, b)):
                arr, label, cap = (None, -1, None) if raw is None else _decode(col, s, int(col.starts[s]) + r, raw)
                out.append((arr, label, cap, art))
        return out

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and (self._cursor is None or len(self._ready) > self.prefetch):
                    self._cv.wait()
                if self._stop:
                    return
                ew = self._cursor
            try:
                part: Part | BaseException = self.assemble(*ew)
            except BaseException as e:  # handed to the consumer, raised there
                part = e
            with self._cv:
                if self._cursor == ew:  # not re-targeted meanwhile
                    self._ready[ew] = part
                    self._cursor = None if isinstance(part, BaseException) else self._next(ew)
                self._cv.notify_all()

    def window(self, e: int, w: int) -> Part:
        ew = (e, w)
        with self._cv:
            for k in [k for k in self._ready if k < ew]:  # consumed windows
                del self._ready[k]
            if ew not in self._ready and self._cursor != ew:  # a seek (start or resume): restart there
                self._ready.clear()
                self._cursor = ew
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="atoll-prefetch", daemon=True)
                self._thread.start()
            self._cv.notify_all()
            while ew not in self._ready:
                self._cv.wait()
            part = self._ready[ew]
            self._cv.notify_all()
        if isinstance(part, BaseException):
            raise part
        return part

    def stats(self) -> dict:
        return {**super().stats(), "read_s": round(self.read_s, 3)}

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self.pool.shutdown(wait=False, cancel_futures=True)


def open_loader(col: Collection, schedule: Schedule, mode: str = "stream", *, memory: MemoryData | None = None,
                prefetch: int = 1, threads: int = 4) -> Loader:
    """A loader for ``schedule``: ``stream`` (ranged reads, bounded memory) or ``memory`` (``memory`` or decoded now)."""
    if mode == "memory":
        return MemoryLoader(col, schedule, memory)
    if mode == "stream":
        return StreamLoader(col, schedule, prefetch=prefetch, threads=threads)
    raise DataError(f"data.loader.mode must be 'stream' or 'memory', got {mode!r}")
