"""A pretrained VAE for latent-space experts (the ``diffusers`` calls of Atoll).

``Vae.load`` reads an ``AutoencoderKL`` saved with ``save_pretrained`` from a local folder or a
store URI (``local_files_only``: never a hub). ``encode`` gives the latent mean of uint8 images
(what the ``encode`` stage stores); ``to_model`` / ``from_model`` apply the VAE's
``scaling_factor`` and ``shift_factor`` (``(z - shift) * scale``, what the experts train on);
``decode`` turns model-space latents back into images in [-1, 1]. ``identity`` (sha256 of the
folder's config and weights) is recorded with the latents, and a run is never decoded with
another VAE (``check_same``).
"""
from __future__ import annotations

import numpy as np

from atoll.data.errors import DataError
from atoll.data.pretrained import identity, local_dir, read_config

FIELD = "latents.vae"


class VaeMismatch(DataError):
    """The VAE at hand is not the one a run's latents were made with (names both)."""


class Vae:
    def __init__(self, model, placement, path: str, sha256: str):
        self.model, self.placement, self.path, self.sha256 = model, placement, path, sha256
        cfg = model.config
        self.scaling_factor = float(getattr(cfg, "scaling_factor", None) or 1.0)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.in_channels = int(cfg.in_channels)
        self.latent_channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)

    @classmethod
    def load(cls, path: str, placement, s3=None, field: str = FIELD) -> "Vae":
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise DataError(f"{field} needs diffusers; install atoll[latents]") from None
        folder = local_dir(path, field, s3)
        found = read_config(folder, field, "AutoencoderKL").get("_class_name")
        if found != "AutoencoderKL":
            raise DataError(f"{field}: {path} holds a {found!r}, not an AutoencoderKL (config.json _class_name); "
                            f"point {field} at an AutoencoderKL folder (e.g. the vae/ folder of a pipeline)")
        try:
            model = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - weights missing or mismatched: name the field
            raise DataError(f"{field}: cannot load the AutoencoderKL at {path} ({type(e).__name__}: {e}); "
                            "re-save it with save_pretrained") from None
        from atoll.devices import place

        return cls(place(model.eval(), placement, "VAE"), placement, path, identity(folder))

    def describe(self) -> dict:
        """What a latents manifest records about this VAE."""
        return {"path": self.path, "sha256": self.sha256, "scaling_factor": self.scaling_factor,
                "shift_factor": self.shift_factor, "in_channels": self.in_channels,
                "latent_channels": self.latent_channels, "downsample": self.downsample}

    def check_same(self, recorded: dict, where: str) -> None:
        if recorded.get("sha256") != self.sha256:
            raise VaeMismatch(
                f"{where} was encoded with the VAE {recorded.get('path')} (sha256 {str(recorded.get('sha256'))[:16]}), "
                f"but {self.path} is another VAE (sha256 {self.sha256[:16]}); use the VAE the run was encoded with, "
                "or encode again in a new run (metadata.name) or with `--from encode`")

    def latent_shape(self, image_shape) -> list[int]:
        c, h, w = (int(v) for v in image_shape)
        if h % self.downsample or w % self.downsample:
            raise DataError(f"{FIELD}: images of {h}x{w} are not divisible by the VAE's downsampling "
                            f"({self.downsample}); set data.imageSize to a multiple of {self.downsample}")
        return [self.latent_channels, h // self.downsample, w // self.downsample]

    def encode(self, images: np.ndarray, batch_size: int, moments: bool = False) -> np.ndarray:
        """uint8 [N, C, H, W] (grey images repeated to the VAE's channels) -> latent mean float32 [N, c, h, w];
        ``moments``: the mean and the log-variance, concatenated on channels [N, 2c, h, w]."""
        import torch

        out, dev = [], self.placement.device
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(dev).float() / 127.5 - 1.0
                if x.shape[1] != self.in_channels:
                    if x.shape[1] != 1:
                        raise DataError(f"{FIELD}: the VAE takes {self.in_channels} channels, the images have "
                                        f"{x.shape[1]}; set data.source.channels to {self.in_channels}")
                    x = x.expand(-1, self.in_channels, -1, -1)
                dist = self.model.encode(x).latent_dist
                z = torch.cat([dist.mean, dist.logvar], dim=1) if moments else dist.mean
                out.append(z.float().cpu().numpy())
        c = self.latent_channels * (2 if moments else 1)
        return np.concatenate(out) if out else np.zeros((0, c, 1, 1), np.float32)

    def to_model(self, z):
        return (z - self.shift_factor) * self.scaling_factor

    def from_model(self, x):
        return x / self.scaling_factor + self.shift_factor

    def decode(self, x, channels: int | None = None, batch_size: int = 16):
        """Model-space latents (torch [N, c, h, w]) -> images float [N, C, H, W] in [-1, 1]; ``channels``
        1 averages RGB back to grey (data stored grey, encoded through an RGB VAE)."""
        import torch

        outs = []
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                z = self.from_model(x[i:i + batch_size].to(self.placement.device).float())
                outs.append(self.model.decode(z).sample.float().clamp(-1, 1).cpu())
        img = torch.cat(outs)
        if channels == 1 and img.shape[1] != 1:
            img = img.mean(dim=1, keepdim=True)
        return img
