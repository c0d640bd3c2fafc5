"""The continuous-batching scheduler without Ray: equal to the library alone, batches really form,
mixed requests in one batch get what they get alone, expert failures (reroute / fail), cancellation."""
from __future__ import annotations

import asyncio

import pytest
import torch

from atoll.sampling import Ensemble
from atoll.serve.engine import LocalEngine
from atoll.serve.expert_batch import ExpertBatch, batch_velocity
from atoll.serve.routing import ExpertDown, Health, NoHealthyExpert, Unavailable, restrict
from atoll.serve.scheduler import Scheduler, Work
from atoll.sampling.strategies import select


@pytest.fixture(scope="module")
def ens(tiny_run):
    return Ensemble.from_pretrained(tiny_run["uri"])


def _engine(ens, experts=None):
    return LocalEngine(ens.router, experts or ens.experts, device=torch.device("cpu"), num_classes=ens.num_classes,
                       image_shape=ens.image_shape)


def _alone(ens, w: Work) -> torch.Tensor:
    return ens.sample(w.n, class_labels=w.label, steps=w.steps, guidance=w.guidance, seed=w.seed,
                      strategy=w.strategy).images


async def _together(sched: Scheduler, works: list[Work], stagger: float = 0.0):
    async def one(i, w):
        await asyncio.sleep(stagger * i)
        return await sched.generate(w)
    return await asyncio.gather(*[one(i, w) for i, w in enumerate(works)])


@pytest.mark.parametrize("work", [Work(5, label=2, steps=6, seed=7, strategy="top1"),
                                  Work(3, label=1, steps=4, guidance=2.0, seed=3, strategy="full"),
                                  Work(2, label=None, steps=5, guidance=1.5, seed=1, strategy="top2")])
def test_one_request_alone_equals_the_library_exactly(ens, work):
    sched = Scheduler(_engine(ens))
    out = asyncio.run(sched.generate(work))
    assert torch.equal(out.images, _alone(ens, work))
    assert len(out.experts_per_step) == work.steps and not out.degraded
    assert out.mean_tick_rows == work.n  # nothing else was in flight


MIXED = [Work(2, label=0, steps=6, seed=1, strategy="top1"),
         Work(3, label=1, steps=4, guidance=2.0, seed=2, strategy="full"),
         Work(1, label=None, steps=8, guidance=3.0, seed=3, strategy="top2"),
         Work(2, label=3, steps=5, guidance=1.0, seed=4, strategy="full"),
         Work(4, label=2, steps=3, guidance=4.0, seed=5, strategy="top1")]


def test_mixed_steps_strategies_and_guidance_in_one_batch_give_what_each_gets_alone(ens):
    sched = Scheduler(_engine(ens), max_rows=64)
    outs = asyncio.run(_together(sched, MIXED))
    for w, o in zip(MIXED, outs):
        want = _alone(ens, w)
        diff = (o.images.int() - want.int()).abs().max()
        assert diff <= 1, (w, int(diff))  # last float bits of batched matmuls: at most one uint8 level
        assert len(o.experts_per_step) == w.steps
    s = sched.stats()
    assert s["max_rows_per_tick"] == sum(w.n for w in MIXED)  # all five were in flight together
    assert s["mean_rows_per_expert_forward"] > 1 and s["requests"]["done"] == 5
    # one router pass and at most one forward per expert per tick
    assert s["expert_forwards"] <= 2 * s["ticks"] and s["router_rows"] == sum(w.n * w.steps for w in MIXED)


def test_requests_join_and_leave_at_tick_boundaries(ens):
    works = [Work(1, label=i % 4, steps=4 + i, seed=i) for i in range(6)]
    sched = Scheduler(_engine(ens), max_rows=3)
    outs = asyncio.run(_together(sched, works, stagger=0.002))
    s = sched.stats()
    assert s["max_rows_per_tick"] <= 3 and s["requests"]["done"] == 6
    assert s["ticks"] < sum(w.steps for w in works)  # steps of different requests shared ticks
    for w, o in zip(works, outs):
        assert (o.images.int() - _alone(ens, w).int()).abs().max() <= 1


def test_batch_velocity_fused_cfg_matches_separate_passes(ens):
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(5, *ens.image_shape, generator=g), torch.rand(5, generator=g)
    y = torch.tensor([0, 1, 4, 2, 3])  # 4 = the null class (an unconditional row)
    cfg = torch.tensor([True, False, False, True, True])
    gd = torch.tensor([2.0, 1.0, 1.0, 3.0, 1.5])
    from atoll.sampling.ensemble import expert_forward

    m = ens.experts[0]
    v = batch_velocity(m, ExpertBatch(x, t, y, None, gd, cfg), ens.num_classes)
    for i in range(5):
        want = expert_forward(m, x[i:i + 1], t[i:i + 1], y[i:i + 1], float(gd[i]) if cfg[i] else 1.0, ens.num_classes)
        assert torch.allclose(v[i:i + 1], want, atol=1e-5), i
    b = ExpertBatch(x, t, y, None, gd, cfg).compact()
    assert b.y.dtype == torch.int16 and b.x.device.type == "cpu"
    assert ExpertBatch(x, t, y).compact().guidance is None


class _Flaky:
    """An async expert that raises ExpertDown while ``down`` is set."""

    def __init__(self, model, k, num_classes):
        self.model, self.k, self.num_classes, self.down, self.calls = model, k, num_classes, True, 0

    async def __call__(self, b):
        self.calls += 1
        if self.down:
            raise ExpertDown(self.k, f"expert {self.k} is down")
        return batch_velocity(self.model, b, self.num_classes)


