"""Run in each plain torch.distributed worker (``python sp_train_checks.py OUT_DIR``, one process per rank,
started like torchrun by ``plain_launch.run_workers``; ``plain_context`` makes the gloo group).

For every case (sequence-parallel degree, attention layout, ZeRO stage, clip shape) it takes ONE
training step the way the island loop does (``sequence_parallel.setup`` on the model,
``dse.initialize(..., mpu=...)``, ``loop.micro_loss`` with data and noise keyed by the data-parallel
rank, ``engine.backward``), reads every parameter's full gradient back from DeepSpeed
(``safe_get_full_grad``, i.e. after its reduction), and compares it with the single-rank step on the
same clips and the same noise (all dp replicas' micro-batches in one process, plain autograd,
``LocalSequence``). Writes ``OUT_DIR/sp-train-rank<r>.json``.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

# (sp, attention, ring degree, ZeRO stage, (frames, side)); VDiT-XXS/4: tokens = frames/2 * (side/4)^2
CASES = {
    2: [(2, "ulysses", None, 0, (2, 12)), (2, "ulysses", None, 1, (4, 8)), (2, "ulysses", None, 2, (2, 12)),
        (2, "ulysses", None, 3, (2, 12)), (2, "ring", None, 2, (2, 12))],
    4: [(4, "ulysses", None, 2, (2, 12)), (4, "ulysses", None, 0, (4, 8)), (2, "ulysses", None, 1, (2, 12)),
        (2, "ring", None, 3, (4, 8)), (4, "ring", None, 2, (2, 12)), (4, "hybrid", 2, 0, (2, 12)),
        (4, "hybrid", 2, 2, (4, 8))],
}
BATCH = 8  # global clips per step


def _task(world: int, sp: int, attention: str, ring: int | None, stage: int, frames: int, side: int):
    from atoll.spec import loads
    from atoll.train.tasks import make_task

    extra = f", ringDegree: {ring}" if ring else ""
    job = loads(textwrap.dedent(f"""
        apiVersion: atoll/v1
        kind: Job
        metadata: {{name: sp-check}}
        spec:
          store: {{uri: /tmp/unused}}
          data: {{source: {{type: moving-clips, images: digits, numClips: 64, frames: 4, size: 16}}}}  # clips: set below
          partition: {{k: 1, fineClusters: 4}}
          experts:
            model: VDiT-XXS/4
            training: {{steps: 1, batchSize: {BATCH}, zeroStage: {stage}, precision: fp32, gradClip: 1.0e+9,
                        classDropout: 0.25, lr: 0.01}}
            scaling: {{numWorkers: {world}, sequenceParallel: {sp}, attention: {attention}{extra}}}
        """))
    task = make_task(job, "expert", 0)
    g = torch.Generator().manual_seed(frames * 100 + side)
    n = 24  # clips in memory (the data stage is not what is tested here)
    clips = torch.randint(0, 256, (n, 1, frames, side, side), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    task.sample_shape, task.num_classes = (1, frames * side, side), 10  # a stored clip: [C, T*H, W]

    def batch(step, micro, rank, world, accum_i, accum, device):  # replica `rank`'s clips of the step
        from atoll.train.tasks import Batch, to_unit

        start = ((step * accum + accum_i) * world + rank) * micro
        idx = torch.arange(start, start + micro) % n
        return Batch(to_unit(clips[idx]).to(device), labels[idx].to(device))

    task.batch = batch
    return job, task


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """adaLN-Zero starts with zero output layers (zero gradients for most weights): move every weight."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def one_case(rank: int, world: int, case) -> dict:
    from deepspeed.utils import safe_get_full_grad

    from atoll.train import deepspeed_engine as dse
    from atoll.train.loop import micro_loss
    from atoll.train.sequence_parallel import setup

    sp, attention, ring, stage, (frames, side) = case
    job, task = _task(world, sp, attention, ring, stage, frames, side)
    tr, scaling, seed, device = task.training, job.spec.experts.scaling, 1234, torch.device("cpu")
    torch.manual_seed(seed)
    model = _perturb(task.build_model())
    ref = _perturb(task.build_model())  # the same weights (same seed), every token on this process
    ref.load_state_dict(model.state_dict())

    spp = setup(scaling, model, rank, world)
    dp = spp.dp
    micro = BATCH // dp
    engine = dse.initialize(model, tr, dp, False, mpu=spp.mpu)
    loss = micro_loss(task, engine, seed, 0, micro, spp.dp_rank, dp, 0, 1, device, torch.float32)
    engine.backward(loss)
    grads = {n: safe_get_full_grad(p) for n, p in engine.module.named_parameters()}  # collective (ZeRO)

    # the single-rank step: every replica's micro-batch with its own noise, the mean of their losses
    losses = [micro_loss(task, ref, seed, 0, micro, d, dp, 0, 1, device, torch.float32) for d in range(dp)]
    total = torch.stack(losses).mean()
    total.backward()
    errs = {n: float((grads[n].float() - p.grad).abs().max()) for n, p in ref.named_parameters()}
    engine.step()  # the clipping norm DeepSpeed computes (clipping on, at a bound nothing reaches)
    norm = engine.get_global_grad_norm()
    ref_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ref.parameters())))
    worst = max(errs, key=errs.get)
    res = {"case": [sp, attention, ring, stage, frames, side], "tokens": task.model_config().num_tokens,
           "dp": dp, "dp_rank": spp.dp_rank, "engine_stage": dse.zero_stage(engine),
           "loss": float(loss), "ref_loss_of_replica": float(losses[spp.dp_rank]),
           "loss_err": abs(float(loss) - float(losses[spp.dp_rank])),
           "params": len(errs), "grad_max_abs_err": errs[worst], "worst_param": worst,
           "grad_scale": max(float(p.grad.abs().max()) for p in ref.parameters()),
           "grad_norm": None if norm is None else float(norm), "ref_grad_norm": ref_norm,
           "zero_grad_params": sum(int(float(p.grad.abs().max()) == 0.0) for p in ref.parameters())}
    del engine
    return res


def main(out_dir: str) -> None:
    import torch.distributed as dist

    from atoll.train.context import plain_context

    torch.set_num_threads(1)
    ctx = plain_context()
    results = [one_case(ctx.rank, ctx.world, c) for c in CASES[ctx.world]]
    Path(out_dir, f"sp-train-rank{ctx.rank}.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
