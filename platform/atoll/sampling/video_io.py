"""Videos as pictures (Pillow): animated GIF and a frame-strip PNG, plus the library video sampler.

MP4 is not written: no encoder ships here (no ffmpeg, PyAV or imageio); GIF is lossless
for these 1-channel/RGB clips.

Shapes: videos are uint8 ``[B, C, T, H, W]`` (C = 1 or 3); model output is float
``[B, C, T, H, W]`` in ``[-1, 1]``.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from atoll.sampling.errors import SamplingError
from atoll.sampling.grid import grid_array, png_bytes, to_uint8


def video_to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``[B, C, T, H, W]`` in [-1, 1] -> uint8 ``[B, C, T, H, W]``."""
    if x.dim() != 5:
        raise SamplingError(f"videos must have shape [B, C, T, H, W], got {list(x.shape)}")
    B, C, T, H, W = x.shape
    frames = to_uint8(x.transpose(1, 2).reshape(B * T, C, H, W))  # [B*T, C, H, W]
    return frames.reshape(B, T, C, H, W).transpose(1, 2).numpy()


def _check(videos: np.ndarray) -> np.ndarray:
    a = np.asarray(videos)
    if a.ndim != 5 or a.shape[1] not in (1, 3) or a.dtype != np.uint8:
        raise SamplingError(f"videos must be uint8 [B, C, T, H, W] with C = 1 or 3, got {a.dtype} {list(a.shape)}")
    return a


def frame_strip(videos: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 ``[B, C, T, H, W]`` -> one picture uint8 ``[rows, cols, C]``: a row per clip, a column per frame."""
    a = _check(videos)
    B, C, T, H, W = a.shape
    return grid_array(a.transpose(0, 2, 1, 3, 4).reshape(B * T, C, H, W), nrow=T, pad=pad)


def gif_bytes(videos: np.ndarray, nrow: int | None = None, fps: float = 6.0, scale: int = 2) -> bytes:
    """uint8 ``[B, C, T, H, W]`` -> an animated GIF (looping): frame ``k`` shows every clip at time ``k`` in a grid."""
    from PIL import Image

    a = _check(videos)
    B, C, T, H, W = a.shape
    nrow = nrow or B
    frames = []
    for k in range(T):
        g = grid_array(a[:, :, k], nrow=nrow)
        img = Image.fromarray(g[..., 0] if C == 1 else g)
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        frames.append(img.convert("L") if C == 1 else img.convert("RGB").quantize(256))
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def read_gif(data: bytes) -> np.ndarray:
    """GIF bytes -> uint8 ``[T, H, W]`` (luminance) frames, for checks."""
    from PIL import Image, ImageSequence

    img = Image.open(io.BytesIO(data))
    return np.stack([np.asarray(f.convert("L")) for f in ImageSequence.Iterator(img)])


VIDEO_MEDIA_TYPES = {"gif": "image/gif", "png": "image/png"}


def encode_video(videos: np.ndarray, format: str = "gif", *, nrow: int | None = None, fps: float = 6.0,
                 scale: int = 1) -> bytes:
    """uint8 ``[B, C, T, H, W]`` -> the bytes of one picture, in memory (what ``save_video`` writes, and
    what the server returns).

    ``gif``: one animated GIF (``gif_bytes``): frame ``k`` shows every clip at time ``k``, ``nrow`` clips per
    row (default all side by side); 1-channel clips are written in mode ``L``, so decoding gives back the
    exact uint8 frames (Pillow stores identical consecutive frames once, with their durations added).
    ``png``: the frame strip (``frame_strip``): a row per clip, a column per frame.
    """
    if format == "gif":
        return gif_bytes(videos, nrow=nrow, fps=fps, scale=scale)
    if format == "png":
        return png_bytes(frame_strip(videos), scale=scale)
    raise SamplingError(f"video format {format!r} is unknown; use one of {', '.join(VIDEO_MEDIA_TYPES)}")


def save_video(videos: np.ndarray, path_stem: str | Path, fps: float = 6.0, scale: int = 2) -> dict[str, Path]:
    """Writes ``STEM.gif`` and ``STEM.png`` (frame strip); returns both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    gif, png = stem.with_suffix(".gif"), stem.with_suffix(".png")
    gif.write_bytes(encode_video(videos, "gif", fps=fps, scale=scale))
    png.write_bytes(encode_video(videos, "png", scale=scale))
    return {"gif": gif, "png": png}


@torch.no_grad()
def sample_video(model, n: int, *, steps: int = 20, y: torch.Tensor | None = None, guidance: float = 1.0,
                 seed: int = 0, sampler: str = "euler", seq=None) -> torch.Tensor:
    """``n`` clips float ``[n, C, T, H, W]`` from a VideoDiT (rectified-flow ODE from t=1 to 0).

    The noise comes from ``torch.Generator().manual_seed(seed)`` on the CPU, so a
    sequence-parallel run (``seq`` = a ``UlyssesSequence``; every rank calls this with the
    same arguments) starts from the same noise as the single-rank sampler.
    """
    from atoll.models.samplers import sample

    cfg = model.config
    shape = (n, cfg.in_channels, cfg.frames, cfg.input_size, cfg.input_size)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    p = next(model.parameters())
    noise = noise.to(device=p.device, dtype=p.dtype)

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model.forward_with_cfg(x, t, y, guidance, seq=seq)

    return sample(model_fn, shape, steps=steps, sampler=sampler, noise=noise)
