"""ODE samplers for rectified flow, with a diffusers-like scheduler interface.

They integrate ``dx/dt = v(x, t)`` from ``t = 1`` (noise) to ``t = 0`` (data).

Convention: ``set_timesteps(n)`` sets ``.timesteps``, a decreasing float32
tensor of length ``n + 1`` from 1 to 0; step ``i`` (``0 <= i < n``) moves
``x`` from ``timesteps[i]`` to ``timesteps[i + 1]``.

``step(v, i, x, model_fn=None) -> x_next`` where ``v = model_fn(x, t_i)``:
* Euler uses ``v`` only (one model evaluation per step);
* Heun (2nd order, trapezoidal) also evaluates ``model_fn`` once more at the
  Euler prediction and ``t_{i+1}``, so it needs ``model_fn`` (two per step).
``Sampler.sample(model_fn, x)`` runs the whole loop for either.

``model_fn(x_t [B, ...], t [B]) -> v [B, ...]``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class EulerSampler:
    """First-order Euler steps; exact when trajectories are straight."""

    order = 1

    def __init__(self, shift: float = 1.0):
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        self.shift = shift
        self.timesteps = torch.empty(0)

    def set_timesteps(self, num_steps: int) -> torch.Tensor:
        """Sets ``.timesteps`` (``[num_steps + 1]``, 1 -> 0). ``shift > 1`` spends more steps near noise (SD3)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        t = self.shift * t / (1 + (self.shift - 1) * t)
        self.timesteps = t.float()
        return self.timesteps

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) - 1

    def _dt(self, i: int) -> float:
        if not 0 <= i < self.num_steps:
            raise ValueError(f"step index {i} is outside [0, {self.num_steps}); call set_timesteps first")
        return float(self.timesteps[i + 1] - self.timesteps[i])

    def step(self, v: torch.Tensor, i: int, x: torch.Tensor, model_fn: ModelFn | None = None) -> torch.Tensor:
        """``x_{i+1} = x_i + (t_{i+1} - t_i) * v``."""
        return x + self._dt(i) * v

    def t_batch(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """``timesteps[i]`` as a ``[B]`` tensor on ``x``'s device."""
        return torch.full((x.shape[0],), float(self.timesteps[i]), device=x.device, dtype=torch.float32)

    @torch.no_grad()
    def sample(self, model_fn: ModelFn, x: torch.Tensor) -> torch.Tensor:
        """Integrates from ``x`` at ``timesteps[0]`` to ``timesteps[-1]``."""
        if self.num_steps < 1:
            raise ValueError("call set_timesteps(num_steps) before sample()")
        for i in range(self.num_steps):
            x = self.step(model_fn(x, self.t_batch(i, x)), i, x, model_fn)
        return x


class HeunSampler(EulerSampler):
    """Heun's method: Euler predictor, trapezoidal corrector (two model evaluations per step)."""

    order = 2

    def step(self, v: torch.Tensor, i: int, x: torch.Tensor, model_fn: ModelFn | None = None) -> torch.Tensor:
        """``x' = x + dt v``; ``x_{i+1} = x + dt (v + model_fn(x', t_{i+1})) / 2``."""
        if model_fn is None:
            raise ValueError("HeunSampler.step needs model_fn for its second evaluation; pass model_fn=...")
        dt = self._dt(i)
        x_pred = x + dt * v
        v_next = model_fn(x_pred, self.t_batch(i + 1, x))
        return x + dt * 0.5 * (v + v_next)


SAMPLERS = {"euler": EulerSampler, "heun": HeunSampler}


def make_sampler(name: str, shift: float = 1.0) -> EulerSampler:
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is unknown; use one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](shift=shift)


@torch.no_grad()
def sample(model_fn: ModelFn, shape: tuple[int, ...], *, steps: int, sampler: str = "euler",
           generator: torch.Generator | None = None, device: torch.device | str | None = None,
           dtype: torch.dtype = torch.float32, noise: torch.Tensor | None = None, shift: float = 1.0) -> torch.Tensor:
    """Draws ``noise ~ N(0, I)`` of ``shape`` (from ``generator``) and integrates it to ``t = 0``.

    Deterministic for a fixed generator seed. Returns ``[B, ...]`` in ``dtype``.
    """
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    elif tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise has shape {list(noise.shape)}, expected {list(shape)}")
    s = make_sampler(sampler, shift)
    s.set_timesteps(steps)
    return s.sample(model_fn, noise)
