"""The thin layer over DeepSpeed: config, engine, checkpoint save/load/convert, checkpoint file ownership.

Every ``deepspeed.*`` call of the training code lives here.
"""
from __future__ import annotations

from pathlib import Path

import torch

from atoll.spec.models import TrainingSpec


def use_bf16(training: TrainingSpec, device: torch.device) -> bool:
    """``auto``: bf16 on GPUs that have it, fp32 on CPU.

    On CPU bf16 only pays for large matmuls: a DiT-XXS/4 training step at batch
    64 ran at 198 samples/s in fp32 and 85 in bf16 on one core (bench/train_step.py).
    """
    if training.precision != "auto":
        return training.precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return False


def ds_config(training: TrainingSpec, world_size: int, bf16: bool, load_universal: bool = False,
              sequence_parallel: int = 1) -> dict:
    """The engine's config. bf16 is DeepSpeed's own mixed precision: bf16 module and gradients,
    fp32 master weights and Adam moments in the optimizer (ZeRO 1-3; ``BF16``/``FP16_Optimizer``
    wrapper at stage 0). ``load_universal``: the next ``load_checkpoint`` reads a universal
    checkpoint (``to_universal``), which any data-parallel world size can load. ``world_size``: the
    data-parallel replicas (the ranks when there is no sequence parallelism).

    ``sequence_parallel > 1`` at ZeRO-3: ``reduce_scatter: false``. DeepSpeed 0.19's ZeRO-3
    reduce-scatter path (``__avg_scatter_grads``) averages gradients over all sp x dp ranks, ignoring
    the sequence-parallel degree (its all-reduce path divides by dp as stages 0-2 do), which halves
    the gradients at sp=2; tests/parallel/test_sp_training.py catches it."""
    micro = training.batch_size // (world_size * training.grad_accum)
    cfg = {
        "train_batch_size": training.batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": training.grad_accum,
        "zero_optimization": {"stage": training.zero_stage},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if sequence_parallel > 1 and training.zero_stage == 3:
        cfg["zero_optimization"]["reduce_scatter"] = False
    if load_universal:
        cfg["checkpoint"] = {"load_universal": True}
    if training.grad_clip:
        cfg["gradient_clipping"] = training.grad_clip
    return cfg


def initialize(model: torch.nn.Module, training: TrainingSpec, world_size: int, bf16: bool,
               load_universal: bool = False, mpu=None):
    """A DeepSpeed engine with a torch AdamW (no JIT-compiled optimizer) and warmup LR.

    ``mpu``: ``atoll.parallel.mpu.SequenceParallelMPU`` for a sequence-parallel island (DeepSpeed then
    sums gradients over a clip's ranks and averages over the ``world_size`` data-parallel replicas).

    The engine moves the module to the process's current accelerator device (``Placement.activate``
    made it the chosen one) and, with bf16, casts it; the fp32 master copy lives in the optimizer."""
    import deepspeed
    import torch.distributed as dist

    from atoll.train import ds_shm

    ds_shm.prepare(dist.get_world_size() if dist.is_initialized() else 1)
    sp = 1 if mpu is None else int(mpu.get_sequence_parallel_world_size())
    opt = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=training.weight_decay,
                            betas=(0.9, 0.999))
    warm = max(1, training.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, mpu=mpu,
                                           config=ds_config(training, world_size, bf16, load_universal, sp))
    return engine


def zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


def save(engine, directory: Path, tag: str, client_state: dict) -> None:
    """``engine.save_checkpoint`` (every rank; each writes its own ZeRO partition). The client state
    carries DeepSpeed's universal-checkpoint marker so ``to_universal`` can convert the folder."""
    from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

    state = {UNIVERSAL_CHECKPOINT_INFO: {}, **client_state}
    engine.save_checkpoint(str(directory), tag=tag, client_state=state, save_latest=False)


def to_universal(directory: Path, tag: str, out_tag: str) -> None:
    """Converts checkpoint ``directory/tag`` (all ranks' files present) into a universal checkpoint at
    ``directory/out_tag`` (DeepSpeed's ``ds_to_universal``, in-process, no worker pool)."""
    import argparse
    import contextlib
    import io

    from deepspeed.checkpoint.ds_to_universal import main

    args = argparse.Namespace(input_folder=str(Path(directory) / tag), output_folder=str(Path(directory) / out_tag),
                              num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=False)
    with contextlib.redirect_stdout(io.StringIO()):  # its progress prints go nowhere useful
        main(args)


def load(engine, directory: Path, tag: str) -> dict:
    path, client = engine.load_checkpoint(str(directory), tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint {tag!r} in {directory}")
    return client or {}


def needed_by_rank(filename: str, rank: int) -> bool:
    """Which files of a checkpoint folder rank ``rank`` reads to resume at the same world size:
    the common ones and its own ZeRO partition."""
    return "zero_pp_rank_" not in filename or owned_by_rank(filename, rank)


def owned_by_rank(filename: str, rank: int) -> bool:
    """Which rank uploads a file of a DeepSpeed checkpoint folder.

    Optimizer partitions carry ``zero_pp_rank_<r>_``; the rest is written by rank 0.
    """
    marker = "zero_pp_rank_"
    if marker in filename:
        return filename.split(marker, 1)[1].split("_", 1)[0] == str(rank)
    return rank == 0
