"""Counting what goes through DeepSpeed-Ulysses' all-to-alls (for the bench and tests).

``count_all_to_all()`` wraps ``deepspeed.comm.all_to_all_single`` (the call the
sequence layer makes) for the duration of a ``with`` block and records, per call,
the local input bytes and the bytes that leave this rank (``(N-1)/N`` of them).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class AllToAllCount:
    calls: int = 0
    input_bytes: int = 0  # local tensor bytes handed to all-to-all
    sent_bytes: int = 0  # of those, bytes addressed to other ranks
    sizes: list[int] = field(default_factory=list)


def ulysses_formula_elements(b: int, s_pad: int, heads: int, head_dim: int, n: int) -> float:
    """Elements one rank sends per attention layer: 4 all-to-alls (q, k, v, out) x ``b*s*h*d/N * (N-1)/N``."""
    return 4 * b * s_pad * heads * head_dim / n * (n - 1) / n


@contextmanager
def count_all_to_all():
    import deepspeed.comm as ds_comm
    import torch.distributed as dist

    stats = AllToAllCount()
    original = ds_comm.all_to_all_single

    def counted(output, tensor, *args, **kwargs):
        group = kwargs.get("group")
        n = dist.get_world_size(group)
        nbytes = tensor.numel() * tensor.element_size()
        stats.calls += 1
        stats.input_bytes += nbytes
        stats.sent_bytes += nbytes * (n - 1) // n
        stats.sizes.append(nbytes)
        return original(output, tensor, *args, **kwargs)

    ds_comm.all_to_all_single = counted
    try:
        yield stats
    finally:
        ds_comm.all_to_all_single = original
