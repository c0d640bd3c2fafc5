"""Object store: ``file://`` folders and ``s3://`` buckets behind one interface."""
from __future__ import annotations

import os
from pathlib import Path

from atoll.store.base import MANIFEST, NotFound, Store, StoreError, join
from atoll.store.s3 import S3Config

DEFAULT_ROOT = "./runs"

__all__ = ["MANIFEST", "NotFound", "S3Config", "Store", "StoreError", "join", "open_store", "default_root"]


def default_root() -> str:
    """``$ATOLL_STORE`` if set, else ``./runs`` in the working directory."""
    return os.environ.get("ATOLL_STORE") or DEFAULT_ROOT


def open_store(uri: str | None = None, s3: S3Config | None = None) -> Store:
    """Opens a store from a URI: ``file:///path``, a plain path, or ``s3://bucket/prefix``."""
    uri = uri or default_root()
    if uri.startswith("s3://"):
        from atoll.store.s3 import S3Store

        return S3Store(uri, s3)
    if uri.startswith("file://"):
        # the inverse of Path.as_uri() (what FileStore.uri is): %-escapes, file://localhost/
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(uri)
        # file://./runs and file://runs stay relative paths, as before
        host = "" if parts.netloc == "localhost" else parts.netloc
        uri = unquote(host + parts.path)
    elif "://" in uri:
        raise StoreError(f"store URI {uri!r} has an unknown scheme; use file:///path, a plain path or s3://bucket/prefix")
    from atoll.store.file import FileStore

    return FileStore(Path(uri))
