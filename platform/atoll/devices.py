"""Which device a process computes on: one explicit decision per process, then placement checks.

Every process that runs a model decides its device once, through one of these functions, and
passes the resulting ``Placement`` down; nothing else in Atoll picks a device or creates a
tensor on an implicit one:

* ``for_training(use_gpu, local_rank)``  a Ray Train / torchrun worker of an island;
* ``for_replica(num_gpus)``              a Ray Serve replica (or rank actor) given ``num_gpus``;
* ``for_stage(requested)``               a driver-side stage (samples, encode, bench): ``auto`` =
                                         the first GPU when there is one, else the CPU.

A placement says *why* it chose what it chose (``reason``), so logs and errors can tell the
user. ``check_placed`` walks a module's parameters and buffers and raises when one is
elsewhere, which is what the tests (and the GPU check) assert on.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


class DeviceError(RuntimeError):
    """A device was asked for that this process does not have (message names the setting and the fix)."""


@dataclass(frozen=True)
class Placement:
    """The device of one process and why it was chosen."""

    device: torch.device
    reason: str

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def backend(self) -> str:
        """The torch.distributed backend that matches the device: NCCL on GPUs, gloo on CPUs."""
        return "nccl" if self.is_cuda else "gloo"

    def activate(self) -> "Placement":
        """Makes this the process's current CUDA device (a no-op on CPU); returns self."""
        if self.is_cuda:
            torch.cuda.set_device(self.device)
        return self

    def __str__(self) -> str:
        return f"{self.device} ({self.reason})"


def cuda_count() -> int:
    """CUDA devices visible to this process (0 without a CUDA build or driver)."""
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a CUDA build on a machine without a driver
        return 0


def for_training(use_gpu: bool, local_rank: int = 0) -> Placement:
    """The device of training worker ``local_rank`` of an island (``experts.scaling.useGpu``).

    With ``use_gpu`` the worker takes GPU ``local_rank`` of the ones it can see (Ray Train sets
    ``CUDA_VISIBLE_DEVICES`` so that each worker sees its own; torchrun shows all of them).
    """
    if not use_gpu:
        return Placement(torch.device("cpu"), "scaling.useGpu is false")
    n = cuda_count()
    if n == 0:
        raise DeviceError("scaling.useGpu is true but this training worker sees no CUDA device "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch "
                          f"{torch.__version__}); install a CUDA build of torch on the island, or set "
                          "scaling.useGpu: false")
    index = local_rank if local_rank < n else 0  # Ray Train: one visible GPU per worker
    return Placement(torch.device("cuda", index), f"scaling.useGpu, local rank {local_rank}, {n} visible")


def for_replica(num_gpus: float) -> Placement:
    """The device of a Serve replica (or rank actor) that Ray gave ``num_gpus`` GPUs."""
    if not num_gpus or num_gpus <= 0:
        return Placement(torch.device("cpu"), "numGpus is 0")
    if cuda_count() == 0:
        raise DeviceError(f"the replica was given numGpus={num_gpus} but sees no CUDA device "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); install a "
                          "CUDA build of torch there, or set serve.*.numGpus: 0")
    return Placement(torch.device("cuda", 0), f"numGpus={num_gpus} (Ray assigns the replica's GPU as cuda:0)")


def for_stage(requested: str | torch.device | None = "auto") -> Placement:
    """A driver-side stage's device: ``auto`` (GPU 0 if any, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    req = "auto" if requested is None else str(requested)
    if req == "auto":
        if cuda_count() > 0:
            return Placement(torch.device("cuda", 0), "auto: a CUDA device is visible")
        return Placement(torch.device("cpu"), "auto: no CUDA device is visible")
    try:
        dev = torch.device(req)
    except (RuntimeError, ValueError) as e:
        raise DeviceError(f"device {req!r} is not a device ({e}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = cuda_count()
        index = 0 if dev.index is None else dev.index
        if index >= n:
            raise DeviceError(f"device {req!r} was asked for but this machine has {n} CUDA device(s); use "
                              f"{'cuda:0 .. cuda:' + str(n - 1) if n else 'cpu'} or auto")
        dev = torch.device("cuda", index)
    elif dev.type != "cpu":
        raise DeviceError(f"device {req!r}: Atoll runs on cpu or cuda devices; use auto, cpu or cuda:N")
    return Placement(dev, "asked for")


def same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are the same device when 0 is the current one."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    cur = torch.cuda.current_device() if cuda_count() else 0
    return (a.index if a.index is not None else cur) == (b.index if b.index is not None else cur)


def misplaced(module: nn.Module, device: torch.device) -> list[str]:
    """Names of ``module``'s parameters and buffers that are not on ``device``."""
    items: Iterable = list(module.named_parameters()) + list(module.named_buffers())
    return [f"{n} ({t.device})" for n, t in items if not same_device(t.device, device)]


def check_placed(module: nn.Module, device: torch.device, what: str = "model") -> None:
    """Raises ``DeviceError`` when some parameter or buffer of ``module`` is not on ``device``."""
    bad = misplaced(module, device)
    if bad:
        raise DeviceError(f"{what}: {len(bad)} tensors are not on {device}: {', '.join(bad[:4])}"
                          f"{' ...' if len(bad) > 4 else ''}")


def place(module: nn.Module, placement: Placement | torch.device, what: str = "model") -> nn.Module:
    """Moves ``module`` to the placement's device and checks every parameter and buffer landed there."""
    device = placement.device if isinstance(placement, Placement) else torch.device(placement)
    module = module.to(device)
    check_placed(module, device, what)
    return module
