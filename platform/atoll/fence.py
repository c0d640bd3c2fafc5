"""Fencing: only the current attempt of a training unit may write into the unit's folder.

A unit (an expert or the router) can have two attempts alive at once: the control
plane declared island A lost (no answer for ``islands.lostAfterSeconds``) and
resubmitted the unit to island B, while the job on A, cut off by a network
partition, still runs. When A's link comes back its attempt must not write the
expert. The rule, kept in the store so it holds across islands:

* before it submits attempt N of a unit, the control plane writes
  ``<unit>/attempt.json`` = ``{"attempt": N, "job_id": ..., "island": ..., "at": ...}``
  (``claim``);
* the training job of attempt N writes through ``guard(unit_store, N)``: every
  put, delete and commit first reads ``attempt.json`` and raises ``Superseded``
  when it names another attempt; every manifest it commits records ``"attempt": N``.

So an old attempt's checkpoints, progress, model files and manifests are refused
as soon as a newer attempt holds the unit. What a store without compare-and-swap
cannot refuse: a write that passed its check and was already on the wire when the
link went down lands when the link comes back (a retried TCP connection). The old
attempt's next write is refused, so it is at most one object per process.
Attempt 0 (the ``local`` target, one control plane on one machine) is not fenced.
"""
from __future__ import annotations

import time
from pathlib import Path

from atoll.store import Store, StoreError

KEY = "attempt.json"


class Superseded(StoreError):
    """This attempt of a unit no longer holds it: a newer attempt was submitted elsewhere."""


def claim(unit: Store, attempt: int, **info) -> dict:
    """Records that ``attempt`` holds ``unit`` from now on (the control plane, before submitting it)."""
    rec = {"attempt": int(attempt), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    unit.put_json(KEY, rec)
    return rec


def holder(unit: Store) -> dict | None:
    """The attempt that holds ``unit`` (``attempt.json``), or None when no attempt was ever fenced."""
    return unit.get_json(KEY) if unit.exists(KEY) else None


class FencedStore(Store):
    """A view of ``inner`` whose writes are refused once ``attempt`` no longer holds ``fence``."""

    def __init__(self, inner: Store, fence: Store, attempt: int):
        self.inner, self.fence, self.attempt = inner, fence, int(attempt)
        self.uri = inner.uri

    def check(self) -> None:
        h = holder(self.fence)
        if h is not None and int(h.get("attempt", -1)) != self.attempt:
            where = ", ".join(f"{k} {h[k]}" for k in ("island", "job_id") if h.get(k))
            raise Superseded(f"attempt {self.attempt} of {self.fence.uri} was superseded by attempt {h.get('attempt')}"
                             f" ({where or 'no details'}, since {h.get('at', '?')}); this attempt stops without "
                             "writing. Nothing to fix: the newer attempt trains the unit")

    # -- writes: checked ------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        self.check()
        self.inner.put_bytes(key, data)

    def put_file(self, key: str, path: str | Path) -> None:
        self.check()
        self.inner.put_file(key, path)

    def delete(self, key: str) -> None:
        self.check()
        self.inner.delete(key)

    def commit(self, prefix: str, manifest: dict) -> dict:
        return super().commit(prefix, {**manifest, "attempt": self.attempt})

    # -- reads: passed through ------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def get_file(self, key: str, path: str | Path) -> Path:
        return self.inner.get_file(key, path)

    def local_path(self, key: str) -> Path | None:
        return self.inner.local_path(key)

    def open(self, key: str):
        return self.inner.open(key)

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        return self.inner.get_range(key, start, stop)

    def sub(self, prefix: str) -> Store:
        return FencedStore(self.inner.sub(prefix), self.fence, self.attempt)


def guard(unit: Store, attempt: int | None) -> Store:
    """``unit`` fenced for ``attempt`` (refused at once if already superseded); attempt 0/None: ``unit`` itself."""
    if not attempt:
        return unit
    fenced = FencedStore(unit, unit, attempt)
    fenced.check()
    return fenced


__all__ = ["KEY", "FencedStore", "Superseded", "claim", "guard", "holder"]
