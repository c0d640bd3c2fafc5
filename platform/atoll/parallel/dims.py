"""``ParallelDims``: the parallel degrees of one job, checked against the world size and the model.

``world_size = dp * sp``: ``sp`` ranks share one sequence, ``dp`` independent replicas (each a
sequence group). Ranks ``r*sp .. (r+1)*sp - 1`` form sequence group ``r`` (contiguous, so a group
stays on one node when it can). Inside a sequence group attention is split one of three ways
(``attention``), USP style (xDiT's Ulysses x ring):

* ``ulysses``: all-to-all over heads (DeepSpeed-Ulysses): ``sp`` must divide the heads;
* ``ring``: keys/values passed around a ring of ``sp`` ranks: any head count;
* ``hybrid``: ``sp = ulysses * ring``; Ulysses inside groups of ``ulysses`` neighbouring ranks
  (``ulysses`` must divide the heads), ring attention across the ``ring`` such groups.

``ring`` is the ring degree (1 for ``ulysses``, ``sp`` for ``ring``).
"""
from __future__ import annotations

from dataclasses import dataclass

ATTENTION_LAYOUTS = ("ulysses", "ring", "hybrid")


class ParallelConfigError(ValueError):
    """Parallel degrees that do not fit the world size or the model."""


@dataclass(frozen=True)
class ParallelDims:
    world_size: int
    sp: int = 1  # sequence-parallel degree (ranks per sequence group)
    dp: int | None = None  # data-parallel replicas; None = world_size // sp
    ring: int = 1  # ring degree inside a sequence group (sp // ring = Ulysses degree)

    def __post_init__(self) -> None:
        for name in ("world_size", "sp", "ring"):
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
        if self.sp % self.ring:
            raise ParallelConfigError(
                f"ring degree {self.ring} does not divide the sequence-parallel degree sp={self.sp}: "
                f"sp = ulysses x ring, use a ring degree in {_divisors(self.sp)}")

    @classmethod
    def for_layout(cls, world_size: int, sp: int, attention: str = "ulysses", ring_degree: int | None = None):
        """The dims of ``attention`` (see the module doc): ``ring_degree`` only for ``hybrid``."""
        if attention not in ATTENTION_LAYOUTS:
            raise ParallelConfigError(f"attention {attention!r} is unknown; use one of {', '.join(ATTENTION_LAYOUTS)}")
        if attention == "ulysses":
            ring = 1
        elif attention == "ring":
            ring = sp
        else:
            if ring_degree is None or not 1 < ring_degree < sp:
                raise ParallelConfigError(
                    f"hybrid attention needs 1 < ring degree < sp={sp} (sp = ulysses x ring), got {ring_degree}; "
                    f"use one of {[d for d in _divisors(sp) if 1 < d < sp] or 'none: use ulysses or ring'}")
            ring = ring_degree
        return cls(world_size=world_size, sp=sp, ring=ring)

    @property
    def ulysses(self) -> int:
        """The Ulysses (all-to-all over heads) degree inside a sequence group."""
        return self.sp // self.ring

    @property
    def attention(self) -> str:
        if self.sp == 1 or self.ring == 1:
            return "ulysses"
        return "ring" if self.ring == self.sp else "hybrid"

    def check_heads(self, num_heads: int) -> None:
        """Ulysses scatters heads over its ranks: the Ulysses degree must divide ``num_heads``."""
        check_heads(num_heads, self.ulysses)

    def sp_group_ranks(self) -> list[list[int]]:
        """The ranks of every sequence group, e.g. sp=2, world 4 -> [[0, 1], [2, 3]]."""
        return [list(range(r * self.sp, (r + 1) * self.sp)) for r in range(self.dp)]

    def ulysses_group_ranks(self) -> list[list[int]]:
        """Ulysses groups: ``ulysses`` neighbouring ranks of a sequence group (all-to-all stays close)."""
        u = self.ulysses
        return [g[i * u:(i + 1) * u] for g in self.sp_group_ranks() for i in range(self.ring)]

    def ring_group_ranks(self) -> list[list[int]]:
        """Ring groups: the ranks of a sequence group ``ulysses`` apart (same heads, successive tokens)."""
        u = self.ulysses
        return [g[j::u] for g in self.sp_group_ranks() for j in range(u)]

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
            f"whose head count N divides (ring attention has no such limit)")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
