"""Rectified flow: interpolation, loss, time sampling, label dropout."""
from __future__ import annotations

import pytest
import torch

from atoll.models.flow import drop_labels, drop_text, flow_loss, interpolate, sample_t


def test_oracle_model_has_zero_loss():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 1, 28, 28, generator=g)
    noise = torch.randn(8, 1, 28, 28, generator=g)

    def oracle(x_t, t):  # the exact velocity for this (x0, noise) pair
        return noise - x0

    assert flow_loss(oracle, x0, noise=noise, generator=g).item() < 1e-12
    # a wrong model does not
    assert flow_loss(lambda x_t, t: torch.zeros_like(x_t), x0, noise=noise, generator=g).item() > 0.5


def test_oracle_recovers_velocity_from_x_t():
    """v can be read back from x_t when x0 is known: v = (x_t - x0) / t."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 8, 8, generator=g)

    def oracle(x_t, t, y=None):
        assert y is not None  # conditioning is passed through
        return (x_t - x0) / t.view(-1, 1, 1, 1)

    loss = flow_loss(oracle, x0, y=torch.zeros(4, dtype=torch.long), generator=g)
    assert loss.item() < 1e-9


def test_interpolate_endpoints():
    x0, n = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(interpolate(x0, n, torch.zeros(2)), x0)
    torch.testing.assert_close(interpolate(x0, n, torch.ones(2)), n)
    torch.testing.assert_close(interpolate(x0, n, torch.tensor([0.25, 0.25])), 0.75 * x0 + 0.25 * n)


def test_sample_t_ranges_and_determinism():
    for kind in ("logit-normal", "uniform"):
        a = sample_t(4096, kind, generator=torch.Generator().manual_seed(3))
        b = sample_t(4096, kind, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b) and a.shape == (4096,)
        assert a.min() > 0 and a.max() < 1
        assert abs(a.mean().item() - 0.5) < 0.02
    ln = sample_t(4096, "logit-normal", generator=torch.Generator().manual_seed(0))
    un = sample_t(4096, "uniform", generator=torch.Generator().manual_seed(0))
    assert ln.std() < un.std()  # logit-normal concentrates mid-path
    with pytest.raises(ValueError, match="uniform"):
        sample_t(4, "cosine")


def test_dropout_helpers():
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(10000, dtype=torch.long)
    dropped = drop_labels(y, 0.1, null_class=10, generator=g)
    frac = (dropped == 10).float().mean().item()
    assert 0.08 < frac < 0.12 and set(dropped.unique().tolist()) == {0, 10}
    m = drop_text(torch.ones(1000, 4, dtype=torch.bool), 0.5, generator=g)
    rows = m.all(1) | (~m).all(1)
    assert rows.all() and 0.4 < (~m[:, 0]).float().mean() < 0.6
    with pytest.raises(ValueError):
        drop_labels(y, 1.0, 10)
