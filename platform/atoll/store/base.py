"""The store interface: one API over local folders and S3.

Every stage reads its inputs from and writes its outputs to a store. Keys are
'/'-separated paths relative to the store's root URI. Two guarantees hold for
every backend:

* ``put_bytes`` / ``put_file`` / ``writer`` are atomic: a reader sees the whole
  object or nothing (files: temporary name then ``os.replace``; S3: a PUT or a
  completed multipart upload is atomic by construction).
* An *artifact* (a folder of objects) is committed by writing its
  ``manifest.json`` last (``commit``); ``manifest`` returns ``None`` until then,
  so a stage that died half-way is simply not complete and is redone.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import posixpath
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST = "manifest.json"


class StoreError(RuntimeError):
    """A store operation failed; the message names the URI and the fix."""


class NotFound(StoreError, KeyError):
    """The key does not exist in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "not found"


def join(*parts: str) -> str:
    """Joins key parts with '/', dropping empty parts and stray slashes."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store(ABC):
    """Abstract store. Subclasses implement the primitive byte operations."""

    #: the root URI, e.g. ``file:///abs/runs`` or ``s3://bucket/prefix``
    uri: str

    # -- primitives ---------------------------------------------------------
    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys under ``prefix`` (recursive), sorted, relative to the root."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Deletes one object; a missing key is not an error."""

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None:
        """Uploads a local file (multipart on S3 for large files), atomically."""

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> Path:
        """Downloads ``key`` to a local path (written atomically)."""

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """A local filesystem path for ``key`` if the backend has one, else None."""

    # -- derived helpers ----------------------------------------------------
    def url(self, key: str = "") -> str:
        """The full URI of ``key`` (``file:///...`` or ``s3://...``)."""
        return self.uri.rstrip("/") + ("/" + key.strip("/") if key.strip("/") else "")

    def sub(self, prefix: str) -> "Store":
        """A view of this store rooted at ``prefix`` (shares the client)."""
        return PrefixStore(self, prefix)

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the whole object."""
        return io.BytesIO(self.get_bytes(key))

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        """Bytes ``start`` .. ``stop - 1`` of an object (fewer when the object is shorter).
        Backends override it with a ranged read; this fallback reads the whole object."""
        return self.get_bytes(key)[start:stop]

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """``with store.writer(key) as f: f.write(...)`` — committed on exit only."""
        buf = io.BytesIO()
        yield buf
        self.put_bytes(key, buf.getvalue())

    def put_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def get_json(self, key: str) -> Any:
        try:
            return json.loads(self.get_bytes(key))
        except json.JSONDecodeError as e:
            raise StoreError(f"{self.url(key)} is not valid JSON ({e}); delete it and rerun the stage") from e

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for k in keys:
            self.delete(k)
        return len(keys)

    # -- artifacts ----------------------------------------------------------
    def manifest(self, prefix: str) -> dict | None:
        """The committed manifest of the artifact at ``prefix``, or None."""
        key = join(prefix, MANIFEST)
        if not self.exists(key):
            return None
        return self.get_json(key)

    def commit(self, prefix: str, manifest: dict) -> dict:
        """Commits the artifact at ``prefix`` by writing its manifest last.

        Adds ``committed_at``. Callers list the artifact's files (with sizes and
        hashes) in the manifest themselves; nothing here reads them back.
        """
        m = dict(manifest)
        m.setdefault("committed_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.put_json(join(prefix, MANIFEST), m)
        return m

    def uncommit(self, prefix: str) -> None:
        """Marks the artifact incomplete (its manifest goes first), then deletes it."""
        self.delete(join(prefix, MANIFEST))
        self.delete_prefix(prefix)


class PrefixStore(Store):
    """A store view rooted at a key prefix of another store."""

    def __init__(self, parent: Store, prefix: str):
        self.parent = parent
        self.prefix = prefix.strip("/")
        self.uri = parent.url(self.prefix)

    def _k(self, key: str) -> str:
        return join(self.prefix, key)

    def put_bytes(self, key, data):
        self.parent.put_bytes(self._k(key), data)

    def get_bytes(self, key):
        return self.parent.get_bytes(self._k(key))

    def exists(self, key):
        return self.parent.exists(self._k(key))

    def list(self, prefix=""):
        n = len(self.prefix) + 1 if self.prefix else 0
        return [k[n:] for k in self.parent.list(self._k(prefix))]

    def delete(self, key):
        self.parent.delete(self._k(key))

    def put_file(self, key, path):
        self.parent.put_file(self._k(key), path)

    def get_file(self, key, path):
        return self.parent.get_file(self._k(key), path)

    def local_path(self, key):
        return self.parent.local_path(self._k(key))

    def open(self, key):
        return self.parent.open(self._k(key))

    def get_range(self, key, start, stop):
        return self.parent.get_range(self._k(key), start, stop)

    def sub(self, prefix):
        return PrefixStore(self.parent, join(self.prefix, prefix))

    @property
    def root(self) -> Store:
        return self.parent


def normpath_key(key: str) -> str:
    k = posixpath.normpath("/" + key).lstrip("/")
    return "" if k == "." else k
