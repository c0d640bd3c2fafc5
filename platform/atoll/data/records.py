"""Decoding one stored sample (a WebDataset record) into arrays: the payload registry.

A record is ``{"__key__", "__url__", ext: bytes}``; ``KEY.cls`` holds the label and
``KEY.txt`` the caption. Its *payload* (what a model trains on) is the first extension
present that has a registered ``Payload``: today ``png`` (uint8 image). A new kind of
stored sample, e.g. VAE latents as ``KEY.npy``, is one more ``register_payload`` call
with its decoder and its model layout; readers, shuffling and batching do not change.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from atoll.data.errors import CorruptShard


@dataclass(frozen=True)
class Payload:
    ext: str                                   # the record's extension, e.g. "png"
    field: str                                 # the sample dict's key, e.g. "image"
    decode: Callable[[bytes], np.ndarray]      # bytes -> the stored array (images: uint8 [H, W, C])
    to_model: Callable[[np.ndarray], np.ndarray]  # stored array -> the model's layout (images: [C, H, W])


PAYLOADS: dict[str, Payload] = {}


def register_payload(p: Payload) -> None:
    PAYLOADS[p.ext] = p


def decode_image(png: bytes) -> np.ndarray:
    """PNG bytes -> uint8 [H, W, C]."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        a = np.asarray(im)
    return a[:, :, None] if a.ndim == 2 else a


def decode_npy(data: bytes) -> np.ndarray:
    """``.npy`` bytes (a VAE latent, float32 [c, h, w]) -> the array (no pickles)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


register_payload(Payload("png", "image", decode_image, lambda a: a.transpose(2, 0, 1)))
register_payload(Payload("npy", "latent", decode_npy, lambda a: a))  # the encode stage's latents, [c, h, w]


def payload_of(raw: dict) -> Payload:
    for ext, p in PAYLOADS.items():
        if ext in raw:
            return p
    raise CorruptShard(f"sample {raw.get('__key__')} in shard {raw.get('__url__')} has no payload "
                       f"({', '.join(PAYLOADS)}); delete the artifact and rerun its stage")


def decode_record(raw: dict) -> dict:
    """A raw record as a sample ``{"key", <payload field> (e.g. "image" [H,W,C]), "label", "caption"}``."""
    p = payload_of(raw)
    try:
        txt = raw.get("txt")
        return {"key": raw["__key__"], p.field: p.decode(raw[p.ext]),
                "label": int(raw["cls"].decode()) if "cls" in raw else -1,
                "caption": txt.decode("utf-8") if txt else None}
    except Exception as e:
        raise CorruptShard(f"sample {raw.get('__key__')} in shard {raw.get('__url__')} cannot be decoded ({e}); "
                           "delete the artifact and rerun its stage") from None


def model_array(raw: dict) -> tuple[np.ndarray, int, str | None]:
    """(payload in the model's layout, label, caption) of a raw record: what a training batch holds."""
    s = decode_record(raw)
    p = payload_of(raw)
    return np.ascontiguousarray(p.to_model(s[p.field])), s["label"], s["caption"]
