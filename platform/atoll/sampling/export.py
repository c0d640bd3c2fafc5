"""Samples as files other tools can score: one PNG (GIF for video) per image, or one ``.npz``.

``--out-dir DIR``: ``DIR/000000.png`` ... (grey or RGB, the model's own resolution, no
upscaling) and ``DIR/labels.csv`` (``file,label,class_name``), the layout image-folder
metrics (clean-fid, torch-fidelity) read. ``--npz FILE``: ``arr_0`` uint8 images
``[N, H, W, C]`` (video ``[N, T, H, W, C]``) and ``arr_1`` int64 labels, the layout of the
ADM / DiT sample files their evaluation suites read, plus ``class_names``.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from atoll.sampling.grid import png_bytes
from atoll.store.file import write_atomic


def image_name(i: int, video: bool) -> str:
    return f"{i:06d}.{'gif' if video else 'png'}"


class FolderWriter:
    """Writes images as they are produced (chunk by chunk), then ``labels.csv`` on ``close``."""

    def __init__(self, folder: Path, class_names: list[str]):
        self.folder, self.class_names = Path(folder), class_names
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows: list[tuple[str, str, str]] = []

    def add(self, images: torch.Tensor, labels: torch.Tensor | None, start: int) -> None:
        a = images.cpu().numpy()
        video = a.ndim == 5
        for j in range(a.shape[0]):
            name = image_name(start + j, video)
            if video:
                from atoll.sampling.video_io import gif_bytes

                data = gif_bytes(a[j: j + 1], nrow=1, scale=1)
            else:
                data = png_bytes(a[j].transpose(1, 2, 0))
            write_atomic(self.folder / name, data)
            lab = None if labels is None else int(labels[j])
            cname = self.class_names[lab] if lab is not None and lab < len(self.class_names) else ""
            self.rows.append((name, "" if lab is None else str(lab), cname))

    def close(self) -> None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(("file", "label", "class_name"))
        w.writerows(self.rows)
        write_atomic(self.folder / "labels.csv", buf.getvalue().encode())


def npz_bytes(images: torch.Tensor, labels: torch.Tensor | None, class_names: list[str]) -> bytes:
    """uint8 ``[N, C, H, W]`` / ``[N, C, T, H, W]`` -> an ``.npz``: channels-last ``arr_0``, ``arr_1`` labels."""
    a = images.cpu().numpy()
    arrays = {"arr_0": np.ascontiguousarray(np.moveaxis(a, 1, -1))}
    if labels is not None:
        arrays["arr_1"] = labels.cpu().numpy().astype(np.int64)
    arrays["class_names"] = np.asarray(class_names, dtype=str)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


