"""The ingress's denoising loop without Ray: equal to the library sampler; degraded routing."""
from __future__ import annotations

import asyncio

import pytest
import torch

from atoll.sampling import Ensemble
from atoll.sampling.ensemble import expert_forward, route_probs
from atoll.sampling.strategies import select
from atoll.serve.denoise import Health, NoHealthyExpert, denoise, restrict


@pytest.fixture(scope="module")
def ens(tiny_run):
    return Ensemble.from_pretrained(tiny_run["uri"])


def _fns(ens, fail=()):
    async def route(x, t, y=None):
        return route_probs(ens.router, x, t, y)

    async def expert(k, x, t, y, g):
        if k in fail:
            raise RuntimeError(f"expert {k} is down")
        return expert_forward(ens.experts[k], x, t, y, g, ens.num_classes)
    return route, expert


def _run(ens, health, fail=(), **kw):
    route, expert = _fns(ens, fail)
    return asyncio.run(denoise(ens.image_shape, kw.pop("n"), kw.pop("label"), num_experts=ens.num_experts,
                               route=route, expert=expert, health=health, **kw))


@pytest.mark.parametrize("strategy,guidance,label", [("top1", 1.0, 2), ("full", 2.0, 1), ("top2", 1.5, None)])
def test_equals_library_sampler_exactly(ens, strategy, guidance, label):
    want = ens.sample(5, class_labels=label, steps=6, guidance=guidance, seed=7, strategy=strategy)
    out = _run(ens, Health(2), n=5, label=label, steps=6, guidance=guidance, seed=7, strategy=strategy)
    from atoll.sampling import to_uint8

    assert torch.equal(to_uint8(out.images), want.images)
    assert not out.degraded and len(out.experts_per_step) == 6


def test_restrict_is_select_when_all_healthy_and_renormalises_otherwise():
    probs = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    for s in ("full", "top1", "top2"):
        a, b = restrict(probs, s, [0, 1, 2]), select(probs, s)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    idx, w = restrict(probs, "full", [0, 2])
    assert set(idx.unique().tolist()) <= {0, 2}
    assert torch.allclose(w.sum(1), torch.ones(6))
    idx, w = restrict(probs, "top2", [1])
    assert idx.eq(1).all() and w.eq(1).all()
    with pytest.raises(NoHealthyExpert):
        restrict(probs, "top1", [])


def test_a_failing_expert_is_left_out_and_reported(ens):
    health = Health(2, retry_after_s=60)
    out = _run(ens, health, fail=(1,), n=4, label=0, steps=3, guidance=1.0, seed=0, strategy="full")
    assert out.degraded == {1}
    assert out.expert_rows[1] == 0 and out.expert_rows[0] == 4 * 3
    assert health.healthy() == [0]
    want = Ensemble([ens.experts[0]]).sample(4, class_labels=0, steps=3, seed=0)
    from atoll.sampling import to_uint8

    assert torch.equal(to_uint8(out.images), want.images)  # expert 0 alone, renormalised weight 1


def test_no_healthy_expert_raises(ens):
    with pytest.raises(NoHealthyExpert):
        _run(ens, Health(2), fail=(0, 1), n=1, label=0, steps=1, guidance=1.0, seed=0, strategy="top1")
