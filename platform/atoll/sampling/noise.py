"""Per-sample starting noise that depends only on (seed, sample index).

Sample ``i`` of a request always starts from the same noise, whatever the batch
it is generated in, so batching never changes a sample.
"""
from __future__ import annotations

import numpy as np
import torch


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed mixed from ``(seed, index)`` (numpy SeedSequence: no collisions in practice)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(index)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def initial_noise(shape: tuple[int, ...], seed: int, indices: range | list[int],
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``N(0, I)`` noise ``[len(indices), *shape]`` on the CPU, row ``j`` from ``(seed, indices[j])``."""
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(sample_seed(seed, i)), dtype=dtype)
            for i in indices]
    return torch.stack(rows) if rows else torch.empty((0, *shape), dtype=dtype)
