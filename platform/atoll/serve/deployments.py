"""The model deployments: the router and one expert each, with ``@serve.batch`` so that
concurrent requests share one forward pass.

Both load their weights from the store themselves (file or S3) and reuse the ensemble's
maths (``atoll.sampling.ensemble.route_probs`` / ``expert_forward``): a batch of one request
computes exactly what the library computes for that request.
"""
from __future__ import annotations

import torch
from ray import serve

from atoll.sampling.ensemble import expert_forward, route_probs
from atoll.sampling.runs import checkpoint_prefix
from atoll.serve.runinfo import RunSource


def _load(source: RunSource, prefix: str):
    from atoll.models.checkpoint import from_pretrained

    return from_pretrained(source.open(), prefix, map_location="cpu").eval()


def _configure(method, max_batch_size: int, batch_wait_timeout_s: float) -> None:
    method.set_max_batch_size(max_batch_size)
    method.set_batch_wait_timeout_s(batch_wait_timeout_s)


class RouterModel:
    """``route((x_t, t, y)) -> probs [B, K]``; no router (one expert) gives ones ``[B, 1]``."""

    def __init__(self, source: RunSource, num_experts: int, max_batch_size: int = 8,
                 batch_wait_timeout_s: float = 0.01):
        self.router = _load(source, checkpoint_prefix(None)) if num_experts > 1 else None
        _configure(self.route, max_batch_size, batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def route(self, items: list[tuple]) -> list[torch.Tensor]:
        if len(items) == 1:
            return [route_probs(self.router, *items[0])]
        sizes = [it[0].shape[0] for it in items]
        x, t = torch.cat([it[0] for it in items]), torch.cat([it[1] for it in items])
        # the null class stands in for unconditional requests batched with conditional ones
        null = int(getattr(getattr(self.router, "config", None), "num_classes", 0))
        y = torch.cat([it[2] if it[2] is not None else torch.full((it[0].shape[0],), null, dtype=torch.long)
                       for it in items])
        probs = route_probs(self.router, x, t, y)
        return list(probs.split(sizes))


class ExpertModel:
    """``velocity(x, t, y, guidance) -> v``: one expert on the rows that chose it (CFG per row)."""

    def __init__(self, source: RunSource, k: int, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01):
        self.k = k
        self.model = _load(source, checkpoint_prefix(k))
        self.num_classes = int(self.model.config.num_classes)
        _configure(self.velocity, max_batch_size, batch_wait_timeout_s)

    def _group(self, items: list) -> torch.Tensor:
        """Items of one kind (all unconditional, all plain conditional, or all CFG) in one forward pass."""
        if len(items) == 1:
            return [expert_forward(self.model, *items[0], self.num_classes)]
        x, t = torch.cat([i[0] for i in items]), torch.cat([i[1] for i in items])
        y = None if items[0][2] is None else torch.cat([i[2] for i in items])
        cfg = y is not None and items[0][3] != 1.0
        g = torch.cat([torch.full((i[0].shape[0],), float(i[3])) for i in items]) if cfg else 1.0
        v = expert_forward(self.model, x, t, y, g, self.num_classes)
        return list(v.split([i[0].shape[0] for i in items]))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def velocity(self, items: list[tuple]) -> list[torch.Tensor]:
        kinds: dict[str, list[int]] = {}
        for j, (_, _, y, g) in enumerate(items):
            kinds.setdefault("uncond" if y is None else ("plain" if g == 1.0 else "cfg"), []).append(j)
        out: list = [None] * len(items)
        with torch.no_grad():
            for idx in kinds.values():
                for j, v in zip(idx, self._group([items[j] for j in idx])):
                    out[j] = v
        return out
