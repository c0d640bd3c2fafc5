"""Samplers: timesteps, determinism, exactness on straight paths, Heun vs Euler."""
from __future__ import annotations

import pytest
import torch

from atoll.models.samplers import EulerSampler, HeunSampler, sample


def test_timesteps_convention():
    s = EulerSampler()
    ts = s.set_timesteps(4)
    torch.testing.assert_close(ts, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = EulerSampler(shift=3.0).set_timesteps(4)
    assert shifted[0] == 1 and shifted[-1] == 0 and torch.all(shifted[1:] < shifted[:-1])
    assert torch.all(shifted[1:-1] > ts[1:-1])  # shift > 1 spends more steps near noise
    with pytest.raises(ValueError):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="step index"):
        s.step(torch.zeros(1), 4, torch.zeros(1))


def _point_mass_velocity(c: torch.Tensor):
    """Exact v for data = the single point c: x_t = (1-t) c + t eps  =>  v = (x_t - c) / t."""
    return lambda x, t: (x - c) / t.view(-1, 1, 1, 1)


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_euler_recovers_a_point_mass_exactly(steps):
    c = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(5)).expand(4, -1, -1, -1)
    out = sample(_point_mass_velocity(c), (4, 1, 6, 6), steps=steps, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, c, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_constant_velocity_is_integrated_exactly(name):
    """v = a everywhere: x_0 = x_1 - a (Heun also evaluates v at t=0, where the point-mass field is 0/0)."""
    a = torch.linspace(-1, 1, 36).view(1, 1, 6, 6)
    noise = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    out = sample(lambda x, t: a.expand_as(x), (2, 1, 6, 6), steps=7, sampler=name, noise=noise)
    torch.testing.assert_close(out, noise - a, rtol=0, atol=1e-5)


def test_deterministic_for_a_seed():
    fn = lambda x, t: torch.sin(x) * t.view(-1, 1, 1, 1)  # noqa: E731
    a = sample(fn, (2, 1, 4, 4), steps=5, generator=torch.Generator().manual_seed(7))
    b = sample(fn, (2, 1, 4, 4), steps=5, generator=torch.Generator().manual_seed(7))
    c = sample(fn, (2, 1, 4, 4), steps=5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_heun_beats_euler_on_a_curved_ode():
    """Data ~ N(0, s^2): v(x, t) = x (t - (1-t) s^2) / sigma(t)^2 with sigma(t)^2 = (1-t)^2 s^2 + t^2;
    the exact flow maps x_1 to x_1 * s."""
    s = 0.3
    s2 = s ** 2

    def v(x, t):
        t = t.view(-1, 1).double()
        return x * (t - (1 - t) * s2) / ((1 - t) ** 2 * s2 + t ** 2)

    x1 = torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = x1 * s
    errs = {}
    for name, cls, steps in (("euler", EulerSampler, 8), ("heun", HeunSampler, 8), ("heun4", HeunSampler, 4)):
        smp = cls()
        smp.set_timesteps(steps)
        errs[name] = (smp.sample(v, x1) - exact).abs().max().item()
    assert errs["heun"] < errs["euler"] / 5, errs
    assert errs["heun4"] < errs["euler"] / 2, errs  # also better at the same number of model evaluations
    # and Euler converges as the steps grow
    e = EulerSampler()
    e.set_timesteps(256)
    assert (e.sample(v, x1) - exact).abs().max().item() < errs["euler"] / 10


def test_heun_step_needs_model_fn_and_bad_sampler_name():
    h = HeunSampler()
    h.set_timesteps(2)
    with pytest.raises(ValueError, match="model_fn"):
        h.step(torch.zeros(1, 1), 0, torch.zeros(1, 1))
    with pytest.raises(ValueError, match="euler"):
        sample(lambda x, t: x, (1, 1), steps=2, sampler="dpm")
