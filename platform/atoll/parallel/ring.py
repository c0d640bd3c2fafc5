"""Ring attention over a process group, forward and backward (the blockwise flash-attention recurrence).

Each of the R ranks of ``group`` holds the queries, keys and values of one contiguous block of
the sequence, ``[b, s_block, h, d]``. Forward: R steps; at step ``i`` a rank attends its queries
to the key/value block it holds (its own at step 0), merges the result into a running output
with the log-sum-exp trick, and passes the block on to the next rank while receiving the
previous rank's. Only ``out`` and the row log-sum-exp ``lse`` are kept for backward, which
recomputes each block's probabilities and passes ``(k, v, dk, dv)`` around the same ring, so
that after R passes every key/value gradient is back on its owner (Liu et al. 2023; the
flash-attention backward: ``ds = p * (dp - rowsum(dout * out))``).

Padding: block ``j`` covers global positions ``j*s_block ..``; keys at positions ``>=
num_tokens`` are masked (and blocks that are all padding skipped), so padded keys change
nothing, whatever rank holds them. Math in fp32 whatever the input dtype; scores are made for a
chunk of query rows at a time (``CHUNK_ELEMENTS``), so a block never holds ``s_block^2`` per head.

Bytes each rank sends per attention call (elements of the local ``[b, s_block, h, d]``
block, ``E``): forward ``2 (R-1) E`` (k and v), backward ``4 (R-1) E + 2 E``.
"""
from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist


class RingComm:
    """The ring of ``group``: this rank's index, its neighbours' global ranks, and a byte counter."""

    def __init__(self, group):
        self.group = group
        self.size = dist.get_world_size(group)
        self.index = dist.get_rank(group)
        self.next = dist.get_global_rank(group, (self.index + 1) % self.size)
        self.prev = dist.get_global_rank(group, (self.index - 1) % self.size)
        self.sent_bytes = 0  # everything this rank sent to its neighbour (for the bench and tests)
        self.calls = 0

    def shift(self, t: torch.Tensor) -> torch.Tensor:
        """Sends ``t`` to the next rank, returns the previous rank's tensor of the same shape."""
        t = t.contiguous()
        out = torch.empty_like(t)
        ops = [dist.P2POp(dist.isend, t, self.next, self.group), dist.P2POp(dist.irecv, out, self.prev, self.group)]
        for req in dist.batch_isend_irecv(ops):
            req.wait()
        self.sent_bytes += t.numel() * t.element_size()
        self.calls += 1
        return out


def _block_mask(j: int, block: int, num_tokens: int, device) -> torch.Tensor | None:
    """Keys of block ``j`` that are real tokens (None: all of them)."""
    if (j + 1) * block <= num_tokens:
        return None
    return (j * block + torch.arange(block, device=device)) < num_tokens


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    s = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)  # [b, h, sq, sk], updated in place from here on
    if mask is not None:
        s.masked_fill_(~mask.view(1, 1, 1, -1), float("-inf"))
    return s


#: score elements (b * h * rows * keys) one query chunk may hold at once: bounds the transient memory of
#: a block (like flash attention's tiles) instead of materialising ``s_block x s_block`` scores per head.
#: At most two chunk-sized tensors live at once (scores / probabilities, updated in place, and ``dp``
#: in backward): 2 MB at the default 2^18 (``ATOLL_RING_CHUNK_ELEMENTS`` overrides it), but never fewer
#: than ``MIN_CHUNK_ROWS`` query rows, so long blocks with many heads are not cut into one-row matmuls
#: (then a chunk holds ``MIN_CHUNK_ROWS / head_dim`` times this rank's q block: still a fraction of
#: the activations). The sweep that chose it: ``bench/results/ring_chunks.md``.
CHUNK_ELEMENTS = int(os.environ.get("ATOLL_RING_CHUNK_ELEMENTS", 1 << 18))
MIN_CHUNK_ROWS = 64


