"""Exponential moving average of a model's weights.

``shadow = decay * shadow + (1 - decay) * weights`` after every ``update``;
``decay = 0`` keeps the latest weights. The shadow is keyed like the model's
``state_dict`` (so ``state_dict()`` can be saved as model weights); non-float
entries are copied, not averaged. Float entries are kept in fp32 on ``device``
(default: where the model's weights are when the EMA is made); each update copies
the weights there explicitly, so a model on a GPU can keep its average on the CPU.

This is the EMA of a plain module. A DeepSpeed island averages its fp32 master
weights shard by shard instead (``atoll.train.ema_shards``).
"""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, device: torch.device | str | None = None):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}; use 0 for 'the latest weights'")
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {k: v.detach().to(device=device or v.device, dtype=torch.float32 if v.is_floating_point()
                                         else v.dtype, copy=True) for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Moves the shadow towards the model's current weights."""
        sd = model.state_dict()
        if sd.keys() != self.shadow.keys():
            raise ValueError("EMA.update got a model whose state_dict keys differ from the one it was built from")
        for k, v in sd.items():
            s = self.shadow[k]
            v = v.detach().to(device=s.device, dtype=s.dtype)
            if self.decay == 0 or not s.is_floating_point():
                s.copy_(v)
            else:
                s.lerp_(v, 1.0 - self.decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Loads the averaged weights into ``model``."""
        model.load_state_dict(self.shadow, strict=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (a model state dict)."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.shadow.keys():
            missing, extra = self.shadow.keys() - state.keys(), state.keys() - self.shadow.keys()
            raise ValueError(f"EMA state keys differ: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
        for k, v in state.items():
            self.shadow[k].copy_(v)
