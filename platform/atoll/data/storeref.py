"""A picklable reference to a store, so Ray workers can reopen it (clients are never pickled)."""
from __future__ import annotations

from dataclasses import dataclass

from atoll.store import S3Config, Store, open_store


@dataclass(frozen=True)
class StoreRef:
    uri: str
    s3: S3Config | None = None

    @classmethod
    def of(cls, store: Store) -> "StoreRef":
        root = store
        while hasattr(root, "parent"):
            root = root.parent
        return cls(store.uri, getattr(root, "config", None))

    def open(self) -> Store:
        return open_store(self.uri, self.s3)
