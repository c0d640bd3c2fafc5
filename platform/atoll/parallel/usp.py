"""USP: the VideoDiT's token layout over a sequence group with Ulysses, ring or hybrid attention.

The tokens are cut as in ``ulysses.TokenShards`` (rank ``r`` of the N-rank sequence group holds
padded positions ``r*S_pad/N ..``). Attention (``ParallelDims.attention``):

* ``ulysses``: DeepSpeed ``DistributedAttention`` over the sequence group (heads split N ways);
* ``ring``: ``ring.ring_attention`` over the sequence group, on the local ``[b, S_pad/N, h, d]``;
* ``hybrid`` (xDiT's USP, "Ulysses low"): the N ranks are R ring groups x U Ulysses ranks, U
  neighbouring ranks forming one Ulysses group. ``DistributedAttention`` over the Ulysses group
  turns ``[b, S_pad/N, h, d]`` into ``[b, U*S_pad/N, h/U, d]`` (the U neighbours' tokens, a
  contiguous block of the sequence, for h/U heads), and its local attention is ring attention
  over the R ranks that hold the same heads and the other blocks. Heads: U must divide them.

Forward and backward are exact (to float rounding) against one rank; padded keys are masked.
"""
from __future__ import annotations

import torch

from atoll.parallel.dims import check_heads
from atoll.parallel.groups import SequenceGroups
from atoll.parallel.ring import RingComm, ring_attention
from atoll.parallel.ulysses import TokenShards, padded_length, ulysses_core
from atoll.models.video_dit import sdpa_bshd


class USPSequence(TokenShards):
    """One rank's token layout in the sequence group of ``groups`` (see the module doc)."""

    def __init__(self, groups: SequenceGroups, num_heads: int | None = None):
        super().__init__(groups.sp)
        self.dims = groups.dims
        if self.n != self.dims.sp:
            raise ValueError(f"the sequence group has {self.n} ranks, ParallelDims says sp={self.dims.sp}")
        if num_heads is not None:
            check_heads(num_heads, self.dims.ulysses)
        self.ulysses_group = groups.ulysses
        self.ring = RingComm(groups.ring) if groups.ring is not None else None

    @property
    def attention_layout(self) -> str:
        return self.dims.attention

    def attention(self, num_tokens: int):
        s_pad = padded_length(num_tokens, self.n)
        if self.ring is None:  # Ulysses only
            return ulysses_core(self.ulysses_group, num_tokens, s_pad, sdpa_bshd)
        ring = self.ring

        def ring_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return ring_attention(q, k, v, ring, num_tokens)

        if self.ulysses_group is None:  # ring only: the local slice is the ring block
            return ring_core
        # hybrid: after the Ulysses all-to-all a rank holds ring block (its ring index) of U*S_pad/N tokens
        return ulysses_core(self.ulysses_group, num_tokens, s_pad, ring_core, masked=False)


def sequence_layout(dims, rank: int, num_heads: int | None = None) -> USPSequence:
    """Makes the groups of ``dims`` (collective) and this rank's layout."""
    from atoll.parallel.groups import sequence_groups

    if num_heads is not None:
        dims.check_heads(num_heads)  # before any group is made
    return USPSequence(sequence_groups(dims, rank), num_heads)
