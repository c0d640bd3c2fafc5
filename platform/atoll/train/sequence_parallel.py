"""Sequence-parallel training of a video expert inside one island (``experts.scaling.sequenceParallel``).

The island's ``world`` ranks are ``dp`` replicas x ``sp`` ranks per clip (``ParallelDims``,
contiguous sequence groups). Per micro-step:

1. **Data and noise are keyed by the dp rank**: every rank of a sequence group draws the same
   clips (``task.batch(step, micro, dp_rank, dp, ...)``) and the same class dropout, times and
   noise (``step_seed(seed, step, dp_rank, micro)``), so the ranks of a group hold identical
   inputs and, below, identical losses.
2. **Forward**: the VideoDiT runs with this rank's ``USPSequence`` installed
   (``model.sequence_layout``): patch embedding, MLPs, adaLN and the final layer on the rank's
   ``S_pad/sp`` tokens; attention through DeepSpeed ``DistributedAttention`` (Ulysses), ring
   attention, or both (``scaling.attention``); the output tokens are gathered by an
   autograd-aware all-gather, so the task's own loss (the rectified-flow MSE over the whole clip)
   runs unchanged and is the same number on every rank of the group.
3. **Backward**: the gather's backward hands each rank *its own slice* of the (identical)
   gradient of the loss, without communication; the all-to-alls / ring passes carry gradients
   back across ranks. Each rank ends with the part of every weight's gradient that flowed through
   its tokens; the parts add up to the single-rank gradient of that clip.
4. **Reduction**: DeepSpeed, given ``SequenceParallelMPU``, sums gradients over the sp ranks and
   averages over the dp replicas (one all-reduce / reduce-scatter over all ranks, divided by dp),
   and partitions ZeRO state over all sp x dp ranks. Checkpoints are laid out as for
   ``world`` data-parallel ranks, so saving, exact resume and universal resharding are unchanged.

Why a gather rather than a per-rank loss over local tokens: the loss (its random draws, class
dropout, future weighting) stays the task's, in one place; the clip, its noise and target are
replicated on every rank of the group anyway (the inputs are O(pixels), the activations that SP
splits are O(tokens x hidden x depth)), so gathering the output costs one tensor of the input's
size and no backward communication. A per-rank local loss would need a copy of the task's loss
restricted to local tokens and a denominator over the whole clip (exact for padded sequences);
it would save that one gather.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from atoll.parallel.dims import ParallelConfigError, ParallelDims
from atoll.spec.models import ScalingSpec


@dataclass
class SequenceParallelism:
    """The island's layout: degrees, this rank's token layout and DeepSpeed's mpu (None when sp = 1)."""
    dims: ParallelDims
    rank: int
    layout: object | None = None
    mpu: object | None = None

    @property
    def sp(self) -> int:
        return self.dims.sp

    @property
    def dp(self) -> int:
        return int(self.dims.dp)

    @property
    def dp_rank(self) -> int:
        """The data-parallel rank: what batches and noise are keyed by."""
        return self.dims.dp_rank(self.rank)

    def describe(self) -> dict:
        return {"sequence_parallel": self.sp, "data_parallel": self.dp,
                "attention": self.dims.attention if self.sp > 1 else None,
                "ring_degree": self.dims.ring if self.sp > 1 else None}


def dims_of(scaling: ScalingSpec, world: int) -> ParallelDims:
    """``ParallelDims`` of an island from its scaling spec and world size (errors name the spec fields)."""
    try:
        return ParallelDims.for_layout(world, scaling.sequence_parallel, scaling.attention, scaling.ring_degree)
    except ParallelConfigError as e:
        raise ParallelConfigError(f"scaling.sequenceParallel / attention / ringDegree: {e}") from e


def setup(scaling: ScalingSpec, model: torch.nn.Module, rank: int, world: int) -> SequenceParallelism:
    """Checks the layout against the model, makes its process groups (collective: every rank calls it)
    and installs this rank's token layout on ``model``. sp = 1: nothing to do (plain data parallelism)."""
    dims = dims_of(scaling, world)
    if dims.sp == 1:
        return SequenceParallelism(dims, rank)
    if not hasattr(model, "sequence_layout"):
        raise ParallelConfigError(f"scaling.sequenceParallel = {dims.sp} is for video experts (VDiT-*), not "
                                  f"{type(model).__name__}: set sequenceParallel: 1")
    heads = int(model.config.dims["num_heads"])
    try:
        dims.check_heads(heads)
    except ParallelConfigError as e:
        raise ParallelConfigError(f"scaling.sequenceParallel = {dims.sp} with attention {dims.attention!r}: {e}; "
                                  "or use attention: ring") from e
    from atoll.parallel.groups import sequence_groups
    from atoll.parallel.mpu import SequenceParallelMPU
    from atoll.parallel.usp import USPSequence

    groups = sequence_groups(dims, rank)
    layout = USPSequence(groups, heads)
    model.sequence_layout = layout
    return SequenceParallelism(dims, rank, layout, SequenceParallelMPU(groups))
