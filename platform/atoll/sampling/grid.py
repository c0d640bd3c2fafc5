"""Images as pictures: float model output to uint8, and uint8 batches to a PNG grid (Pillow)."""
from __future__ import annotations

import io

import numpy as np
import torch

from atoll.sampling.errors import SamplingError


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model space ``[-1, 1]`` float ``[N, C, H, W]`` -> uint8 ``[0, 255]`` ``[N, C, H, W]`` (clamped, rounded)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def grid_array(images: torch.Tensor | np.ndarray, nrow: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` (C = 1 or 3) -> uint8 ``[rows*(H+pad)+pad, nrow*(W+pad)+pad, C]``.

    Images fill the grid row by row, ``nrow`` per row; empty cells stay ``pad_value``.
    """
    a = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise SamplingError(f"grid images must have shape [N, C, H, W] with C = 1 or 3, got {list(a.shape)}")
    if a.dtype != np.uint8:
        raise SamplingError(f"grid images must be uint8, got {a.dtype}; convert with to_uint8")
    if nrow < 1:
        raise SamplingError(f"nrow must be >= 1, got {nrow}")
    n, c, h, w = a.shape
    rows = max(1, -(-n // nrow))
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[y:y + h, x:x + w] = a[i].transpose(1, 2, 0)
    return out


def png_bytes(array: np.ndarray, scale: int = 1) -> bytes:
    """uint8 ``[H, W, C]`` (C = 1 or 3) -> PNG bytes, upscaled by ``scale`` (nearest)."""
    from PIL import Image

    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def grid_png(images: torch.Tensor | np.ndarray, nrow: int, pad: int = 2, scale: int = 1) -> bytes:
    """uint8 ``[N, C, H, W]`` -> PNG bytes of a grid with ``nrow`` images per row (see ``grid_array``)."""
    return png_bytes(grid_array(images, nrow, pad), scale)


def default_scale(height: int) -> int:
    """An upscale factor so tiny images (8x8, 28x28) are visible: aims at ~64 px per image."""
    return max(1, 64 // max(1, height))
