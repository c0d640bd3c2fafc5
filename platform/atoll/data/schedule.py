"""Which sample a rank trains on at each position: a pure function of (seed, world, rank, position).

The design is a deterministic chunk/window schedule over an indexed shard format (each
shard has a sample index, ``atoll.data.shardindex``), chosen over webdataset's stream
shuffle buffer and over ``wids``:

* a shuffle buffer's content depends on every sample that went through it, so a resume
  at step ``s`` would have to replay the stream from the epoch start; here the sample at
  any position is computed directly, and a resumed run reads only from its own window on;
* ``wids`` gives random access by caching whole shards on local disk and shells out to the
  AWS CLI for S3; a global per-sample permutation would need one read per sample. Here
  reads are ranged reads of ``chunk`` consecutive samples through the store (file or S3).

The collection's samples (global ids ``0..n-1``, shards of all its artifacts in order)
are cut into chunks of ``chunk`` consecutive ids; the last one may be shorter. Each epoch
``e`` shuffles the full chunks (``default_rng([seed, e])``) and appends the short one;
chunk slot ``t`` of the epoch goes to rank ``t % world`` (every rank gets
``ceil(chunks / world)`` slots, wrapping around like ``DistributedSampler``'s padding
when chunks do not divide evenly). A rank's epoch is its slots in order, grouped into
*windows* of ``window // chunk`` slots; the samples of a window are permuted
(``default_rng([seed, e, world, rank, window index])``). A window is the shuffle buffer:
readers hold one or two windows, never the collection.

Position ``p`` of rank ``r`` is its ``p``-th sample over epochs; training step ``s`` with
``micro`` samples per rank and ``accum`` micro-batches uses positions
``(s * accum + a) * micro ...``. Changing ``world`` changes the assignment (a resume on
another number of workers goes on with a new split of the same epochs).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Schedule:
    n: int
    seed: int
    rank: int = 0
    world: int = 1
    chunk: int = 64
    window: int = 4096
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.n < 1:
            raise ValueError("a schedule needs at least one sample")
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank ({self.rank}) must be in 0..world-1 and world ({self.world}) >= 1")
        if self.chunk < 1 or self.window < 1:
            raise ValueError("chunk and window must be >= 1")
        full, last = divmod(self.n, self.chunk)
        chunks = full + (1 if last else 0)
        slots = -(-chunks // self.world)
        t = np.arange(slots) * self.world + self.rank  # this rank's slot positions in the epoch
        sizes = np.full(slots, self.chunk, np.int64)
        if last:
            sizes[(t % chunks) == chunks - 1] = last
        per = max(1, self.window // self.chunk)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self._cache.update(full=full, last=last, chunks=chunks, t=t, sizes=sizes, per=per,
                           starts=starts, win_starts=starts[::per] if len(starts) > 1 else starts)

    @property
    def epoch_length(self) -> int:
        """Samples in one epoch of this rank."""
        return int(self._cache["starts"][-1])

    @property
    def num_windows(self) -> int:
        return -(-len(self._cache["sizes"]) // self._cache["per"])

    def chunk_order(self, epoch: int) -> np.ndarray:
        """Chunk ids of epoch ``epoch`` in slot order (full chunks shuffled, the short one last)."""
        c = self._cache
        if c.get("order_epoch") != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(c["full"])
            c["order"] = np.concatenate([perm, [c["full"]]]) if c["last"] else perm
            c["order_epoch"] = epoch
        return c["order"]

    def window_chunks(self, epoch: int, w: int) -> list[tuple[int, int]]:
        """``(chunk id, samples)`` of each slot of window ``w`` of ``epoch``, in slot order."""
        c = self._cache
        order = self.chunk_order(epoch)
        lo, hi = w * c["per"], min((w + 1) * c["per"], len(c["sizes"]))
        return [(int(order[t % c["chunks"]]), int(s)) for t, s in zip(c["t"][lo:hi], c["sizes"][lo:hi])]

    def window_ids(self, epoch: int, w: int) -> np.ndarray:
        """Global ids of window ``w`` of ``epoch`` in the order they are trained on."""
        ids = np.concatenate([np.arange(cid * self.chunk, cid * self.chunk + s) for cid, s in
                              self.window_chunks(epoch, w)])
        perm = np.random.default_rng([self.seed, epoch, self.world, self.rank, w]).permutation(len(ids))
        return ids[perm]

    def windows(self, start: int, stop: int) -> list[tuple[int, int, int, int]]:
        """Rank-local positions ``start..stop-1`` as ``(epoch, window, lo, hi)`` slices of windows, in order."""
        out = []
        L, ws = self.epoch_length, self._cache["win_starts"]
        p = start
        while p < stop:
            epoch, o = divmod(p, L)
            w = int(np.searchsorted(ws, o, side="right") - 1)
            w_end = int(ws[w + 1]) if w + 1 < len(ws) else L
            hi = min(w_end, o + (stop - p))
            out.append((int(epoch), w, int(o - ws[w]), int(hi - ws[w])))
            p += hi - o
        return out

    def ids(self, start: int, stop: int) -> np.ndarray:
        """Global ids at rank-local positions ``start..stop-1`` (before replacing unreadable samples)."""
        parts = [self.window_ids(e, w)[lo:hi] for e, w, lo, hi in self.windows(start, stop)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def fill_invalid(valid: np.ndarray) -> np.ndarray:
    """For a window in trained order with ``valid`` flags: the position each slot takes its sample from
    (itself when valid, else the next valid one, cyclically). Raises ValueError when none is valid."""
    ok = np.flatnonzero(valid)
    if len(ok) == 0:
        raise ValueError("no readable sample in the window")
    pos = np.arange(len(valid))
    return ok[np.searchsorted(ok, pos) % len(ok)]
