"""The model deployments: the router and one expert each, with ``@serve.batch`` so that
concurrent requests share one forward pass.

Both load their weights from the store themselves (file or S3) and reuse the ensemble's
maths (``atoll.sampling.ensemble.route_probs`` / ``expert_forward``): a batch of one request
computes exactly what the library computes for that request.
"""
from __future__ import annotations

import uuid

import torch
from ray import serve

from atoll.sampling.ensemble import expert_forward, route_probs
from atoll.sampling.runs import checkpoint_prefix
from atoll.serve.rank_group import DEFAULT_RANK_CPUS
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
    """``velocity(x, t, y, guidance) -> v``: one expert on the rows that chose it (CFG per row).

    ``sequence_parallel > 1`` (video experts only): the replica owns a ``RankGroup`` of that many
    rank actors (``rank_group.py``, started here, torn down in ``shutdown``/``__del__``) and every
    forward runs on it, split over the ranks' tokens; the replica itself loads no weights.
    ``rank_num_cpus`` / ``rank_num_gpus``: what each rank actor asks of Ray.
    """

    def __init__(self, source: RunSource, k: int, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01,
                 sequence_parallel: int = 1, rank_num_cpus: float = DEFAULT_RANK_CPUS,
                 rank_num_gpus: float = 0.0):
        self.k, self.sequence_parallel = k, int(sequence_parallel)
        self.group = None
        self.model = None
        if self.sequence_parallel > 1:
            from atoll.models.checkpoint import load_config
            from atoll.serve.rank_group import RankGroup
            from atoll.serve.runinfo import deployment_name, expert_heads

            store = source.open()
            meta = load_config(store, checkpoint_prefix(k))
            if meta.get("kind") != "vdit":
                raise ValueError(f"serve.sequenceParallel = {self.sequence_parallel} is for video experts; "
                                 f"expert {k} is a {meta.get('kind')!r} model: set serve.sequenceParallel: 1")
            self.num_classes = int(meta["config"].get("num_classes") or 0)
            label = f"{deployment_name(k)}-{uuid.uuid4().hex[:8]}"
            self.group = RankGroup(source, checkpoint_prefix(k), self.sequence_parallel,
                                   num_heads=expert_heads(store, k), num_cpus=rank_num_cpus,
                                   num_gpus=rank_num_gpus, label=label)
        else:
            self.model = _load(source, checkpoint_prefix(k))
            self.num_classes = int(self.model.config.num_classes)
        _configure(self.velocity, max_batch_size, batch_wait_timeout_s)

    async def _forward(self, x, t, y, g):
        if self.group is not None:
            return await self.group.velocity(x, t, y, g)
        return expert_forward(self.model, x, t, y, g, self.num_classes)

    async def _group(self, items: list) -> list[torch.Tensor]:
        """Items of one kind (all unconditional, all plain conditional, or all CFG) in one forward pass."""
        if len(items) == 1:
            return [await self._forward(*items[0])]
        x, t = torch.cat([i[0] for i in items]), torch.cat([i[1] for i in items])
        y = None if items[0][2] is None else torch.cat([i[2] for i in items])
        cfg = y is not None and items[0][3] != 1.0
        g = torch.cat([torch.full((i[0].shape[0],), float(i[3])) for i in items]) if cfg else 1.0
        v = await self._forward(x, t, y, g)
        return list(v.split([i[0].shape[0] for i in items]))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def velocity(self, items: list[tuple]) -> list[torch.Tensor]:
        kinds: dict[str, list[int]] = {}
        for j, (_, _, y, g) in enumerate(items):
            kinds.setdefault("uncond" if y is None else ("plain" if g == 1.0 else "cfg"), []).append(j)
        out: list = [None] * len(items)
        with torch.no_grad():
            for idx in kinds.values():
                for j, v in zip(idx, await self._group([items[j] for j in idx])):
                    out[j] = v
        return out

    def describe(self) -> dict:
        """The replica's parallel layout: ``sequence_parallel``, the ranks' world size and each rank's facts."""
        if self.group is None:
            return {"sequence_parallel": 1, "world_size": 1, "generation": 0, "restarts": 0, "ranks": []}
        return self.group.info()

    def check_health(self) -> None:
        """Serve's health check: unhealthy when the rank group is down (a restart failed), so Serve replaces us."""
        if self.group is not None and not self.group.alive:
            raise RuntimeError(f"expert {self.k}: its {self.sequence_parallel}-rank group is down")

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.shutdown()

    def __del__(self):
        try:
            self.shutdown()
        except Exception:  # interpreter teardown
            pass
