"""Seeds of an island's training, all derived from the spec's ``training.seed``.

Each unit (expert ``k``, the monolith, the router) gets its own seed from the run seed and its
id, so experts do not share their initial weights or noise streams; a fixed spec still gives a
fixed run (the monolith is expert 0 of its job, the router is ``router``). Within a unit the
noise of optimizer step ``s`` on rank ``r``, accumulation micro-step ``a`` is seeded by
``step_seed`` alone, which is what makes a resumed run draw exactly what the interrupted one
would have (at the same world size; see ``docs/training.md`` for a changed one).
"""
from __future__ import annotations

import hashlib


def unit_seed(seed: int, role: str, expert: int | None) -> int:
    """A 31-bit seed for ``role`` (``expert`` | ``router``) and expert id, from the run seed."""
    tag = f"atoll/{int(seed)}/{role}/{'' if expert is None else int(expert)}".encode()
    return int.from_bytes(hashlib.sha256(tag).digest()[:4], "little") & 0x7FFFFFFF


def step_seed(seed: int, step: int, rank: int, micro: int) -> int:
    """The noise seed of one micro-batch: a pure function of (unit seed, step, rank, micro-step)."""
    return (seed * 1_000_003 + step) * 4099 + rank * 131 + micro + 17
