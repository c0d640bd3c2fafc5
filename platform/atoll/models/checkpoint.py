"""Folder checkpoints in the store, diffusers-style: ``config.json`` + safetensors.

Layout under ``prefix``::

    config.json         {"kind": "dit" | "vdit" | "router", "config": {...}, **extra}
    model.safetensors   the EMA weights when an EMA is given, else the model's
    raw.safetensors     the raw (non-EMA) weights, only when an EMA is given
    manifest.json       written last by ``store.commit``: files, sizes, sha256

A folder without ``manifest.json`` is not a checkpoint (a save that died half
way); ``from_pretrained`` refuses it.
"""
from __future__ import annotations

import json
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from atoll.models.dit import DiT, DiTConfig
from atoll.models.ema import EMA
from atoll.models.router import Router, RouterConfig
from atoll.models.video_dit import VideoDiT, VideoDiTConfig
from atoll.store import MANIFEST, S3Config, Store, StoreError, join, open_store
from atoll.store.base import sha256_bytes

FORMAT = "atoll-checkpoint/v1"
WEIGHTS = ("model", "raw")


def _kind(model: nn.Module) -> str:
    if isinstance(model, DiT):
        return "dit"
    if isinstance(model, Router):
        return "router"
    if isinstance(model, VideoDiT):
        return "vdit"
    raise ValueError(f"save_pretrained takes a DiT, a VideoDiT or a Router, got {type(model).__name__}")


def _to_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().to("cpu").contiguous() for k, v in state.items()})


def save_pretrained(model: nn.Module, store: Store, prefix: str, *, ema: EMA | None = None,
                    ema_weights: dict[str, torch.Tensor] | None = None,
                    extra: dict[str, Any] | None = None) -> dict:
    """Writes the checkpoint folder at ``prefix`` and commits it (manifest last). Returns the manifest.

    ``ema`` (an ``EMA``) or ``ema_weights`` (its state dict, e.g. from a training island's sharded
    EMA): the averaged weights become ``model.safetensors`` and the model's own ``raw.safetensors``.
    An existing checkpoint at ``prefix`` is uncommitted first, so a reader never
    sees new files under an old manifest.
    """
    if ema is not None and ema_weights is not None:
        raise ValueError("pass ema or ema_weights, not both")
    if ema is not None:
        ema_weights = ema.state_dict()
    kind = _kind(model)
    extra = dict(extra or {})
    clash = {"kind", "config"} & extra.keys()
    if clash:
        raise ValueError(f"save_pretrained extra must not set {sorted(clash)}; they are written from the model")
    store.delete(join(prefix, MANIFEST))
    files: dict[str, bytes] = {
        "config.json": json.dumps({"kind": kind, "config": model.config.to_dict(), **extra},
                                  indent=2, sort_keys=True, default=str).encode(),
    }
    if ema_weights is not None:
        files["model.safetensors"] = _to_bytes(ema_weights)
        files["raw.safetensors"] = _to_bytes(model.state_dict())
    else:
        files["model.safetensors"] = _to_bytes(model.state_dict())
    for name, data in files.items():
        store.put_bytes(join(prefix, name), data)
    manifest = {
        "format": FORMAT,
        "kind": kind,
        "ema": ema_weights is not None,
        "files": [{"name": n, "size": len(d), "sha256": sha256_bytes(d)} for n, d in files.items()],
    }
    return store.commit(prefix, manifest)


def _open(uri_or_store: str | Store, prefix: str, s3: S3Config | None) -> tuple[Store, dict]:
    store = open_store(uri_or_store, s3) if isinstance(uri_or_store, str) else uri_or_store
    manifest = store.manifest(prefix)
    if manifest is None:
        raise FileNotFoundError(f"no committed checkpoint at {store.url(prefix)} (no {MANIFEST}); "
                                "train the expert/router first (atoll run JOB.yaml) or check the run URI")
    return store, manifest


def load_config(uri_or_store: str | Store, prefix: str = "", *, s3: S3Config | None = None) -> dict:
    """The checkpoint's ``config.json`` (``kind``, ``config`` and any extra keys)."""
    store, _ = _open(uri_or_store, prefix, s3)
    return store.get_json(join(prefix, "config.json"))


def config_of(uri_or_store: str | Store, prefix: str = "", *, s3: S3Config | None = None):
    """The checkpoint's model config (``DiTConfig``, ``RouterConfig`` or ``VideoDiTConfig``), no weights read."""
    store, _ = _open(uri_or_store, prefix, s3)
    return _config(store, prefix)


def _config(store: Store, prefix: str):
    meta = store.get_json(join(prefix, "config.json"))
    kinds = {"dit": DiTConfig, "router": RouterConfig, "vdit": VideoDiTConfig}
    if meta.get("kind") not in kinds:
        raise StoreError(f"{store.url(join(prefix, 'config.json'))} has kind {meta.get('kind')!r}; "
                         "expected 'dit', 'vdit' or 'router'")
    return kinds[meta["kind"]].from_dict(meta["config"])


def _built(config) -> nn.Module:
    return {DiTConfig: DiT, RouterConfig: Router, VideoDiTConfig: VideoDiT}[type(config)](config)


def from_pretrained(uri_or_store: str | Store, prefix: str = "", *, s3: S3Config | None = None,
                    weights: str = "model", map_location: str | torch.device = "cpu") -> nn.Module:
    """Loads a committed checkpoint as a DiT or Router in eval mode.

    ``uri_or_store``: a URI (``file:///abs/runs/x/experts/000``, ``s3://bucket/runs/x/experts/000``,
    a plain path) or a ``Store``; ``prefix`` is relative to it. ``weights``: ``"model"``
    (EMA when saved with one) or ``"raw"``. Hashes are checked against the manifest.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    store, manifest = _open(uri_or_store, prefix, s3)
    model = _built(_config(store, prefix))
    name = f"{weights}.safetensors"
    entry = {f["name"]: f for f in manifest.get("files", [])}.get(name)
    if entry is None:
        hint = " (it was saved without an EMA; use weights='model')" if weights == "raw" else ""
        raise FileNotFoundError(f"checkpoint {store.url(prefix)} has no {name}{hint}")
    data = store.get_bytes(join(prefix, name))
    if sha256_bytes(data) != entry["sha256"]:
        raise StoreError(f"{store.url(join(prefix, name))} does not match its manifest hash (corrupt or "
                         "overwritten); save the checkpoint again")
    model.load_state_dict(st_load(data), strict=True)
    return model.to(map_location).eval()
