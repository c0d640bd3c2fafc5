"""The routing trace: which expert(s) each sample used at each model evaluation, with what weight.

A ``Trace`` holds, for ``S`` model evaluations (``steps`` for Euler, ``2 * steps``
for Heun) and ``N`` samples with ``k`` experts chosen per sample:

* ``t [S]``              the time of each evaluation (1 -> 0);
* ``probs [S, N, K]``    the router's probabilities;
* ``indices [S, N, k]``  the experts used (long);
* ``weights [S, N, k]``  their weights (sum to 1 per row, except ``full``: ``r_k``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TraceStep:
    """One evaluation of a batch: ``t [B]``, ``probs [B, K]``, ``indices/weights [B, k]``."""

    t: torch.Tensor
    probs: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor


@dataclass
class Trace:
    t: torch.Tensor
    probs: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def from_steps(cls, steps: list[TraceStep]) -> "Trace":
        """Stacks the steps of one batch: ``S`` steps of ``[B, ...]`` -> ``[S, B, ...]``."""
        return cls(t=torch.stack([s.t[0] for s in steps]).float().cpu(),
                   probs=torch.stack([s.probs for s in steps]).float().cpu(),
                   indices=torch.stack([s.indices for s in steps]).cpu(),
                   weights=torch.stack([s.weights for s in steps]).float().cpu())

    @classmethod
    def cat(cls, traces: list["Trace"]) -> "Trace":
        """Joins batches along the sample axis (they share ``t``)."""
        return cls(t=traces[0].t, probs=torch.cat([x.probs for x in traces], 1),
                   indices=torch.cat([x.indices for x in traces], 1),
                   weights=torch.cat([x.weights for x in traces], 1))

    def subset(self, samples: list[int]) -> "Trace":
        """The trace of the given samples only (in that order)."""
        i = torch.as_tensor(samples, dtype=torch.long)
        return Trace(t=self.t, probs=self.probs[:, i], indices=self.indices[:, i], weights=self.weights[:, i])

    @property
    def num_experts(self) -> int:
        return self.probs.shape[-1]

    def expert_weights(self) -> torch.Tensor:
        """Dense weights ``[S, N, K]``: 0 for experts a sample did not use at a step."""
        dense = torch.zeros(self.probs.shape, dtype=torch.float32)
        return dense.scatter_add_(2, self.indices, self.weights)

    def usage(self) -> list[float]:
        """Share of all (sample, evaluation) weight that went to each expert, ``[K]``, sums to 1."""
        w = self.expert_weights().sum(dim=(0, 1))
        return (w / w.sum().clamp_min(1e-12)).tolist()

    def evaluations_per_sample(self) -> float:
        """Mean number of expert forwards per sample per evaluation (top1: 1, full: K)."""
        return float(self.indices.shape[-1])

    def to_dict(self, samples: int | None = None) -> dict:
        """JSON-ready: t, and per sample (the first ``samples``) its experts and weights per evaluation."""
        n = self.indices.shape[1] if samples is None else min(samples, self.indices.shape[1])
        return {"t": [round(float(x), 6) for x in self.t], "usage": self.usage(),
                "indices": self.indices[:, :n].transpose(0, 1).tolist(),
                "weights": self.weights[:, :n].transpose(0, 1).round(decimals=4).tolist()}
