"""The rows one expert evaluates in one scheduler tick, and its velocity on them (pure torch, no Ray).

An ``ExpertBatch`` holds the rows of every in-flight request that chose the expert at this tick,
whatever their step: ``x [B, ...]``, a per-row ``t [B]``, class labels ``y [B]`` (the null class
for unconditional rows of a mixed batch) or text ``(states [B, L, D], mask [B, L])``, and the
classifier-free guidance: ``guidance=None`` (no row takes it), a float or a per-row ``[B]`` tensor
with ``cfg=None`` (every row takes it), or a per-row tensor with the ``cfg [B]`` row mask (mixed).

``batch_velocity(model, batch, num_classes)`` runs the expert ONCE on all of them:

* no CFG row, or every row CFG: exactly ``atoll.sampling.ensemble.expert_forward`` (the library's
  call with the library's arguments, so one request alone computes what ``Ensemble.sample``
  computes, bit for bit);
* CFG rows mixed with plain rows: one pass over ``[cfg rows; plain rows; cfg rows with the null
  condition]`` and ``v_u + g (v_c - v_u)`` on the CFG rows (per-row ``g``).

Batches travel between processes in distributed mode: ``compact()`` keeps them small (labels as
int16/int32, guidance only where it is used) and ``to(device)`` moves them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from atoll.sampling.ensemble import expert_forward


@dataclass
class ExpertBatch:
    x: torch.Tensor                                     # [B, C, H, W] (video: [B, C, T, H, W])
    t: torch.Tensor                                     # [B] float32
    y: torch.Tensor | None = None                       # [B] class labels (null = num_classes) or None
    text: tuple[torch.Tensor, torch.Tensor] | None = None  # (states [B, L, D], mask [B, L] bool)
    guidance: float | torch.Tensor | None = None        # None: no CFG; float / [B]: the scale (CFG rows)
    cfg: torch.Tensor | None = None                     # [B] bool when CFG and plain rows are mixed

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def forward_rows(self) -> int:
        """Rows the expert's forward pass really evaluates (a CFG row counts twice: cond + null)."""
        if self.guidance is None:
            return self.rows
        return self.rows + (int(self.cfg.sum()) if self.cfg is not None else self.rows)

    def to(self, device: torch.device | str) -> "ExpertBatch":
        d = torch.device(device)
        text = None if self.text is None else (self.text[0].to(d), self.text[1].to(d))
        g = self.guidance.to(d) if isinstance(self.guidance, torch.Tensor) else self.guidance
        return replace(self, x=self.x.to(d), t=self.t.to(d), y=None if self.y is None else self.y.to(d).long(),
                       text=text, guidance=g, cfg=None if self.cfg is None else self.cfg.to(d))

    def compact(self) -> "ExpertBatch":
        """On the CPU, labels in the smallest integer type (the receiver's ``to`` makes them long again)."""
        cpu = self.to("cpu")
        y = cpu.y
        if y is not None:
            y = y.to(torch.int16 if int(y.max()) < 2 ** 15 else torch.int32)
        return replace(cpu, y=y)


def _null_text(mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(mask, dtype=torch.bool)


@torch.no_grad()
def batch_velocity(model: nn.Module, b: ExpertBatch, num_classes: int) -> torch.Tensor:
    """The expert's velocity on every row of ``b`` in one forward pass (see the module docstring)."""
    y = None if b.y is None else b.y.long()
    cfg, g = b.cfg, b.guidance
    if g is None:
        return expert_forward(model, b.x, b.t, y, 1.0, num_classes, text=b.text)
    if cfg is None:
        return expert_forward(model, b.x, b.t, y, g, num_classes, text=b.text)
    c, p = cfg.nonzero().squeeze(1), (~cfg).nonzero().squeeze(1)
    if p.numel() == 0:
        return expert_forward(model, b.x, b.t, y, g, num_classes, text=b.text)
    if c.numel() == 0:
        return expert_forward(model, b.x, b.t, y, 1.0, num_classes, text=b.text)
    order = torch.cat([c, p, c])
    kw = {}
    if y is not None:
        kw["y"] = torch.cat([y[c], y[p], torch.full_like(y[c], num_classes)])
    if b.text is not None:
        states, mask = b.text
        kw["text"] = states[order]
        kw["text_mask"] = torch.cat([mask[c], mask[p], _null_text(mask[c])])
    v = model(b.x[order], b.t[order], **kw)
    v_c, v_p, v_u = v.split([c.numel(), p.numel(), c.numel()])
    gc = g[c].to(v.dtype).view(-1, *([1] * (v.dim() - 1)))
    out = torch.empty_like(v[: b.rows])
    out[p] = v_p
    out[c] = v_u + gc * (v_c - v_u)  # expert_forward's CFG combination, per row
    return out
