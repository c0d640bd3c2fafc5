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
all-gathered at the end and the padding dropped. Everything is differentiable: DeepSpeed's
all-to-alls carry gradients back, and the final gather's backward hands each rank its own slice
of the gradient (``_GatherTokens``), which is what training needs (``train/sequence_parallel.py``).

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


class _GatherTokens(torch.autograd.Function):
    """All-gather along the token dim whose backward is this rank's slice of the incoming gradient.

    Valid because every rank of the group computes the same function of the gathered tensor (the
    loss of one clip, replicated over its sequence group: same clip, same noise): the gradient
    each rank holds for the gathered tensor is the same, and its share is the part it produced.
    No communication in backward. (``torch.distributed.nn.all_gather`` would sum the ranks'
    gradients instead: N times too much here.)"""

    @staticmethod
    def forward(ctx, a: torch.Tensor, group, n: int, rank: int) -> torch.Tensor:
        parts = [torch.empty_like(a) for _ in range(n)]
        dist.all_gather(parts, a.contiguous(), group=group)
        ctx.rank, ctx.s = rank, a.shape[1]
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g[:, ctx.rank * ctx.s:(ctx.rank + 1) * ctx.s].contiguous(), None, None, None


class TokenShards:
    """Contiguous, padded slices of a token sequence over the N ranks of ``group`` (shard / gather)."""

    def __init__(self, group):
        self.group = group
        self.n = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

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

    def gather(self, a: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """``[B, S_pad/N, ...]`` on every rank -> ``[B, S, ...]`` on every rank (differentiable)."""
        return _GatherTokens.apply(a, self.group, self.n, self.rank)[:, :num_tokens]


class UlyssesSequence(TokenShards):
    """The token layout of one rank in a sequence-parallel group of N ranks.

    ``num_heads``: when given, checked against N at construction.
    """

    def __init__(self, group, num_heads: int | None = None):
        super().__init__(group)
        if num_heads is not None:
            check_heads(num_heads, self.n)

    def attention(self, num_tokens: int):
        """A core ``(q, k, v) [b, S_pad/N, h, d] -> [b, S_pad/N, h, d]`` over the whole sequence."""
        return ulysses_core(self.group, num_tokens, padded_length(num_tokens, self.n), sdpa_bshd)


def ulysses_core(group, num_tokens: int, s_pad: int, local_attn, masked: bool = True):
    """DeepSpeed-Ulysses around ``local_attn``: all-to-all over ``group`` (heads scattered, the
    sequence gathered to ``s_pad`` tokens), ``local_attn(q, k, v[, key_mask])``, all-to-all back.
    ``masked``: pass ``local_attn`` a key mask hiding positions ``>= num_tokens``."""
    from deepspeed.sequence.layer import DistributedAttention

    n = dist.get_world_size(group)
    key_mask = torch.arange(s_pad) < num_tokens if masked and s_pad != num_tokens else None
    dist_attn = DistributedAttention(local_attn, group, scatter_idx=2, gather_idx=1)

    def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        check_heads(q.shape[2], n)
        if key_mask is None:
            return dist_attn(q, k, v, 0, None)
        return dist_attn(q, k, v, 0, None, key_mask.to(q.device))

    return core


def sequence_parallel_forward(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *,
                              group, guidance: float = 1.0) -> torch.Tensor:
    """The VideoDiT forward (with CFG when ``guidance != 1``) split over ``group``.

    Every rank passes the same ``x [B, C, T, H, W]``, ``t``, ``y`` and gets the whole velocity back.
    """
    seq = UlyssesSequence(group, model.config.dims["num_heads"])
    return model.forward_with_cfg(x, t, y, guidance, seq=seq)
