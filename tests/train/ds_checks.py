"""Checks that run inside plain torch.distributed workers (``python ds_checks.py CHECK OUT_DIR``, one
process per rank, started by ``plain_launch.run_workers``). Each writes ``OUT_DIR/<check>-rank<r>.json``.

* ``master``: for every ZeRO stage 0-3 in fp32 and bf16, the master-weight parts assembled by
  ``ds_master.MasterWeights`` equal DeepSpeed's own full fp32 weights, parts cut from full tensors
  equal the parts, and the sharded EMA equals an EMA of the full fp32 weights kept alongside.
* ``shm``: whether an engine's communication backend holds DeepSpeed's shared-memory op (none at one rank).
* ``save`` / ``load``: a bf16 engine (ZeRO stage ``CHECK_ZERO_STAGE``, default 2) + EMA saved at one
  world size and resumed (through
  ``resume.prepare_resume``, i.e. a universal checkpoint) at another: weights, Adam moments and EMA
  as saved.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _model():
    from atoll.models.dit import DiTConfig

    torch.manual_seed(0)
    return DiTConfig(size="DiT-XXS/2", input_size=8, in_channels=1, num_classes=10).build()


def _training(stage: int, bf16: bool, world: int):
    from atoll.spec.models import TrainingSpec

    return TrainingSpec(steps=10, batch_size=4 * world, zero_stage=stage, precision="bf16" if bf16 else "fp32",
                        lr=1e-2, ema_decay=0.9, grad_clip=None)


def _step(engine, rank: int, step: int, dtype) -> None:
    g = torch.Generator().manual_seed(100 * step + rank)
    x = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.rand(4, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    loss = (engine(x.to(dtype), t.to(dtype), y=y).float() - x).pow(2).mean()
    engine.backward(loss)
    engine.step()


def _reference_full(engine, names_params, stage: int, bf16: bool) -> dict[str, torch.Tensor]:
    """Full fp32 master weights through DeepSpeed's public API (or the module itself at stage 0 fp32)."""
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for n, p in names_params:
        full = safe_get_full_fp32_param(p)
        if full is None:  # no fp32 master copy known to the API: stage 0 (module fp32, or FP16 optimizer)
            if bf16:
                opt = engine.optimizer
                full = next(q for grp, cps in zip(opt.fp16_groups, opt.fp32_groups)
                            for pp, q in zip(grp, cps) if pp is p).detach().view(p.shape)
            else:
                full = p.detach()
        out[n] = full.detach().float().cpu().clone()
    return out


def check_master(rank: int, world: int) -> dict:
    import deepspeed  # noqa: F401  (the accelerator is chosen at import)

    from atoll.train import deepspeed_engine as dse
    from atoll.train.ds_master import MasterWeights
    from atoll.train.ema_shards import ShardedEMA

    results = {}
    for stage in (0, 1, 2, 3):
        for bf16 in (False, True):
            engine = dse.initialize(_model(), _training(stage, bf16, world), world, bf16)
            dtype = torch.bfloat16 if bf16 else torch.float32
            master = MasterWeights(engine, stage)
            ema = ShardedEMA(master, 0.9)
            names_params = list(engine.module.named_parameters())
            ref_ema = _reference_full(engine, names_params, stage, bf16)
            for s in range(3):
                _step(engine, rank, s, dtype)
                ema.update()
                now = _reference_full(engine, names_params, stage, bf16)
                ref_ema = {k: ref_ema[k].lerp(now[k], 0.1) for k in ref_ema}
            full = master.full(master.parts())
            err_full = max(float((full[k] - now[k]).abs().max()) for k in now)
            back = master.part_of(full, master.parts())
            err_back = max(float((a - b).abs().max()) if a.numel() else 0.0 for a, b in zip(back, master.parts()))
            averaged = ema.full_state_dict()
            err_ema = max(float((averaged[k] - ref_ema[k]).abs().max()) for k in ref_ema)
            results[f"{stage}-{'bf16' if bf16 else 'fp32'}"] = {
                "engine_stage": dse.zero_stage(engine), "kind": master.kind, "err_full": err_full,
                "err_back": err_back, "err_ema": err_ema, "ema_device": str(ema.device),
                "module_dtype": str(next(engine.module.parameters()).dtype),
                "part_numel": sum(p.numel() for p in master.parts()),
                "full_numel": sum(v.numel() for v in full.values()),
                "moved": float(max((full[k] - ref_before).abs().max() for k, ref_before in
                                   _reference_initial().items() if k in full))}
    return results


