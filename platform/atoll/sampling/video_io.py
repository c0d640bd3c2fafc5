"""Videos as pictures: animated GIF and a frame-strip PNG (Pillow), MP4 (H.264), the library video sampler.

MP4 goes through ``imageio-ffmpeg``, whose wheel ships a static ffmpeg with libx264 (no system
ffmpeg needed): H.264, yuv420p (what browsers and players decode), CRF 12 (visually lossless;
decoded 1-channel frames are within a few grey levels of the input). GIF stays the lossless
format for 1-channel clips.

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


def _video_frames(videos: np.ndarray, nrow: int | None, scale: int) -> np.ndarray:
    """uint8 ``[B, C, T, H, W]`` -> uint8 ``[T, rows, cols, C]``: frame ``k`` = every clip at time ``k`` in a grid."""
    a = _check(videos)
    T = a.shape[2]
    frames = np.stack([grid_array(a[:, :, k], nrow=nrow or a.shape[0]) for k in range(T)])
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    return frames


def mp4_bytes(videos: np.ndarray, nrow: int | None = None, fps: float = 6.0, scale: int = 2, crf: int = 12) -> bytes:
    """uint8 ``[B, C, T, H, W]`` -> an H.264 MP4 (yuv420p; sides padded to even, as 4:2:0 needs): frame ``k``
    shows every clip at time ``k`` in a grid, ``nrow`` clips per row (default all side by side)."""
    import tempfile

    try:
        import imageio_ffmpeg
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise SamplingError("MP4 output needs the imageio-ffmpeg package (pip install imageio-ffmpeg); "
                            "use format gif or png") from e
    frames = _video_frames(videos, nrow, scale)
    T, H, W, C = frames.shape
    frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)))
    with tempfile.TemporaryDirectory(prefix="atoll-mp4-") as d:
        path = f"{d}/clip.mp4"
        writer = imageio_ffmpeg.write_frames(
            path, (W + W % 2, H + H % 2), fps=fps, codec="libx264", pix_fmt_in="gray" if C == 1 else "rgb24",
            pix_fmt_out="yuv420p", quality=None, macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-crf", str(int(crf)), "-movflags", "+faststart"])
        writer.send(None)  # start ffmpeg
        for f in frames:
            writer.send(np.ascontiguousarray(f))
        writer.close()
        return Path(path).read_bytes()


def read_mp4(data: bytes) -> np.ndarray:
    """MP4 bytes -> uint8 ``[T, H, W]`` (luminance) frames, for checks."""
    import tempfile

    import imageio_ffmpeg

    with tempfile.TemporaryDirectory(prefix="atoll-mp4-") as d:
        path = Path(d) / "clip.mp4"
        path.write_bytes(data)
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="gray", bpp=1)
        meta = gen.__next__()
        w, h = meta["size"]
        return np.stack([np.frombuffer(f, np.uint8).reshape(h, w) for f in gen])


VIDEO_MEDIA_TYPES = {"gif": "image/gif", "png": "image/png", "mp4": "video/mp4"}


def encode_video(videos: np.ndarray, format: str = "gif", *, nrow: int | None = None, fps: float = 6.0,
                 scale: int = 1) -> bytes:
    """uint8 ``[B, C, T, H, W]`` -> the bytes of one picture, in memory (what ``save_video`` writes, and
    what the server returns).

    ``gif``: one animated GIF (``gif_bytes``): frame ``k`` shows every clip at time ``k``, ``nrow`` clips per
    row (default all side by side); 1-channel clips are written in mode ``L``, so decoding gives back the
    exact uint8 frames (Pillow stores identical consecutive frames once, with their durations added).
    ``png``: the frame strip (``frame_strip``): a row per clip, a column per frame.
    ``mp4``: H.264 (``mp4_bytes``), the GIF's layout.
    """
    if format == "gif":
        return gif_bytes(videos, nrow=nrow, fps=fps, scale=scale)
    if format == "mp4":
        return mp4_bytes(videos, nrow=nrow, fps=fps, scale=scale)
    if format == "png":
        return png_bytes(frame_strip(videos), scale=scale)
    raise SamplingError(f"video format {format!r} is unknown; use one of {', '.join(VIDEO_MEDIA_TYPES)}")


def save_video(videos: np.ndarray, path_stem: str | Path, fps: float = 6.0, scale: int = 2) -> dict[str, Path]:
    """Writes ``STEM.gif``, ``STEM.mp4`` and ``STEM.png`` (frame strip); returns the paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = {fmt: stem.with_suffix(f".{fmt}") for fmt in ("gif", "mp4", "png")}
    for fmt, path in out.items():
        path.write_bytes(encode_video(videos, fmt, fps=fps, scale=scale))
    return out


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