def _row_chunks(qf: torch.Tensor, keys: int) -> list[slice]:
    b, h, rows, _ = qf.shape
    step = max(1, min(rows, max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(1, b * h * keys))))
    return [slice(i, min(rows, i + step)) for i in range(0, rows, step)]


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, comm: RingComm, num_tokens: int):
        dtype = q.dtype
        qf, kf, vf = (a.transpose(1, 2).float() for a in (q, k, v))  # [b, h, s, d]
        block = qf.shape[2]
        scale = 1.0 / math.sqrt(qf.shape[-1])
        out = torch.zeros_like(qf)
        lse = torch.full(qf.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
        kv = torch.stack([kf, vf])
        R = comm.size
        for i in range(R):
            j = (comm.index - i) % R
            nxt = comm.shift(kv) if i < R - 1 else None
            if j * block < num_tokens:  # a block that is all padding adds nothing
                mask = _block_mask(j, block, num_tokens, q.device)
                for c in _row_chunks(qf, block):
                    s = _scores(qf[:, :, c], kv[0], scale, mask)
                    m = s.amax(dim=-1, keepdim=True)  # a block with a real key: finite in every row
                    p = s.sub_(m).exp_()  # in place: one chunk-sized tensor
                    new = torch.logaddexp(lse[:, :, c], m.squeeze(-1) + p.sum(dim=-1).log())
                    # out * exp(lse - new) + (p @ v) * exp(m - new): the block's rows, renormalised once
                    out[:, :, c].mul_(torch.exp(lse[:, :, c] - new).unsqueeze(-1))
                    out[:, :, c].add_(torch.matmul(p, kv[1]).mul_(torch.exp(m - new.unsqueeze(-1))))
                    lse[:, :, c] = new
            if nxt is not None:
                kv = nxt
        ctx.save_for_backward(qf, kf, vf, out, lse)
        ctx.comm, ctx.num_tokens, ctx.scale, ctx.dtype = comm, num_tokens, scale, dtype
        return out.transpose(1, 2).to(dtype)

    @staticmethod
    def backward(ctx, dout):
        qf, kf, vf, out, lse = ctx.saved_tensors
        comm, num_tokens, scale = ctx.comm, ctx.num_tokens, ctx.scale
        do = dout.transpose(1, 2).float()
        D = (do * out).sum(-1, keepdim=True)  # rowsum(dout * out)
        block = qf.shape[2]
        dq = torch.zeros_like(qf)
        kv = torch.stack([kf, vf])
        dkv = torch.zeros_like(kv)
        R = comm.size
        for i in range(R):
            j = (comm.index - i) % R
            if j * block < num_tokens:
                mask = _block_mask(j, block, num_tokens, qf.device)
                for c in _row_chunks(qf, block):
                    p = _scores(qf[:, :, c], kv[0], scale, mask).sub_(lse[:, :, c].unsqueeze(-1)).exp_()
                    # masked keys: exp(-inf) = 0; p and ds are the only chunk-sized tensors, both in place
                    dkv[1] += torch.matmul(p.transpose(-1, -2), do[:, :, c])
                    ds = torch.matmul(do[:, :, c], kv[1].transpose(-1, -2)).sub_(D[:, :, c]).mul_(p)
                    del p
                    dq[:, :, c].add_(torch.matmul(ds, kv[0]), alpha=scale)
                    dkv[0].add_(torch.matmul(ds.transpose(-1, -2), qf[:, :, c]), alpha=scale)
            if i < R - 1:  # the block and its gradients so far move on together
                both = comm.shift(torch.cat([kv, dkv]))
                kv, dkv = both[:2], both[2:]
            elif R > 1:  # the last pass brings every block's gradients home
                dkv = comm.shift(dkv)
        dt = ctx.dtype
        dk, dv = dkv[0], dkv[1]
        return (dq.transpose(1, 2).to(dt), dk.transpose(1, 2).to(dt), dv.transpose(1, 2).to(dt), None, None)


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, comm: RingComm,
                   num_tokens: int) -> torch.Tensor:
    """Attention of this rank's queries over the keys of the whole ring, ``[b, s_block, h, d]`` each.

    Rank ``i`` of the ring holds global positions ``i*s_block .. (i+1)*s_block - 1``; keys at
    positions ``>= num_tokens`` are padding (masked).
    """
    return _RingAttention.apply(q, k, v, comm, num_tokens)
