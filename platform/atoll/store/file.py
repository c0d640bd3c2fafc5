"""The local-folder store (``file://``): atomic writes by temporary name + rename."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from atoll.store.base import NotFound, Store, StoreError, normpath_key


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` through a temporary file in the same folder and ``os.replace``: readers
    see the old file or the new one, never part of one (the folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FileStore(Store):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _p(self, key: str) -> Path:
        return self.root / normpath_key(key)

    def _mkdir(self, dst: Path) -> None:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {dst.parent} ({e.strerror}); check the store URI and permissions") from e

    def _atomic(self, key: str):
        dst = self._p(key)
        self._mkdir(dst)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
        return dst, fd, tmp

    def put_bytes(self, key: str, data: bytes) -> None:
        dst = self._p(key)
        self._mkdir(dst)
        write_atomic(dst, data)

    def put_file(self, key: str, path: str | Path) -> None:
        dst, fd, tmp = self._atomic(key)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._p(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"{self.url(key)} does not exist") from None

    def open(self, key: str):
        try:
            return open(self._p(key), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"{self.url(key)} does not exist") from None

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        try:
            with open(self._p(key), "rb") as f:
                f.seek(start)
                return f.read(max(0, stop - start))
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"{self.url(key)} does not exist") from None

    def get_file(self, key: str, path: str | Path) -> Path:
        src = self._p(key)
        if not src.is_file():
            raise NotFound(f"{self.url(key)} does not exist")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def exists(self, key: str) -> bool:
        return self._p(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._p(prefix)
        if base.is_file():
            return [normpath_key(prefix)]
        if not base.is_dir():
            return []
        out = []
        for dirpath, _, files in os.walk(base):
            for f in files:
                if f.startswith(".") and f.endswith(".tmp"):
                    continue  # an in-flight atomic write, not an object
                out.append(Path(dirpath, f).relative_to(self.root).as_posix())
        return sorted(out)

    def delete(self, key: str) -> None:
        self._p(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        return self._p(key)
