"""DeepSpeed-Ulysses sequence parallelism for the VideoDiT (a token layout, see ``video_dit``).

Each of the N ranks of ``group`` holds a contiguous slice of the token sequence,
padded: ``S_pad = ceil(S / N) * N``, rank ``r`` holds padded positions
``r*S_pad/N .. (r+1)*S_pad/N - 1`` (positions ``>= S`` are zero padding).
Every op except attention is per token and runs on the local slice. Attention
goes through ``deepspeed.sequence.layer.DistributedAttention(local, group,
scatter_idx=2, gather_idx=1)`` on ``[b, s, h, d]``: an all-to-all turns
``[b, S_pad/N, h, d]`` into ``[b, S_pad, h/N, d]`` (all tokens, h/N heads), local
attention runs with a key mask that hides the padding (so padded keys change
nothing), and a second all-to-all brings the output back. The result is
all-gathered at the end and the padding dropped.

N must divide the number of heads (checked before any communication).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from atoll.models.video_dit import sdpa_bshd
from atoll.parallel.dims import check_heads


def padded_length(num_tokens: int, n: int) -> int:
    """``ceil(num_tokens / n) * n``."""
    return -(-num_tokens // n) * n


class UlyssesSequence:
    """The token layout of one rank in a sequence-parallel group of N ranks.

    ``num_heads``: when given, checked against N at construction.
    """

    def __init__(self, group, num_heads: int | None = None):
        self.group = group
        self.n = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if num_heads is not None:
            check_heads(num_heads, self.n)

    def local_range(self, num_tokens: int) -> tuple[int, int]:
        """This rank's ``[start, stop)`` in the padded sequence."""
        s = padded_length(num_tokens, self.n) // self.n
        return self.rank * s, (self.rank + 1) * s

    def shard(self, a: torch.Tensor) -> torch.Tensor:
        """``[B, S, ...] -> [B, S_pad/N, ...]``: this rank's slice, zero-padded past ``S``."""
        S = a.shape[1]
        start, stop = self.local_range(S)
        part = a[:, start:min(stop, S)]
        missing = stop - max(start, min(stop, S))
        if missing:
            pad = [0, 0] * (a.dim() - 2) + [0, missing]
            part = F.pad(part, pad)
        return part

    def attention(self, num_tokens: int):
        """A core ``(q, k, v) [b, S_pad/N, h, d] -> [b, S_pad/N, h, d]`` over the whole sequence."""
        from deepspeed.sequence.layer import DistributedAttention

        s_pad = padded_length(num_tokens, self.n)
        key_mask = None
        if s_pad != num_tokens:
            key_mask = torch.arange(s_pad) < num_tokens
        dist_attn = DistributedAttention(sdpa_bshd, self.group, scatter_idx=2, gather_idx=1)

        def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            check_heads(q.shape[2], self.n)
            mask = None if key_mask is None else key_mask.to(q.device)
            return dist_attn(q, k, v, 0, None, mask)

        return core

    def gather(self, a: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """``[B, S_pad/N, ...]`` on every rank -> ``[B, S, ...]`` on every rank."""
        parts = [torch.empty_like(a) for _ in range(self.n)]
        dist.all_gather(parts, a.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)[:, :num_tokens]


def sequence_parallel_forward(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *,
                              group, guidance: float = 1.0) -> torch.Tensor:
    """The VideoDiT forward (with CFG when ``guidance != 1``) split over ``group``.

    Every rank passes the same ``x [B, C, T, H, W]``, ``t``, ``y`` and gets the whole velocity back.
    """
    seq = UlyssesSequence(group, model.config.dims["num_heads"])
    return model.forward_with_cfg(x, t, y, guidance, seq=seq)
