"""The EMA of a DeepSpeed island: an fp32 shadow of *this rank's part* of the fp32 master weights.

``shadow = decay * shadow + (1 - decay) * master`` is elementwise, so each rank can keep the
average of exactly the part of the master weights its optimizer owns (``ds_master.MasterWeights``)
and the result is the same as averaging full weights. Why not gather: under ZeRO-3 a full copy
would all-gather every parameter every step (a whole model's traffic and memory per step, as
much as the forward's gathers); under ZeRO-1/2 it would keep a whole fp32 model per rank. The
shard update is one fused ``lerp`` over this rank's views, on the device the optimizer's master
weights live on (the GPU, or the CPU under optimizer offload), with no communication at all.

The average is taken of the **fp32 master weights**, not of the bf16 module copy that the forward
uses, so bf16 training does not round the EMA every step. Full tensors are assembled only when
saved (checkpoints, snapshots, the final model), and a resume cuts each rank's part back out of
the saved full tensors, so a checkpoint taken at one world size resumes at another.
"""
from __future__ import annotations

import torch

from atoll.train.ds_master import MasterWeights


class ShardedEMA:
    def __init__(self, master: MasterWeights, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}; use 0 for 'the latest weights'")
        self.master, self.decay = master, float(decay)
        self.shadow = [p.detach().clone().float() for p in master.parts()]
        self.num_updates = 0

    @property
    def device(self) -> torch.device | None:
        return self.shadow[0].device if self.shadow else None

    @torch.no_grad()
    def update(self) -> None:
        """After ``engine.step()``: moves this rank's shadow towards the current master weights."""
        parts = self.master.parts()
        if self.decay == 0:
            torch._foreach_copy_(self.shadow, parts)
        else:
            torch._foreach_lerp_(self.shadow, parts, 1.0 - self.decay)
        self.num_updates += 1

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights as a full model state dict (parameters + current buffers), CPU fp32.
        Collective: every rank must call it."""
        return {**self.master.full(self.shadow), **self.master.buffers()}

    def load_full(self, state: dict[str, torch.Tensor], num_updates: int = 0) -> None:
        """Restores the shadow from full tensors (``full_state_dict`` of any world size)."""
        self.shadow = self.master.part_of(state, self.shadow)
        self.num_updates = int(num_updates)


def full_weights(master: MasterWeights) -> dict[str, torch.Tensor]:
    """The trained (raw) weights: full fp32 master weights + buffers, CPU. Collective."""
    return {**master.full(master.parts()), **master.buffers()}
