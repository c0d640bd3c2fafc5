"""The training loop of one island, run by every Ray Train worker.

One loop for experts and the router (the ``Task`` differs). Order per run:
load data -> build model -> DeepSpeed engine -> resume from the store's latest
committed checkpoint -> train to ``steps`` with periodic progress, metrics and
checkpoints -> rank 0 writes the final model and commits the island's manifest.
"""
from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from atoll import fence
from atoll.spec import parse
from atoll.store import S3Config, Store, open_store
from atoll.train import checkpoints as ckpt
from atoll.train import deepspeed_engine as dse
from atoll.train import raytrain
from atoll.train.report import IslandLog
from atoll.train.tasks import Task, make_task


def _mean(x: float, world: int) -> float:
    if world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world


def _step_seed(seed: int, step: int, rank: int, micro: int) -> int:
    return (seed * 1_000_003 + step) * 4099 + rank * 131 + micro + 17


def train_island(cfg: dict) -> None:
    """``train_loop_per_worker``: cfg has job (dict), role, expert, prefix, run_uri, s3."""
    rank, world = raytrain.worker_context()
    job = parse(cfg["job"], source="job")
    run = open_store(cfg["run_uri"], S3Config(**cfg.get("s3", {})))
    island = fence.guard(run.sub(cfg["prefix"]), cfg.get("attempt", 0))  # a superseded attempt writes nothing
    task = make_task(job, cfg["role"], cfg.get("expert"))
    tr = task.training
    threads = int(os.environ.get("ATOLL_TORCH_THREADS", "0")) or max(1, int(cfg.get("cpus_per_worker", 1)))
    torch.set_num_threads(threads)
    torch.manual_seed(tr.seed)

    task.load(run)
    device = raytrain.device()
    bf16 = dse.use_bf16(tr, device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = task.build_model()
    from atoll.models.ema import EMA

    ema = EMA(model, tr.ema_decay)  # an fp32 shadow, made before DeepSpeed casts the module to bf16
    engine = dse.initialize(model, tr, world, bf16)

    log = IslandLog(island, task, world, attempt_key=cfg.get("attempt", 0))
    scratch = ckpt.scratch_dir(task.name)
    start = 0
    last = ckpt.latest(island)
    if last is not None:
        ckpt.download(island, last, scratch)
        client = dse.load(engine, scratch, ckpt.tag(last))
        start = int(client["step"])
        ema.load_state_dict(client["ema"])
        log.resume(start)

    accum = tr.grad_accum
    micro = tr.batch_size // (world * accum)
    loss_sum, n_loss, t_last, step_last = 0.0, 0, time.time(), start
    last_metrics: dict = {"step": start}
    for step in range(start, tr.steps):
        for a in range(accum):
            batch = task.batch(step, micro, rank, world, a, accum, device)
            gen = torch.Generator().manual_seed(_step_seed(tr.seed, step, rank, a))
            loss = task.loss(engine, batch, gen, dtype)
            engine.backward(loss)
            engine.step()
            loss_sum, n_loss = loss_sum + float(loss.detach()), n_loss + 1
        with dse.full_parameters(engine, tr.zero_stage):
            ema.update(engine.module)
        done = step + 1
        if done % tr.log_every == 0 or done == tr.steps:
            loss_avg = _mean(loss_sum / max(1, n_loss), world)
            dt = max(1e-9, time.time() - t_last)
            sps = (done - step_last) * tr.batch_size / dt
            lr = engine.get_lr()[0] if hasattr(engine, "get_lr") else tr.lr
            if rank == 0:
                log.step(done, loss_avg, sps, lr)
            last_metrics = {"step": done, "loss": loss_avg, "samples_per_s": sps}
            loss_sum, n_loss, t_last, step_last = 0.0, 0, time.time(), done
        if tr.snapshot_every and done % tr.snapshot_every == 0 and done < tr.steps:
            _save_snapshot(engine, ema, task, island, done, rank)  # before the checkpoint: a
            # resume from an older checkpoint rewrites it identically, and none is ever skipped
        if done % tr.checkpoint_every == 0 and done < tr.steps:
            _save_checkpoint(engine, ema, island, scratch, done, rank, world, tr.zero_stage)
            if rank == 0:
                log.checkpoint(done)
            raytrain.report(last_metrics)  # a barrier: kept to checkpoint steps, progress goes to the store

    from atoll.islands.plan import Unit, training_fingerprint

    fingerprint = training_fingerprint(job, Unit(cfg["role"], cfg.get("expert"), cfg["prefix"]))
    _finish(engine, ema, task, island, run, rank, world, log, dtype, device, fingerprint)


def _save_checkpoint(engine, ema, island: Store, scratch, step: int, rank: int, world: int, stage: int) -> None:
    dse.save(engine, scratch, ckpt.tag(step), {"step": step, "ema": ema.state_dict()})
    ckpt.upload_rank_files(island, scratch, step, lambda name: dse.owned_by_rank(name, rank))
    if world > 1:
        dist.barrier()
    if rank == 0:
        ckpt.commit(island, step, {"world_size": world, "zero_stage": stage})
    if world > 1:
        dist.barrier()


def _full_model(engine, task: Task, rank: int):
    """The trained weights as a full model on rank 0 (None on other ranks). Every rank must call it:
    gathering the weights is collective under ZeRO-3."""
    weights = dse.full_state_dict(engine, task.training.zero_stage)
    if rank != 0:
        return None
    model = task.build_model()
    model.load_state_dict(weights)
    return model


def _save_model(model, ema, task: Task, island: Store, prefix: str, step: int, extra: dict | None = None) -> None:
    """``save_pretrained`` of ``model`` (with its EMA weights as the main ones when the task keeps an EMA)."""
    from atoll.models.checkpoint import save_pretrained

    save_pretrained(model, island, prefix, ema=ema if task.training.ema_decay > 0 else None,
                    extra={"role": task.kind, "name": task.name, "steps": step, **(extra or {})})


def _save_snapshot(engine, ema, task: Task, island: Store, step: int, rank: int) -> None:
    """The EMA weights at ``step`` as a loadable model under ``snapshots/step-N`` (rank 0 writes)."""
    model = _full_model(engine, task, rank)
    if model is not None:
        _save_model(model, ema, task, island, f"snapshots/{ckpt.tag(step)}", step)


def _finish(engine, ema, task: Task, island: Store, run: Store, rank: int, world: int, log: IslandLog,
            dtype, device, fingerprint: str) -> None:
    model = _full_model(engine, task, rank)
    if rank == 0:
        extra = {}
        if task.kind == "router":
            from atoll.train.tasks import router_accuracy

            ema_model = task.build_model()
            ema.copy_to(ema_model) if task.training.ema_decay > 0 else ema_model.load_state_dict(model.state_dict())
            acc = router_accuracy(ema_model.eval(), task)
            log.extra["accuracy_vs_t"] = extra["accuracy_vs_t"] = acc
            if getattr(task, "classes", None) is not None:
                blind = router_accuracy(ema_model.eval(), task, with_class=False)
                log.extra["accuracy_vs_t_no_class"] = extra["accuracy_vs_t_no_class"] = blind
        _save_model(model, ema, task, island, "model", task.training.steps, extra)
        log.extra["fingerprint"] = fingerprint
        log.finish(model_config=task.model_config())
    if world > 1:
        dist.barrier()
    raytrain.report({"step": task.training.steps, "done": 1})
