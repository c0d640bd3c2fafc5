"""The device decision of each kind of process, and the placement checks (CUDA mocked only where
the *decision* is tested; nothing is moved to a mocked device)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from atoll import devices
from atoll.devices import DeviceError


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretends this machine has ``n`` CUDA devices (for the placement decision only)."""
    def make(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return make


def test_cpu_machine_decisions():
    assert devices.for_training(False).device == torch.device("cpu")
    assert devices.for_replica(0).device == torch.device("cpu")
    stage = devices.for_stage("auto")
    assert stage.device == torch.device("cpu") and "no CUDA" in stage.reason
    assert devices.for_stage("cpu").backend == "gloo"
    with pytest.raises(DeviceError, match="scaling.useGpu is true .* no CUDA device"):
        devices.for_training(True)
    with pytest.raises(DeviceError, match="numGpus=1"):
        devices.for_replica(1)
    with pytest.raises(DeviceError, match="has 0 CUDA device"):
        devices.for_stage("cuda")
    with pytest.raises(DeviceError, match="not a device"):
        devices.for_stage("gpu-please")
    with pytest.raises(DeviceError, match="cpu or cuda"):
        devices.for_stage("meta")


def test_gpu_machine_decisions(fake_gpus):
    fake_gpus(4)
    p = devices.for_training(True, local_rank=2)
    assert p.device == torch.device("cuda", 2) and p.backend == "nccl" and p.is_cuda
    # Ray Train shows each worker its own GPU only: local rank 3 of 1 visible -> cuda:0
    fake_gpus(1)
    assert devices.for_training(True, local_rank=3).device == torch.device("cuda", 0)
    assert devices.for_training(False, local_rank=3).device == torch.device("cpu")
    assert devices.for_replica(0.5).device == torch.device("cuda", 0)
    assert devices.for_replica(0).device == torch.device("cpu")
    assert devices.for_stage("auto").device == torch.device("cuda", 0)
    assert devices.for_stage("cuda").device == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="cuda:0 .. cuda:0"):
        devices.for_stage("cuda:1")


class _WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("scale", torch.ones(2))


def test_check_placed_walks_parameters_and_buffers():
    m = _WithBuffer()
    devices.check_placed(m, torch.device("cpu"))
    m.scale = torch.ones(2, device="meta")  # one buffer elsewhere
    assert devices.misplaced(m, torch.device("cpu")) == ["scale (meta)"]
    with pytest.raises(DeviceError, match="1 tensors are not on cpu: scale"):
        devices.check_placed(m, torch.device("cpu"), "expert")
    m.lin.weight = nn.Parameter(torch.ones(2, 2, device="meta"))
    assert len(devices.misplaced(m, torch.device("cpu"))) == 2
    moved = devices.place(_WithBuffer(), devices.for_stage("cpu"))
    assert devices.misplaced(moved, torch.device("cpu")) == []


def test_ensemble_and_models_land_on_the_stage_device(tmp_path):
    """Everything the samples stage runs is on the device it chose (CPU here): experts, router, noise."""
    from atoll.models.dit import DiTConfig
    from atoll.models.router import RouterConfig
    from atoll.sampling.ensemble import Ensemble

    experts = [DiTConfig(size="DiT-XXS/2", input_size=8, in_channels=1, num_classes=10).build() for _ in range(2)]
    router = RouterConfig(size="Router-XS", input_size=8, in_channels=1, num_experts=2, num_classes=10).build()
    place = devices.for_stage("auto")
    ens = Ensemble(experts, router, device=place.device)
    for i, e in enumerate(ens.experts):
        devices.check_placed(e, place.device, f"expert {i}")
    devices.check_placed(ens.router, place.device, "router")
    out = ens.sample(2, steps=2, class_labels=[1, 2], output="float")
    assert out.images.device == torch.device("cpu") and out.images.shape == (2, 1, 8, 8)
