"""Pretrained model folders (``save_pretrained`` layout) given as a local path or a store URI.

``local_dir`` turns ``/path``, ``file:///path`` or ``s3://bucket/prefix`` into a local folder
(an S3 prefix is downloaded once into ``$ATOLL_MODEL_CACHE``, default
``~/.cache/atoll/models``, keyed by its URI and listing); ``identity`` is the sha256 of the
folder's config and weight files, which is what a run records to recognise the model later.
Nothing here reaches a model hub.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from atoll.data.errors import DataError
from atoll.store import S3Config, open_store

#: files that make up a model's identity (configs and weights; not READMEs or tokenizer files)
_IDENTITY_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth")


def _cache_root() -> Path:
    return Path(os.environ.get("ATOLL_MODEL_CACHE") or Path.home() / ".cache" / "atoll" / "models")


def local_dir(path: str, field: str, s3: S3Config | None = None) -> Path:
    """The local folder of the model at ``path`` (the spec field ``field`` names it in errors)."""
    if not path:
        raise DataError(f"{field} is empty; set it to a folder saved with save_pretrained (or its s3:// URI)")
    if path.startswith("s3://"):
        return _download(path, field, s3)
    store = open_store(path)
    root = Path(store.local_path(""))
    if not root.is_dir():
        raise DataError(f"{field}: {path} is not a folder; point it at a folder saved with save_pretrained "
                        "(config.json and the weights) or its s3:// URI")
    return root


def _download(uri: str, field: str, s3: S3Config | None) -> Path:
    store = open_store(uri, s3)
    try:
        keys = store.list("")
    except Exception as e:  # noqa: BLE001 - bucket missing, credentials: say which field
        raise DataError(f"{field}: cannot list {uri} ({e}); fix the URI or the store credentials") from None
    if not keys:
        raise DataError(f"{field}: {uri} holds no files; upload the save_pretrained folder there or fix the URI")
    tag = hashlib.sha256(json.dumps([uri, keys]).encode()).hexdigest()[:20]
    dst = _cache_root() / tag
    if dst.is_dir():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{tag}-", dir=dst.parent))
    try:
        for key in keys:
            store.get_file(key, tmp / key)
        os.replace(tmp, dst)  # atomic: a folder in the cache is always complete
    except OSError:
        if not dst.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def read_config(folder: Path, field: str, what: str) -> dict:
    """``config.json`` of a save_pretrained folder; a clear error when it is missing or not JSON."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise DataError(f"{field}: {folder} has no config.json, so it is not a {what} folder; save the model "
                        f"with save_pretrained(folder) and point {field} at that folder")
    try:
        return json.loads(cfg.read_text())
    except ValueError as e:
        raise DataError(f"{field}: {cfg} is not valid JSON ({e}); re-save the model with save_pretrained") from None


def identity(folder: Path) -> str:
    """sha256 over the names and bytes of the folder's config and weight files (sorted)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in _IDENTITY_SUFFIXES and not p.name.startswith("."):
            h.update(p.relative_to(folder).as_posix().encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()
