"""One tick's rows side by side (pure torch): every in-flight request's rows, and the expert batches cut
from them.

``lay_out(jobs, device, num_classes)`` concatenates the requests' ``x``, per-row ``t`` (each at its own
step), labels (the null class for unconditional rows when others have a class), text (the null text,
an all-False mask, for prompt-less rows when others have a prompt) and the guidance, decided in Python
from the requests so that a tick of one request hands the expert exactly the library's arguments:
no CFG row -> ``guidance=None``; every row CFG -> one float (or a per-row tensor when the requests'
scales differ); CFG and plain rows mixed -> a per-row tensor plus the ``cfg`` row mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from atoll.serve.expert_batch import ExpertBatch


@dataclass
class Layout:
    x: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor | None
    text: tuple[torch.Tensor, torch.Tensor] | None
    guidance: float | torch.Tensor | None
    cfg: torch.Tensor | None
    spans: list[tuple[int, int]]      # rows [lo, hi) of each request, in order

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    def batch(self, rows: torch.Tensor) -> ExpertBatch:
        """The rows ``rows`` (ascending) as one expert's batch."""
        g = self.guidance[rows] if isinstance(self.guidance, torch.Tensor) else self.guidance
        return ExpertBatch(self.x[rows], self.t[rows], None if self.y is None else self.y[rows],
                           None if self.text is None else (self.text[0][rows], self.text[1][rows]), g,
                           None if self.cfg is None else self.cfg[rows])


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _text(jobs, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    texts = [j.text for j in jobs if j.text is not None]
    if not texts:
        return None
    L, D = max(s.shape[1] for s, _ in texts), texts[0][0].shape[2]
    states, masks = [], []
    for j in jobs:
        s, m = j.text if j.text is not None else (torch.zeros(j.n, L, D, device=device),
                                                  torch.zeros(j.n, L, dtype=torch.bool, device=device))
        pad = L - s.shape[1]
        states.append(F.pad(s, (0, 0, 0, pad)) if pad else s)
        masks.append(F.pad(m, (0, pad)) if pad else m)
    return _cat(states), _cat(masks)


def lay_out(jobs, device: torch.device, num_classes: int) -> Layout:
    """``jobs``: objects with ``n, x, y, text, cfg, sampler, i`` and ``work.guidance`` (the scheduler's jobs)."""
    x = _cat([j.x for j in jobs])
    t = _cat([j.sampler.t_batch(j.i, j.x) for j in jobs])
    y = None
    if any(j.y is not None for j in jobs):
        y = _cat([j.y if j.y is not None else torch.full((j.n,), num_classes, dtype=torch.long, device=device)
                  for j in jobs])
    flags = [j.cfg for j in jobs]
    scales = {float(j.work.guidance) for j in jobs if j.cfg}
    guidance, cfg = None, None
    if any(flags):
        per_row = not all(flags) or len(scales) > 1
        guidance = _cat([torch.full((j.n,), float(j.work.guidance), device=device) for j in jobs]) if per_row \
            else scales.pop()
        if not all(flags):
            cfg = _cat([torch.full((j.n,), f, dtype=torch.bool, device=device) for j, f in zip(jobs, flags)])
    spans, lo = [], 0
    for j in jobs:
        spans.append((lo, lo + j.n))
        lo += j.n
    return Layout(x, t, y, _text(jobs, device), guidance, cfg, spans)
