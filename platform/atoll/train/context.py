"""Where an island's training loop runs: its rank, world size, local rank and how it reports.

Two ways in, one loop (``loop.train_island(cfg, ctx)``):

* ``raytrain.context()``: a Ray Train worker (the product's path: Ray Train made the process
  group; ``report`` is ``ray.train.report``, a barrier across the island's workers);
* ``plain_context()``: a plain process, alone or started by ``torchrun`` (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); it makes the process group
  itself with the backend that matches the device (NCCL on GPUs, gloo on CPUs). No Ray is
  imported, so this path runs where Ray is not installed (``bench/gpu_check.py``) and in tests.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta


@dataclass
class WorkerContext:
    rank: int
    world: int
    local_rank: int
    report: Callable[[dict], None] = field(default=lambda metrics: None)
    kind: str = "plain"


def plain_context(backend: str | None = None, timeout_s: float = 600.0) -> WorkerContext:
    """The context of a plain (non-Ray) worker; initialises torch.distributed if nobody has.

    ``backend``: ``nccl`` or ``gloo``; default: NCCL when CUDA is available, else gloo. A lone
    process (no ``RANK``/``WORLD_SIZE``) becomes world size 1 on 127.0.0.1 and a free port: DeepSpeed
    needs a process group even then.
    """
    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if not dist.is_initialized():
        if "MASTER_PORT" not in os.environ:
            if world > 1:
                raise RuntimeError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT (start the workers with "
                                   "torchrun, or set them)")
            from atoll.parallel.groups import free_port

            os.environ["MASTER_ADDR"] = "127.0.0.1"
            os.environ["MASTER_PORT"] = str(free_port())
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local % max(1, torch.cuda.device_count()))
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return WorkerContext(rank=rank, world=world, local_rank=local, kind="plain")
