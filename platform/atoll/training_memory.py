"""An estimate of one training worker's memory: model states by precision and ZeRO stage, plus activations.

Model states per parameter (bytes), DeepSpeed's layout with torch AdamW (docs/training.md; ZeRO paper,
Rajbhandari et al. 2020), over ``N = scaling.numWorkers`` data-parallel ranks:

| stage | weights | gradients | fp32 master copy | Adam moments (fp32 m, v) |
|---|---|---|---|---|
| 0, fp32 | 4 | 4 | - (the module is the master) | 8 |
| 0, bf16 | 2 | 2 | 4 (FP16_Optimizer copies) | 8 |
| 1 | 4 or 2 | 4 or 2 | 4 / N | 8 / N |
| 2 | 4 or 2 | (4 or 2) / N | 4 / N | 8 / N |
| 3 | (4 or 2) / N | (4 or 2) / N | 4 / N | 8 / N |

plus Atoll's EMA of the master weights (4 bytes, sharded like the master copy; none when
``emaDecay: 0``). Activations kept for the backward pass, per transformer block and micro-batch
(Korthikanti et al. 2022, ``s b h (34 + 5 a s / h)`` bytes at 16 bits, doubled in fp32; ``s``
tokens, ``h`` width, ``a`` heads) -- an upper bound: a fused attention kernel does not keep the
``5 a s^2`` score term. Not counted: DeepSpeed's communication buckets, the allocator's slack, the
process itself (a CPU worker with torch and Ray starts at about 0.5 GB resident).
"""
from __future__ import annotations

from atoll.spec.models import ScalingSpec, TrainingSpec


def state_bytes_per_param(stage: int, bf16: bool, world: int, ema: bool) -> dict[str, float]:
    """Bytes per parameter on one rank, by kind (the table above)."""
    w = 2.0 if bf16 else 4.0
    n = float(world)
    out = {"weights": w / n if stage >= 3 else w,
           "gradients": w / n if stage >= 2 else w,
           "master": (4.0 if bf16 else 0.0) if stage == 0 else 4.0 / n,
           "adam": 8.0 if stage == 0 else 8.0 / n}
    out["ema"] = (4.0 if stage == 0 else 4.0 / n) if ema else 0.0
    return out


def activation_bytes(config, micro_batch: int, bf16: bool) -> float:
    """Activations a micro-batch keeps for the backward pass (all blocks; see the module docstring)."""
    d = config.dims
    s = getattr(config, "num_tokens", None)
    if s is None:
        p = d["patch_size"]
        s = (config.input_size // p) ** 2
        if hasattr(config, "frames"):
            s *= config.frames // config.temporal_patch
    h, a = d["hidden_size"], d["num_heads"]
    per_block = s * micro_batch * h * (34 + 5 * a * s / h)
    return d["depth"] * per_block * (1.0 if bf16 else 2.0)


def training_memory(params: int, config, training: TrainingSpec, scaling: ScalingSpec) -> dict:
    """One worker's estimated memory (bytes) for a model of ``params`` parameters trained with these settings."""
    bf16 = training.precision == "bf16" or (training.precision == "auto" and scaling.use_gpu)
    world = scaling.num_workers
    per = state_bytes_per_param(training.zero_stage, bf16, world, training.ema_decay > 0)
    micro = training.batch_size // (world * training.grad_accum)
    states = {k: v * params for k, v in per.items()}
    act = activation_bytes(config, micro, bf16)
    total = sum(states.values()) + act
    return {"precision": "bf16" if bf16 else "fp32", "zero_stage": training.zero_stage, "world_size": world,
            "micro_batch": micro, "bytes": {**states, "activations": act}, "total_bytes": total}