def test_reroute_leaves_a_down_expert_out_and_reports_it(ens):
    flaky = _Flaky(ens.experts[1], 1, ens.num_classes)
    sched = Scheduler(_engine(ens, [ens.experts[0], flaky]), health=Health(2, retry_after_s=3600))
    out = asyncio.run(sched.generate(Work(4, label=0, steps=3, strategy="full")))
    assert out.degraded == [1] and out.expert_rows == [12, 0] and flaky.calls == 1
    want = Ensemble([ens.experts[0]]).sample(4, class_labels=0, steps=3, seed=0).images
    assert torch.equal(out.images, want)  # expert 0 alone, renormalised weight 1
    assert sched.health.healthy() == [0]


def test_fail_policy_fails_only_the_requests_that_need_the_down_expert(ens):
    # top1 requests whose rows never choose expert 1 (library trace) must still succeed, exactly
    def uses_1(seed):
        tr = ens.sample(1, class_labels=0, steps=3, seed=seed, strategy="top1", return_trace=True).trace
        return bool((tr.indices == 1).any())

    flags = {seed: uses_1(seed) for seed in range(12)}
    assert set(flags.values()) == {True, False}, flags  # the tiny router sends some seeds to each expert
    spared, hit = next(s for s, f in flags.items() if not f), next(s for s, f in flags.items() if f)
    flaky = _Flaky(ens.experts[1], 1, ens.num_classes)
    sched = Scheduler(_engine(ens, [ens.experts[0], flaky]), on_expert_failure="fail",
                      health=Health(2, retry_after_s=3600))
    works = [Work(2, label=0, steps=3, strategy="full"), Work(1, label=0, steps=3, seed=spared),
             Work(1, label=0, steps=3, seed=hit)]
    results = asyncio.run(_gather_settled(sched, works))
    assert isinstance(results[0], Unavailable) and "onExpertFailure: fail" in str(results[0])
    assert torch.equal(results[1].images, _alone(ens, works[1])) and not results[1].degraded
    assert isinstance(results[2], Unavailable)


async def _gather_settled(sched, works):
    return await asyncio.gather(*[sched.generate(w) for w in works], return_exceptions=True)


def test_all_experts_down_is_no_healthy_expert(ens):
    experts = [_Flaky(ens.experts[k], k, ens.num_classes) for k in range(2)]
    sched = Scheduler(_engine(ens, experts))
    with pytest.raises(NoHealthyExpert):
        asyncio.run(sched.generate(Work(1, label=0, steps=2)))


def test_an_internal_error_fails_the_request_instead_of_hanging(ens):
    class Broken(torch.nn.Module):
        config = ens.experts[0].config

        def forward(self, *a, **k):
            raise RuntimeError("boom")

    sched = Scheduler(_engine(ens, [Broken(), Broken()]))
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(asyncio.wait_for(sched.generate(Work(1, label=0, steps=2)), 30))
    assert sched.in_flight == 0 and sched.stats()["requests"]["failed"] == 1


def test_a_cancelled_request_leaves_the_batch(ens):
    async def go():
        sched = Scheduler(_engine(ens))
        long = asyncio.ensure_future(sched.generate(Work(2, label=0, steps=200)))
        short = asyncio.ensure_future(sched.generate(Work(1, label=1, steps=3)))
        await short
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        await sched.generate(Work(1, label=1, steps=1))
        return sched.stats()

    s = asyncio.run(go())
    assert s["requests"] == {"done": 2, "failed": 0, "cancelled": 1} and s["in_flight"] == 0


def test_restrict_is_select_when_all_healthy_and_renormalises_otherwise():
    probs = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    for s in ("full", "top1", "top2"):
        a, b = restrict(probs, s, [0, 1, 2]), select(probs, s)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    idx, w = restrict(probs, "full", [0, 2])
    assert set(idx.unique().tolist()) <= {0, 2} and torch.allclose(w.sum(1), torch.ones(6))
    idx, w = restrict(probs, "top2", [1])
    assert idx.eq(1).all() and w.eq(1).all()
    with pytest.raises(NoHealthyExpert):
        restrict(probs, "top1", [])


def test_text_requests_alone_equal_the_library_and_share_ticks_with_unconditional_ones():
    from tiny_runs import perturbed

    from atoll.models.dit import DiTConfig
    from atoll.models.text import TextEncoder

    model = perturbed(DiTConfig("DiT-XXS/2", 8, 1, text_dim=384).build(), 3, 0.03)
    lib = Ensemble([model], None)
    engine = LocalEngine(None, [model], device=torch.device("cpu"), num_classes=0, image_shape=lib.image_shape,
                         text_encoder=TextEncoder)
    works = [Work(2, prompt="a photo of a bag", steps=4, guidance=2.0, seed=1), Work(1, steps=3, seed=2),
             Work(1, prompt="a coat", steps=5, guidance=1.0, seed=3)]

    def alone(w):
        if w.prompt is None:
            return lib.sample(w.n, steps=w.steps, guidance=w.guidance, seed=w.seed).images
        return lib.sample(prompts=w.prompt, n=w.n, steps=w.steps, guidance=w.guidance, seed=w.seed).images

    out = asyncio.run(Scheduler(engine).generate(works[0]))
    assert torch.equal(out.images, alone(works[0]))
    sched = Scheduler(engine)
    outs = asyncio.run(_together(sched, works))
    assert sched.stats()["max_rows_per_tick"] == 4  # text, CFG-text and unconditional rows in one tick
    for w, o in zip(works, outs):
        assert (o.images.int() - alone(w).int()).abs().max() <= 1, w
