"""Routing strategies: which experts a sample uses at a step, and with what weight.

``select(probs [B, K], strategy) -> (indices [B, k] long, weights [B, k] float32)``:

* ``full``  all K experts, weights ``r_k`` (``k = K``);
* ``topN``  the N largest ``r_k``, renormalised to sum to 1 per row;
* ``top1``  the argmax with weight 1 (the DDM paper's best).

With one expert (a monolith) every strategy collapses to that expert, weight 1.
"""
from __future__ import annotations

import re

import torch

from atoll.sampling.errors import SamplingError

_PATTERN = re.compile(r"full|top([1-9][0-9]*)")


def num_selected(strategy: str, num_experts: int) -> int:
    """How many experts ``strategy`` evaluates per sample per step with ``num_experts`` experts.

    Raises ``SamplingError`` for an unknown strategy or ``topN`` with ``N > K`` (K > 1).
    """
    m = _PATTERN.fullmatch(strategy) if isinstance(strategy, str) else None
    if m is None:
        raise SamplingError(f"strategy {strategy!r} is unknown; use full, top1, top2, ... topN")
    if num_experts == 1:
        return 1
    if strategy == "full":
        return num_experts
    k = int(m.group(1))
    if k > num_experts:
        raise SamplingError(f"strategy {strategy!r} needs at least {k} experts, but this run has {num_experts}; "
                            f"use top1..top{num_experts} or full")
    return k


def select(probs: torch.Tensor, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``probs [B, K]`` (rows sum to 1) -> ``(indices [B, k] long, weights [B, k] float32)``.

    Indices of a row are ordered by decreasing probability (``full``: 0..K-1).
    ``top-k`` weights are renormalised to sum to 1; ``top1`` weight is exactly 1.
    """
    if probs.dim() != 2:
        raise SamplingError(f"router probabilities must have shape [B, K], got {list(probs.shape)}")
    B, K = probs.shape
    k = num_selected(strategy, K)
    probs = probs.float()
    if K == 1 or k == 1:
        idx = probs.argmax(dim=1, keepdim=True)
        return idx, torch.ones(B, 1, dtype=torch.float32, device=probs.device)
    if k == K and strategy == "full":
        idx = torch.arange(K, device=probs.device).expand(B, K).clone()
        return idx, probs.clone()
    w, idx = probs.topk(k, dim=1)
    return idx, w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
