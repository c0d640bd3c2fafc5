"""EMA maths."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from atoll.models.ema import EMA


def _set(model: nn.Module, value: float):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_ema_moving_average():
    m = nn.Linear(3, 2)
    _set(m, 1.0)
    ema = EMA(m, decay=0.9)
    _set(m, 2.0)
    ema.update(m)  # 0.9 * 1 + 0.1 * 2
    torch.testing.assert_close(ema.state_dict()["weight"], torch.full((2, 3), 1.1))
    _set(m, 0.0)
    ema.update(m)  # 0.9 * 1.1
    torch.testing.assert_close(ema.state_dict()["bias"], torch.full((2,), 0.99))
    assert ema.num_updates == 2
    ema.copy_to(m)
    torch.testing.assert_close(m.weight, torch.full((2, 3), 0.99))


def test_decay_zero_is_latest_weights_and_shadow_is_a_copy():
    m = nn.Linear(3, 2)
    ema = EMA(m, decay=0.0)
    with torch.no_grad():
        m.weight.mul_(3).add_(0.123)
    assert not torch.equal(ema.state_dict()["weight"], m.weight)  # not aliased
    ema.update(m)
    assert torch.equal(ema.state_dict()["weight"], m.weight)


def test_state_dict_round_trip_and_errors():
    m = nn.Linear(3, 2)
    ema = EMA(m, 0.5)
    _set(m, 4.0)
    ema.update(m)
    other = EMA(nn.Linear(3, 2), 0.5)
    other.load_state_dict(ema.state_dict())
    assert all(torch.equal(other.state_dict()[k], v) for k, v in ema.state_dict().items())
    with pytest.raises(ValueError, match="decay"):
        EMA(m, 1.0)
    with pytest.raises(ValueError, match="keys"):
        other.load_state_dict({"weight": torch.zeros(2, 3)})


def test_shadow_is_fp32_on_its_own_device_and_updates_copy_explicitly():
    m = nn.Linear(3, 2).to(torch.bfloat16)
    ema = EMA(m, 0.5, device="cpu")
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in ema.shadow.values())
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)
    assert torch.allclose(ema.shadow["weight"], before["weight"] + 0.5, atol=1e-2)
    assert ema.shadow["weight"].dtype == torch.float32
