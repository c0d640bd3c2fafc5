"""The ``mpu`` object DeepSpeed's engine takes for Ulysses-style sequence parallelism (an instance: no globals).

``deepspeed.initialize(..., mpu=SequenceParallelMPU(groups))`` speaks the protocol of DeepSpeed's
own reference (``deepspeed/runtime/sequence_parallel/parallel_state_sp.py``): the presence of
``initialize_sequence_parallel`` and the absence of ``get_data_parallel_world_size`` tell the
engine that ranks are sequence x data parallel. What the engine then does (DeepSpeed 0.19):

* batch accounting: its world size is ``world / sp`` = dp, so ``train_batch_size = micro x
  gradient_accumulation x dp`` (the clips really seen per step);
* ZeRO partitions parameters, gradients and optimizer state over the *sequence-data-parallel*
  group, here the whole world (sp x dp ranks), and broadcasts the initial weights over it;
* gradients are all-reduced over that group and divided by ``world / sp`` = dp: **summed over
  the sp ranks of a clip, averaged over the dp replicas**. Summing is right because every
  weight is replicated over the sequence group and each rank's backward yields the part of the
  gradient that flowed through its own tokens (``train/sequence_parallel.py``);
* gradient-norm clipping at ZeRO-0 counts a replicated gradient once per sequence group (the
  "model-parallel" group is aliased to the sequence group, as in DeepSpeed's reference);
  tensor and pipeline parallel degrees are 1, so checkpoints are named and converted
  (``ds_to_universal``) exactly as for data parallelism.
"""
from __future__ import annotations

import torch.distributed as dist

from atoll.parallel.groups import SequenceGroups


class SequenceParallelMPU:
    def __init__(self, groups: SequenceGroups):
        self.groups = groups

    def initialize_sequence_parallel(self, sequence_parallel_size: int) -> None:
        raise RuntimeError("SequenceParallelMPU is built from existing groups (atoll.parallel.groups.sequence_groups)")

    # -- the sequence group --------------------------------------------------------------
    def get_sequence_parallel_group(self):
        return self.groups.sp

    def get_sequence_parallel_world_size(self) -> int:
        return self.groups.dims.sp

    def get_sequence_parallel_rank(self) -> int:
        return self.groups.sp_rank

    # -- sequence x data: ZeRO partitioning and gradient reduction ----------------------------------
    def get_sequence_data_parallel_group(self):
        return dist.group.WORLD

    def get_sequence_data_parallel_world_size(self) -> int:
        return self.groups.dims.world_size

    def get_sequence_data_parallel_rank(self) -> int:
        return self.groups.rank

    # -- DeepSpeed's reference aliases model parallelism to the sequence group ----------------------
    get_model_parallel_group = get_sequence_parallel_group
    get_model_parallel_world_size = get_sequence_parallel_world_size
    get_model_parallel_rank = get_sequence_parallel_rank

    # -- no tensor or pipeline parallelism ------------------------------------------------------
    def get_tensor_model_parallel_world_size(self) -> int:
        return 1

    def get_tensor_model_parallel_rank(self) -> int:
        return 0

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1
