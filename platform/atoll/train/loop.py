"""The training loop of one island, run by every worker of the island (Ray Train or plain).

One loop for experts and the router (the ``Task`` differs). Order per run:
worker context -> device (``atoll.devices.for_training``, once) -> unit seed -> data -> model ->
sequence parallelism (video experts with ``scaling.sequenceParallel > 1``: ``sequence_parallel.py``;
batches and noise are then keyed by the data-parallel rank) -> DeepSpeed engine on that device ->
resume from the store's latest committed checkpoint (resharded through a universal checkpoint when
the world size changed) -> train to ``steps`` with the sharded EMA of the fp32 master weights, periodic progress, metrics, snapshots and checkpoints -> the final
model from the fp32 master weights, written by rank 0, and the island's manifest.

``train_island(cfg)`` is Ray Train's ``train_loop_per_worker``; ``train_island(cfg, plain_context())``
runs the same loop without Ray (one process, or torchrun's workers).
"""
from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from atoll import devices, fence
from atoll.spec import parse
from atoll.store import S3Config, Store, open_store
from atoll.train import checkpoints as ckpt
from atoll.train import deepspeed_engine as dse
from atoll.train.context import WorkerContext
from atoll.train.ds_master import MasterWeights
from atoll.train.ema_shards import ShardedEMA, full_weights
from atoll.train.report import IslandLog
from atoll.train.resume import Resume, prepare_resume
from atoll.train.seeds import step_seed, unit_seed
from atoll.train.sequence_parallel import setup as sequence_parallel_setup
from atoll.train.tasks import Task, make_task


def _mean(x: float, world: int, device: torch.device) -> float:
    """The mean of ``x`` over the island's ranks (the tensor lives on the worker's device: NCCL needs CUDA)."""
    if world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


def initial_model(task: Task, seed: int) -> torch.nn.Module:
    """The unit's initial weights: a pure function of its seed (``seeds.unit_seed``), on the CPU."""
    torch.manual_seed(seed)
    return task.build_model()


