"""Decoding a latent-space run's samples with the VAE its latents were made with."""
from __future__ import annotations

import torch

from atoll.store import S3Config, Store


class LatentDecoder:
    """Model-space latents ``[N, c, h, w]`` -> images ``[N, C, H, W]`` in [-1, 1] (the data's channels)."""

    def __init__(self, vae, channels: int, image_shape: list[int]):
        self.vae, self.channels, self.image_shape = vae, channels, list(image_shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(x, channels=self.channels)

    @property
    def sha256(self) -> str:
        return self.vae.sha256


def load_decoder(store: Store, latents: dict, device: torch.device, s3: S3Config | None = None,
                 vae_path: str | None = None) -> LatentDecoder:
    """The decoder of a run whose ``latents/manifest.json`` is ``latents``; the VAE comes from ``vae_path``
    (default: the one recorded) and must be the same VAE (``VaeMismatch`` naming both otherwise)."""
    from atoll.data.vae import Vae
    from atoll.devices import Placement

    rec = latents["vae"]
    vae = Vae.load(vae_path or rec["path"], Placement(torch.device(device), "the ensemble's device"), s3,
                   field="latents.vae")
    vae.check_same(rec, store.url("latents"))
    return LatentDecoder(vae, int(latents["data_image_shape"][0]), latents["data_image_shape"])
