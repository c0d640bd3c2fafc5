"""The fp32 master weights of a DeepSpeed engine: this rank's part of each parameter, and the
collective that puts full tensors back together from parts laid out like them.

This is the one module that reads DeepSpeed's internal layout (beside ``deepspeed_engine.py``,
the thin layer over its public calls). Which part a rank holds depends on the engine:

=====================  ==========================================  ================================
engine                 this rank's part of a parameter             full tensor from parts
=====================  ==========================================  ================================
stage 0, fp32          the parameter itself (every rank: all)      no communication
stage 0, bf16          its fp32 copy in DeepSpeed's FP16_(Unfused)  no communication (a full copy)
                       Optimizer
stage 1 / 2 (any)      ``param._hp_mapping.get_hp_fragment()``:     zeros + own fragment, all-reduce
                       a contiguous range of the flattened param    (sum) over the data-parallel group
stage 3                ``safe_get_local_fp32_param``: elements      all-gather of the padded parts,
                       ``[r * P, (r + 1) * P)`` of the param        cut to the parameter's size
=====================  ==========================================  ================================

The parts are views into the optimizer's fp32 tensors (on the engine's device), so reading them
after ``engine.step()`` reads the weights the optimizer just wrote, without copies or
communication; that is what the sharded EMA (``train/ema_shards.py``) is built on. Full tensors
are only made at checkpoints, snapshots and the end (``full``), and from full tensors each rank
takes its part back (``part_of``), whatever the world size that saved them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class _Slot:
    name: str
    param: torch.nn.Parameter
    shape: torch.Size
    numel: int


class MasterWeights:
    """This rank's fp32 master-weight parts of ``engine.module``'s parameters (in ``named_parameters`` order)."""

    def __init__(self, engine, zero_stage: int):
        self.engine, self.stage = engine, int(zero_stage)
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.slots = [_Slot(n, p, _full_shape(p), _full_numel(p)) for n, p in engine.module.named_parameters()]
        self.kind = self._kind()

    # -- which layout ---------------------------------------------------------------
    def _kind(self) -> str:
        if self.stage == 3:
            return "zero3"
        first = self.slots[0].param if self.slots else None
        if first is not None and hasattr(first, "_hp_mapping"):
            return "fragments"  # ZeRO-1/2 and DeepSpeed's BF16_Optimizer
        if hasattr(self.engine.optimizer, "fp32_groups_flat") or hasattr(self.engine.optimizer, "fp32_groups"):
            return "fp16-optimizer"  # stage 0 with bf16: full fp32 copies on every rank
        return "replica"  # stage 0 fp32: the module's parameters are the master weights

    def _fp16_optimizer_views(self) -> list[torch.Tensor]:
        """FP16_Optimizer keeps one fp32 flat per group, FP16_UnfusedOptimizer one fp32 copy per parameter."""
        opt = self.engine.optimizer
        views: dict[int, torch.Tensor] = {}
        if hasattr(opt, "fp32_groups_flat"):
            for group, flat in zip(opt.fp16_groups, opt.fp32_groups_flat):
                offset = 0
                for p in group:
                    views[id(p)] = flat.narrow(0, offset, p.numel())
                    offset += p.numel()
        else:
            for group, copies in zip(opt.fp16_groups, opt.fp32_groups):
                for p, q in zip(group, copies):
                    views[id(p)] = q.data.view(-1)
        return [views[id(s.param)] for s in self.slots]

    # -- this rank's parts ---------------------------------------------------------------
    def parts(self) -> list[torch.Tensor]:
        """This rank's fp32 part of every parameter (1-D views; possibly empty)."""
        if self.kind == "replica":
            return [s.param.detach().view(-1) for s in self.slots]
        if self.kind == "fp16-optimizer":
            return self._fp16_optimizer_views()
        if self.kind == "fragments":
            out = []
            for s in self.slots:
                m = s.param._hp_mapping
                out.append(m.get_hp_fragment().detach().view(-1) if m is not None
                           else torch.zeros(0, dtype=torch.float32, device=s.param.device))
            return out
        from deepspeed.utils import safe_get_local_fp32_param

        return [safe_get_local_fp32_param(s.param).detach().view(-1) for s in self.slots]

    def _range(self, s: _Slot) -> tuple[int, int]:
        """(start, length) of this rank's part inside the flattened full parameter."""
        if self.kind in ("replica", "fp16-optimizer"):
            return 0, s.numel
        if self.kind == "fragments":
            m = s.param._hp_mapping
            return (0, 0) if m is None else (m.lp_fragment_address.start, m.lp_fragment_address.numel)
        size = s.param.ds_tensor.numel()  # stage 3: padded partitions of equal size
        start = self.rank * size
        return start, max(0, min(size, s.numel - start))

    # -- full tensors ---------------------------------------------------------------------
    def full(self, parts: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full fp32 tensors (CPU) from parts laid out like ``parts()``. Collective: every rank calls it."""
        out = {}
        for s, part in zip(self.slots, parts):
            start, length = self._range(s)
            if self.kind in ("replica", "fp16-optimizer") or self.world == 1 and self.kind == "fragments":
                full = part.detach().float().reshape(s.shape)
            elif self.kind == "fragments":
                buf = torch.zeros(s.numel, dtype=torch.float32, device=part.device)
                buf.narrow(0, start, length).copy_(part.narrow(0, 0, length))
                dist.all_reduce(buf)
                full = buf.reshape(s.shape)
            else:
                size = s.param.ds_tensor.numel()
                mine = torch.zeros(size, dtype=torch.float32, device=part.device)
                mine.narrow(0, 0, length).copy_(part.narrow(0, 0, length))
                gathered = [torch.empty_like(mine) for _ in range(self.world)]
                dist.all_gather(gathered, mine)
                full = torch.cat(gathered).narrow(0, 0, s.numel).reshape(s.shape)
            out[s.name] = full.cpu()
        return out

    def part_of(self, full: dict[str, torch.Tensor], like: list[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's parts cut from full tensors (e.g. saved at another world size), shaped like ``like``."""
        missing = [s.name for s in self.slots if s.name not in full]
        if missing:
            raise KeyError(f"the saved weights lack {len(missing)} parameters, e.g. {missing[:3]}")
        out = []
        for s, ref in zip(self.slots, like):
            start, length = self._range(s)
            flat = full[s.name].reshape(-1).to(device=ref.device, dtype=torch.float32)
            if flat.numel() != s.numel:
                raise ValueError(f"{s.name}: saved {flat.numel()} elements, the model has {s.numel}")
            part = torch.zeros_like(ref)
            part.narrow(0, 0, length).copy_(flat.narrow(0, start, length))
            out.append(part)
        return out

    def buffers(self) -> dict[str, torch.Tensor]:
        """The module's persistent buffers (state-dict entries that are not parameters; ZeRO never
        partitions them), as CPU copies."""
        params = {s.name for s in self.slots}
        return {k: v.detach().cpu().clone() for k, v in self.engine.module.state_dict().items() if k not in params}


def _full_shape(p: torch.nn.Parameter) -> torch.Size:
    return p.ds_shape if hasattr(p, "ds_shape") else p.shape


def _full_numel(p: torch.nn.Parameter) -> int:
    return int(p.ds_numel) if hasattr(p, "ds_numel") else p.numel()
