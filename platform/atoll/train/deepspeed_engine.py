"""The thin layer over DeepSpeed: config, engine, checkpoint save/load, full weights.

Every ``deepspeed.*`` call of the training code lives here.
"""
from __future__ import annotations

import contextlib
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


def ds_config(training: TrainingSpec, world_size: int, bf16: bool) -> dict:
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
    if training.grad_clip:
        cfg["gradient_clipping"] = training.grad_clip
    return cfg


def initialize(model: torch.nn.Module, training: TrainingSpec, world_size: int, bf16: bool):
    """A DeepSpeed engine with a torch AdamW (no JIT-compiled optimizer) and warmup LR."""
    import deepspeed

    opt = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=training.weight_decay,
                            betas=(0.9, 0.999))
    warm = max(1, training.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                           config=ds_config(training, world_size, bf16))
    return engine


def save(engine, directory: Path, tag: str, client_state: dict) -> None:
    engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)


def load(engine, directory: Path, tag: str) -> dict:
    path, client = engine.load_checkpoint(str(directory), tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint {tag!r} in {directory}")
    return client or {}


@contextlib.contextmanager
def full_parameters(engine, stage: int):
    """Makes every parameter whole on each rank (ZeRO-3 partitions them)."""
    if stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            yield
    else:
        yield


def full_state_dict(engine, stage: int) -> dict[str, torch.Tensor]:
    """fp32 copies of the module's full weights (gathered under ZeRO-3)."""
    with full_parameters(engine, stage):
        return {k: v.detach().float().cpu().clone() for k, v in engine.module.state_dict().items()}


def owned_by_rank(filename: str, rank: int) -> bool:
    """Which rank uploads a file of a DeepSpeed checkpoint folder.

    Optimizer partitions carry ``zero_pp_rank_<r>_``; the rest is written by rank 0.
    """
    marker = "zero_pp_rank_"
    if marker in filename:
        return filename.split(marker, 1)[1].split("_", 1)[0] == str(rank)
    return rank == 0
