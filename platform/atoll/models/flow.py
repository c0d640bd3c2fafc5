"""Rectified flow (flow matching with straight paths).

``x_t = (1 - t) * x0 + t * eps`` with ``eps ~ N(0, I)``; the model predicts the
velocity ``v = dx_t/dt = eps - x0``; ``t = 0`` is data, ``t = 1`` is noise.
Sampling integrates ``dx/dt = v`` from 1 to 0 (see ``samplers.py``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

T_KINDS = ("logit-normal", "uniform")


def sample_t(n: int, kind: str = "logit-normal", generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` training times in (0, 1), ``[n]`` float32.

    ``logit-normal``: ``sigmoid(N(0, 1))`` (SD3's default, more weight mid-path);
    ``uniform``: ``U(0, 1)``.
    """
    if kind == "logit-normal":
        return torch.sigmoid(torch.randn(n, generator=generator, device=device))
    if kind == "uniform":
        return torch.rand(n, generator=generator, device=device)
    raise ValueError(f"timestep kind {kind!r} is unknown; use one of {T_KINDS}")


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x0 + t noise`` with ``t [B]`` broadcast over ``x0 [B, ...]``."""
    tb = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - tb) * x0 + tb * noise


def flow_loss(model: Callable[..., torch.Tensor], x0: torch.Tensor, *, y: torch.Tensor | None = None,
              text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
              t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
              generator: torch.Generator | None = None, t_kind: str = "logit-normal") -> torch.Tensor:
    """Scalar MSE ``mean ||model(x_t, t, ...) - (noise - x0)||^2`` over all elements.

    ``t`` and ``noise`` are drawn (from ``generator``) when not given. Only the
    conditioning arguments that are not None are passed to ``model``.
    """
    B = x0.shape[0]
    if t is None:
        t = sample_t(B, t_kind, generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {list(x0.shape)}, got {list(noise.shape)}")
    cond = {k: v for k, v in (("y", y), ("text", text), ("text_mask", text_mask)) if v is not None}
    v = model(interpolate(x0, noise, t), t, **cond)
    return F.mse_loss(v.float(), (noise - x0).float())


def drop_labels(y: torch.Tensor, p: float, null_class: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replaces each label by ``null_class`` with probability ``p`` (classifier-free guidance training)."""
    if not 0 <= p < 1:
        raise ValueError(f"class dropout must be in [0, 1), got {p}")
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_class), y)


def drop_text(text_mask: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Clears whole rows of ``text_mask [B, L]`` with probability ``p`` (a cleared row = the null text)."""
    if not 0 <= p < 1:
        raise ValueError(f"text dropout must be in [0, 1), got {p}")
    keep = torch.rand(text_mask.shape[0], generator=generator, device=text_mask.device) >= p
    return text_mask.bool() & keep[:, None]