def _reference_initial() -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in _model().state_dict().items()}


def check_save(rank: int, world: int, out: Path) -> dict:
    """Trains 3 steps of ZeRO-2 bf16 + EMA and checkpoints to ``out/ckpt`` (local 'store'), and the
    full weights, Adam moments and EMA that a resume must restore."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    from atoll.store import open_store
    from atoll.train import checkpoints as ckpt
    from atoll.train import deepspeed_engine as dse
    from atoll.train.ds_master import MasterWeights
    from atoll.train.ema_shards import ShardedEMA

    stage = int(os.environ.get("CHECK_ZERO_STAGE", "2"))
    engine = dse.initialize(_model(), _training(stage, True, world), world, True)
    master = MasterWeights(engine, stage)
    ema = ShardedEMA(master, 0.9)
    for s in range(3):
        _step(engine, rank, s, torch.bfloat16)
        ema.update()
    island = open_store(str(out / "store"))
    scratch = out / f"scratch-{rank}"
    state = {"step": 3, "ema": ema.full_state_dict(), "ema_updates": 3}
    dse.save(engine, scratch, ckpt.tag(3), state)
    ckpt.upload_rank_files(island, scratch, 3, lambda name: dse.owned_by_rank(name, rank))
    torch.distributed.barrier()
    if rank == 0:
        ckpt.commit(island, 3, {"world_size": world, "zero_stage": stage})
    ref = {n: safe_get_full_fp32_param(p).cpu() for n, p in engine.module.named_parameters()}
    moments = {n: safe_get_full_optimizer_state(p, "exp_avg").cpu() for n, p in engine.module.named_parameters()}
    if rank == 0:
        torch.save({"weights": ref, "exp_avg": moments, "ema": state["ema"]}, out / "expected.pt")
    return {"saved_world": world}


def check_load(rank: int, world: int, out: Path) -> dict:
    """Resumes ``check_save``'s checkpoint through the product's resume path at this world size."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    from atoll.store import open_store
    from atoll.train import deepspeed_engine as dse
    from atoll.train.ds_master import MasterWeights
    from atoll.train.ema_shards import ShardedEMA
    from atoll.train.resume import prepare_resume

    stage = int(os.environ.get("CHECK_ZERO_STAGE", "2"))
    island = open_store(str(out / "store"))
    resume = prepare_resume(island, out / f"scratch-load-{rank}", rank, world, stage)
    engine = dse.initialize(_model(), _training(stage, True, world), world, True, load_universal=resume.universal)
    master = MasterWeights(engine, stage)
    ema = ShardedEMA(master, 0.9)
    client = dse.load(engine, resume.directory, resume.tag)
    ema.load_full(client["ema"], client["ema_updates"])
    expected = torch.load(out / "expected.pt")
    w = {n: safe_get_full_fp32_param(p).cpu() for n, p in engine.module.named_parameters()}
    m = {n: safe_get_full_optimizer_state(p, "exp_avg").cpu() for n, p in engine.module.named_parameters()}
    e = ema.full_state_dict()
    return {"universal": resume.universal, "step": int(client["step"]), "saved_world": resume.saved_world,
            "err_weights": max(float((w[k] - expected["weights"][k]).abs().max()) for k in w),
            "err_exp_avg": max(float((m[k] - expected["exp_avg"][k]).abs().max()) for k in m),
            "err_ema": max(float((e[k] - expected["ema"][k]).abs().max()) for k in expected["ema"])}


def check_shm(rank: int, world: int) -> dict:
    """Which collectives the engine's backend uses (no shared-memory op at one rank: nothing was built),
    after two training steps through them."""
    import deepspeed.comm.comm as ds_comm

    from atoll.train import deepspeed_engine as dse

    engine = dse.initialize(_model(), _training(0, False, world), world, False)
    for step in range(2):
        _step(engine, rank, step, torch.float32)
    return {"world": world, "shm_op": ds_comm.cdb.shm_comm_op is not None}


def main() -> None:
    check, out = sys.argv[1], Path(sys.argv[2])
    from atoll.train.context import plain_context

    ctx = plain_context()
    fn = {"master": lambda: check_master(ctx.rank, ctx.world),
          "save": lambda: check_save(ctx.rank, ctx.world, out),
          "load": lambda: check_load(ctx.rank, ctx.world, out),
          "shm": lambda: check_shm(ctx.rank, ctx.world)}[check]
    result = fn()
    (out / f"{check}-rank{ctx.rank}.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