def micro_loss(task: Task, model, seed: int, step: int, micro: int, dp_rank: int, dp: int, a: int, accum: int,
               device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The loss of micro-batch ``a`` of ``step`` on data-parallel replica ``dp_rank`` of ``dp``: its clips
    and its noise are keyed by the replica, so the ranks of one sequence group see the same ones."""
    batch = task.batch(step, micro, dp_rank, dp, a, accum, device)
    gen = torch.Generator().manual_seed(step_seed(seed, step, dp_rank, a))
    return task.loss(model, batch, gen, dtype)


def train_island(cfg: dict, ctx: WorkerContext | None = None) -> None:
    """``train_loop_per_worker``: cfg has job (dict), role, expert, prefix, run_uri, s3."""
    if ctx is None:
        from atoll.train import raytrain

        ctx = raytrain.context()
    rank, world = ctx.rank, ctx.world
    job = parse(cfg["job"], source="job")
    run = open_store(cfg["run_uri"], S3Config(**cfg.get("s3", {})))
    island = fence.guard(run.sub(cfg["prefix"]), cfg.get("attempt", 0))  # a superseded attempt writes nothing
    task = make_task(job, cfg["role"], cfg.get("expert"))
    seed = unit_seed(task.training.seed, cfg["role"], cfg.get("expert"))
    task.training = task.training.model_copy(update={"seed": seed})  # this unit's own streams
    tr = task.training
    scaling = job.spec.router.scaling if cfg["role"] == "router" else job.spec.experts.scaling
    placement = devices.for_training(scaling.use_gpu, ctx.local_rank).activate()
    device = placement.device
    threads = int(os.environ.get("ATOLL_TORCH_THREADS", "0")) or max(1, int(cfg.get("cpus_per_worker", 1)))
    torch.set_num_threads(threads)

    task.load(run)
    bf16 = dse.use_bf16(tr, device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = initial_model(task, seed)
    spp = sequence_parallel_setup(scaling, model, rank, world)  # collective when sp > 1
    dp, dp_rank = spp.dp, spp.dp_rank  # data and noise are per replica (== rank, world when sp = 1)
    scratch = ckpt.scratch_dir(task.name)
    resume = prepare_resume(island, scratch, rank, world, tr.zero_stage)
    engine = dse.initialize(model, tr, dp, bf16, load_universal=bool(resume and resume.universal), mpu=spp.mpu)
    devices.check_placed(engine.module, device, f"{task.name} on {placement}")
    master = MasterWeights(engine, tr.zero_stage)
    ema = ShardedEMA(master, tr.ema_decay)

    log = IslandLog(island, task, world, attempt_key=cfg.get("attempt", 0))
    log.extra.update(zero_stage=dse.zero_stage(engine), precision="bf16" if bf16 else "fp32",
                     device=str(placement), master_weights=master.kind, ema_device=str(ema.device))
    if spp.sp > 1:
        log.extra.update(spp.describe())
    start = 0 if resume is None else _load(engine, ema, resume, log)

    accum = tr.grad_accum
    micro = tr.batch_size // (dp * accum)
    loss_sum, n_loss, t_last, step_last = 0.0, 0, time.time(), start
    last_metrics: dict = {"step": start}
    for step in range(start, tr.steps):
        for a in range(accum):
            loss = micro_loss(task, engine, seed, step, micro, dp_rank, dp, a, accum, device, dtype)
            engine.backward(loss)
            engine.step()
            loss_sum, n_loss = loss_sum + float(loss.detach()), n_loss + 1
        ema.update()  # this rank's part of the fp32 master weights: no communication
        done = step + 1
        if done % tr.log_every == 0 or done == tr.steps:
            loss_avg = _mean(loss_sum / max(1, n_loss), world, device)
            dt = max(1e-9, time.time() - t_last)
            sps = (done - step_last) * tr.batch_size / dt
            lr = engine.get_lr()[0] if hasattr(engine, "get_lr") else tr.lr
            if rank == 0:
                log.step(done, loss_avg, sps, lr)
            last_metrics = {"step": done, "loss": loss_avg, "samples_per_s": sps}
            loss_sum, n_loss, t_last, step_last = 0.0, 0, time.time(), done
        if tr.snapshot_every and done % tr.snapshot_every == 0 and done < tr.steps:
            _save_snapshot(master, ema, task, island, done, rank)  # before the checkpoint: a
            # resume from an older checkpoint rewrites it identically, and none is ever skipped
        if done % tr.checkpoint_every == 0 and done < tr.steps:
            _save_checkpoint(engine, ema, island, scratch, done, rank, world, tr.zero_stage, spp.sp)
            if rank == 0:
                log.checkpoint(done)
            ctx.report(last_metrics)  # a barrier: kept to checkpoint steps, progress goes to the store

    fingerprint = cfg.get("fingerprint")
    if fingerprint is None:
        from atoll.islands.plan import Unit, training_fingerprint

        fingerprint = training_fingerprint(job, Unit(cfg["role"], cfg.get("expert"), cfg["prefix"]))
    log.extra["peak_rss_mb_per_rank"] = _peak_rss_mb(world, device)
    _finish(master, ema, task, island, rank, world, log, fingerprint, ctx)


def _load(engine, ema: ShardedEMA, resume: Resume, log: IslandLog) -> int:
    """Loads the engine and the EMA from ``resume``; returns the step to continue from."""
    client = dse.load(engine, resume.directory, resume.tag)
    if "ema" not in client:
        raise ValueError(f"checkpoint step {resume.step} has no EMA state; it was not written by this version "
                         "of Atoll: retrain the unit (`atoll run JOB.yaml --from experts`)")
    ema.load_full(client["ema"], client.get("ema_updates", 0))
    step = int(client["step"])
    log.resume(step)
    if resume.saved_world != resume.world:
        log.extra.setdefault("reshards", []).append(
            {"step": step, "saved_world_size": resume.saved_world, "world_size": resume.world})
    return step


def _save_checkpoint(engine, ema: ShardedEMA, island: Store, scratch, step: int, rank: int, world: int,
                     stage: int, sp: int = 1) -> None:
    state = {"step": step, "ema": ema.full_state_dict(), "ema_updates": ema.num_updates}  # collective
    dse.save(engine, scratch, ckpt.tag(step), state)
    ckpt.upload_rank_files(island, scratch, step, lambda name: dse.owned_by_rank(name, rank))
    if world > 1:
        dist.barrier()
    if rank == 0:
        ckpt.commit(island, step, {"world_size": world, "zero_stage": stage, "sequence_parallel": sp})
    if world > 1:
        dist.barrier()


def _full_models(master: MasterWeights, ema: ShardedEMA, task: Task, rank: int):
    """(trained model, EMA model or None) from the fp32 master weights, on rank 0 (None, None elsewhere).
    Every rank must call it: assembling full tensors is collective under ZeRO."""
    weights = full_weights(master)
    averaged = ema.full_state_dict() if task.training.ema_decay > 0 else None
    if rank != 0:
        return None, None
    model = task.build_model()
    model.load_state_dict(weights)
    if averaged is None:
        return model, None
    ema_model = task.build_model()
    ema_model.load_state_dict(averaged)
    return model, ema_model


def _save_model(model, ema_model, task: Task, island: Store, prefix: str, step: int,
                extra: dict | None = None) -> None:
    """``save_pretrained`` of ``model`` (with the EMA weights as the main ones when the task keeps an EMA)."""
    from atoll.models.checkpoint import save_pretrained

    save_pretrained(model, island, prefix, ema_weights=None if ema_model is None else ema_model.state_dict(),
                    extra={"role": task.kind, "name": task.name, "steps": step, **(extra or {})})


def _save_snapshot(master: MasterWeights, ema: ShardedEMA, task: Task, island: Store, step: int, rank: int) -> None:
    """The EMA weights at ``step`` as a loadable model under ``snapshots/step-N`` (rank 0 writes)."""
    model, ema_model = _full_models(master, ema, task, rank)
    if model is not None:
        _save_model(model, ema_model, task, island, f"snapshots/{ckpt.tag(step)}", step)


def _peak_rss_mb(world: int, device: torch.device) -> list[float]:
    """Every rank's peak resident memory (MB), gathered (collective)."""
    import resource

    mine = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0], dtype=torch.float64,
                        device=device)
    if world == 1:
        return [float(mine.item())]
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    return [round(float(t.item()), 1) for t in every]


def _finish(master: MasterWeights, ema: ShardedEMA, task: Task, island: Store, rank: int, world: int,
            log: IslandLog, fingerprint: str, ctx: WorkerContext) -> None:
    model, ema_model = _full_models(master, ema, task, rank)
    if rank == 0:
        extra = {}
        if task.kind == "router":
            from atoll.train.tasks import router_accuracy

            scored = (ema_model if ema_model is not None else model).eval()
            acc = router_accuracy(scored, task)
            log.extra["accuracy_vs_t"] = extra["accuracy_vs_t"] = acc
            if getattr(task, "classes", None) is not None:
                blind = router_accuracy(scored, task, with_class=False)
                log.extra["accuracy_vs_t_no_class"] = extra["accuracy_vs_t_no_class"] = blind
        _save_model(model, ema_model, task, island, "model", task.training.steps, extra)
        log.extra["fingerprint"] = fingerprint
        log.finish(model_config=task.model_config())
    if world > 1:
        dist.barrier()
    ctx.report({"step": task.training.steps, "done": 1})
