"""Pretrained image encoders for the partition's features (the ``transformers`` calls of Atoll).

``dinov2`` (``Dinov2Model``) and ``clip`` (``CLIPVisionModel``) from a local save_pretrained
folder or a store URI. Features are the mean of the last layer's patch tokens (the class
token left out), as DDM clusters on mean-pooled DINOv2 features. Images are resized to the
model's ``image_size`` (bicubic, antialiased), grey ones repeated to RGB, and normalised with
the folder's ``preprocessor_config.json`` mean/std when it has one (else the model family's).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from atoll.data.errors import DataError
from atoll.data.pretrained import local_dir, read_config

FIELD = "partition.features.path"
#: accepted config model_type per features.type
MODEL_TYPES = {"dinov2": ("dinov2",), "clip": ("clip_vision_model", "clip")}
_NORM = {"dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
         "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))}


class ImageEncoder:
    """One loaded encoder on one device; ``features(images)`` -> float32 [N, hidden]."""

    def __init__(self, kind: str, path: str, placement, s3=None):
        import torch

        if kind not in MODEL_TYPES:
            raise DataError(f"partition.features.type {kind!r} is not an image encoder; use dinov2 or clip")
        try:
            import transformers
        except ImportError:
            raise DataError(f"partition.features.type {kind!r} needs transformers; install atoll[latents] "
                            "or use features.type 'pca'") from None
        folder = local_dir(path, FIELD, s3)
        cfg = read_config(folder, FIELD, f"{kind} model")
        found = cfg.get("model_type")
        if found not in MODEL_TYPES[kind]:
            raise DataError(f"{FIELD}: {path} holds a {found!r} model, not {kind} (config.json model_type); "
                            f"point it at a {'Dinov2Model' if kind == 'dinov2' else 'CLIPVisionModel'} folder "
                            f"or set partition.features.type to match")
        cls = transformers.Dinov2Model if kind == "dinov2" else transformers.CLIPVisionModel
        try:
            model = cls.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - weights missing or mismatched: name the field
            raise DataError(f"{FIELD}: cannot load {kind} from {path} ({type(e).__name__}: {e}); "
                            "re-save it with save_pretrained") from None
        from atoll.devices import place

        self.kind, self.placement = kind, placement
        self.model = place(model.eval(), placement, f"{kind} encoder")
        self.size = int(model.config.image_size)
        mean, std = _norm(folder, kind)
        dev = placement.device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)

    def features(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """uint8 [N, C, H, W] (C 1 or 3) -> mean-pooled patch tokens float32 [N, hidden]."""
        import torch
        import torch.nn.functional as F

        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"partition.features.type {self.kind!r} needs images [N, 1|3, H, W]; got "
                            f"{tuple(images.shape)}; use features.type 'pca' for this data")
        out = []
        dev = self.placement.device
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(dev).float() / 255.0
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                if x.shape[-2:] != (self.size, self.size):
                    x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True,
                                      align_corners=False).clamp(0, 1)
                h = self.model(pixel_values=(x - self.mean) / self.std).last_hidden_state
                out.append(h[:, 1:].mean(dim=1).float().cpu().numpy())
        hidden = int(self.model.config.hidden_size)
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, hidden), np.float32)


def _norm(folder: Path, kind: str) -> tuple[tuple, tuple]:
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            p = json.loads(pre.read_text())
            if len(p.get("image_mean", ())) == 3 and len(p.get("image_std", ())) == 3:
                return tuple(p["image_mean"]), tuple(p["image_std"])
        except ValueError:
            pass
    return _NORM[kind]
