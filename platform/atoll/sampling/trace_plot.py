"""``trace.png``: routing over time for a few samples (matplotlib, Agg backend).

One row per sample: a heat map of expert weight per model evaluation
(x = evaluation, labelled with its t from 1 to 0; y = expert) and the final
image on the right.
"""
from __future__ import annotations

import io

import numpy as np
import torch

from atoll.sampling.trace import Trace


def trace_png(trace: Trace, images: torch.Tensor, *, samples: int = 4, labels: list[str] | None = None,
              title: str | None = None, dpi: int = 100) -> bytes:
    """PNG bytes. ``images``: uint8 ``[N, C, H, W]`` (the same samples as the trace, in order);
    ``labels``: an optional caption per sample (e.g. its class name)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    dense = trace.expert_weights().numpy()  # [S, N, K]
    S, N, K = dense.shape
    m = max(1, min(samples, N))
    fig, axes = plt.subplots(m, 2, figsize=(8, 1.0 + 0.35 * K * m + 0.4 * m), squeeze=False,
                             gridspec_kw={"width_ratios": [5, 1]})
    ticks = np.unique(np.linspace(0, S - 1, min(S, 6)).round().astype(int))
    im = None
    for i in range(m):
        ax, ax_img = axes[i]
        im = ax.imshow(dense[:, i, :].T, aspect="auto", cmap="viridis", vmin=0, vmax=1,
                       interpolation="nearest", origin="lower")
        ax.set_yticks(range(K))
        ax.set_yticklabels([f"e{k}" for k in range(K)], fontsize=7)
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{float(trace.t[j]):.2f}" for j in ticks], fontsize=7)
        ax.set_ylabel(labels[i] if labels and i < len(labels) else f"sample {i}", fontsize=8)
        if i == m - 1:
            ax.set_xlabel("t (noise 1 -> data 0), one column per model evaluation", fontsize=8)
        img = images[i].cpu().numpy().transpose(1, 2, 0)
        ax_img.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
        ax_img.set_axis_off()
    fig.suptitle(title or "routing per step", fontsize=10)
    fig.subplots_adjust(left=0.1, right=0.86, hspace=0.45, wspace=0.08)
    if im is not None:
        cax = fig.add_axes([0.9, 0.15, 0.015, 0.7])
        fig.colorbar(im, cax=cax, label="expert weight")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
