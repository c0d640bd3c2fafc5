"""``ParallelDims``: the parallel degrees of one job, checked against the world size.

``world_size = dp * sp``: ``sp`` ranks share one sequence (Ulysses all-to-all
over heads), ``dp`` independent replicas. Ranks ``r*sp .. (r+1)*sp - 1`` form
sequence group ``r`` (contiguous, so a group stays on one node when it can).
"""
from __future__ import annotations

from dataclasses import dataclass


class ParallelConfigError(ValueError):
    """Parallel degrees that do not fit the world size or the model."""


@dataclass(frozen=True)
class ParallelDims:
    world_size: int
    sp: int = 1  # sequence-parallel (Ulysses) degree
    dp: int | None = None  # data-parallel replicas; None = world_size // sp

    def __post_init__(self) -> None:
        for name in ("world_size", "sp"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ParallelConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if self.dp is None:
            if self.world_size % self.sp:
                raise ParallelConfigError(
                    f"sequence-parallel degree sp={self.sp} does not divide the world size {self.world_size}: "
                    f"use an sp that divides {self.world_size} (e.g. {_divisors(self.world_size)}) "
                    f"or run {self.sp * max(1, round(self.world_size / self.sp))} ranks")
            object.__setattr__(self, "dp", self.world_size // self.sp)
        if not isinstance(self.dp, int) or self.dp < 1:
            raise ParallelConfigError(f"dp must be an integer >= 1, got {self.dp!r}")
        if self.dp * self.sp != self.world_size:
            raise ParallelConfigError(
                f"dp={self.dp} x sp={self.sp} = {self.dp * self.sp} ranks, but the world size is "
                f"{self.world_size}; the product of the parallel degrees must equal the world size")

    def check_heads(self, num_heads: int) -> None:
        """Ulysses scatters heads over the sp ranks: sp must divide ``num_heads``."""
        check_heads(num_heads, self.sp)

    def sp_group_ranks(self) -> list[list[int]]:
        """The ranks of every sequence group, e.g. sp=2, world 4 -> [[0, 1], [2, 3]]."""
        return [list(range(r * self.sp, (r + 1) * self.sp)) for r in range(self.dp)]

    def sp_rank(self, rank: int) -> int:
        """The rank's position inside its sequence group."""
        self._check_rank(rank)
        return rank % self.sp

    def dp_rank(self, rank: int) -> int:
        """Which sequence group (replica) the rank belongs to."""
        self._check_rank(rank)
        return rank // self.sp

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ParallelConfigError(f"rank {rank} is outside the world [0, {self.world_size})")


def check_heads(num_heads: int, sp: int) -> None:
    if num_heads % sp:
        raise ParallelConfigError(
            f"Ulysses sequence parallelism splits attention heads across ranks: the sequence-parallel degree "
            f"N={sp} must divide num_heads={num_heads}; use N in {_divisors(num_heads)} or a model size "
            f"whose head count N divides")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
