"""Process-group helpers. Nothing is kept in module globals: callers hold the groups they make.

CPU: gloo on 127.0.0.1 (``init_process_group(rank, world_size, port)``); GPU: NCCL
(``backend="nccl"``). DeepSpeed's sequence layer talks through ``deepspeed.comm``,
which ``init_process_group`` points at the torch.distributed default group.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from atoll.parallel.dims import ParallelDims


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(rank: int, world_size: int, port: int, backend: str = "gloo",
                       timeout_s: float = 120.0) -> None:
    """Joins the default group at ``tcp://127.0.0.1:port`` and wires ``deepspeed.comm`` to it."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if backend == "gloo" else "cuda")
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"] = str(rank), str(world_size), str(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    ensure_deepspeed_comm(backend)


def ensure_deepspeed_comm(backend: str = "gloo") -> None:
    """``deepspeed.comm`` over the already-initialised torch.distributed default group."""
    import deepspeed.comm as ds_comm

    if not ds_comm.is_initialized():
        ds_comm.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def sequence_group(dims: ParallelDims, rank: int):
    """This rank's sequence-parallel group. Every rank must call it (``new_group`` is collective)."""
    return sequence_groups(dims, rank).sp


@dataclass(frozen=True)
class SequenceGroups:
    """This rank's process groups of a sequence-parallel layout (``ParallelDims``).

    ``sp``: its sequence group (``dims.sp`` ranks sharing one clip); ``ulysses``: the all-to-all group
    inside it (None when the Ulysses degree is 1); ``ring``: the ring group (None when the ring degree
    is 1). ``world``: the default group, over which data-parallel gradients are reduced.
    """
    dims: ParallelDims
    rank: int
    sp: object
    ulysses: object | None
    ring: object | None

    @property
    def sp_rank(self) -> int:
        return self.dims.sp_rank(self.rank)

    @property
    def dp_rank(self) -> int:
        return self.dims.dp_rank(self.rank)


def sequence_groups(dims: ParallelDims, rank: int) -> SequenceGroups:
    """Makes every group of the layout (collective: every rank of the world calls it, same order) and
    returns this rank's. With world == sp the sequence group is the default group itself."""
    if dist.get_world_size() != dims.world_size:
        raise ValueError(f"ParallelDims says world size {dims.world_size} but torch.distributed has "
                         f"{dist.get_world_size()} ranks")

    def mine(layout: list[list[int]]):
        if len(layout) == 1 and len(layout[0]) == dims.world_size:
            return dist.group.WORLD
        out = None
        for ranks in layout:
            g = dist.new_group(ranks)
            if rank in ranks:
                out = g
        return out

    sp = mine(dims.sp_group_ranks())
    ulysses = None if dims.ulysses == 1 else (sp if dims.ring == 1 else mine(dims.ulysses_group_ranks()))
    ring = None if dims.ring == 1 else (sp if dims.ulysses == 1 else mine(dims.ring_group_ranks()))
    return SequenceGroups(dims, rank, sp, ulysses, ring)


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
