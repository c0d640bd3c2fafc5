"""The ensemble: strategy maths on real (tiny) models, cost of top-1, CFG, determinism by seed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from atoll.models.router import RouterConfig
from atoll.sampling import Ensemble, SamplingError, to_uint8

from sampling_helpers import CLASS_NAMES, NUM_CLASSES, make_experts, make_router


class ForcedRouter(nn.Module):
    """A router whose logits pick ``choice[i]`` for row i (a one-hot softmax up to float precision)."""

    def __init__(self, k: int, choice: list[int]):
        super().__init__()
        self.config = RouterConfig("Router-XS", 8, 1, num_experts=k)
        self.choice = torch.tensor(choice)

    def forward(self, x_t, t):
        return torch.nn.functional.one_hot(self.choice[: x_t.shape[0]], self.config.num_experts).float() * 1e4


class Counter:
    """Counts forward calls and rows of each module it is attached to (forward hooks)."""

    def __init__(self, modules: list[nn.Module]):
        self.calls = [0] * len(modules)
        self.rows = [0] * len(modules)
        for i, m in enumerate(modules):
            m.register_forward_hook(self._hook(i))

    def _hook(self, i):
        def hook(module, args, out):
            self.calls[i] += 1
            self.rows[i] += out.shape[0]
        return hook


def _inputs(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 8, 8, generator=g), torch.rand(b, generator=g), torch.randint(0, NUM_CLASSES, (b,), generator=g)


@pytest.fixture(scope="module")
def experts():
    return make_experts(3)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_full_with_one_hot_router_equals_that_expert_exactly(experts, guidance):
    choice = [2, 0, 1, 2]
    ens = Ensemble(experts, ForcedRouter(3, choice), class_names=CLASS_NAMES)
    x, t, y = _inputs(4)
    v, step = ens.velocity(x, t, y, guidance, "full")
    assert step.indices.shape == (4, 3)  # full evaluates every expert, on every row
    assert torch.equal(step.probs, torch.nn.functional.one_hot(torch.tensor(choice), 3).float())
    for i, k in enumerate(choice):
        # the same expert alone, on the same batch: bit for bit
        alone = Ensemble([experts[k]]).velocity(x, t, y, guidance)[0]
        assert torch.equal(v[i], alone[i])
        if guidance == 1.0:
            assert torch.equal(v[i], experts[k](x, t, y=y)[i])


def test_full_is_the_router_weighted_sum(experts):
    router = make_router(3)
    ens = Ensemble(experts, router)
    x, t, y = _inputs(5)
    v, step = ens.velocity(x, t, y, 1.0, "full")
    probs = torch.softmax(router(x, t), dim=-1)
    want = sum(probs[:, k].view(-1, 1, 1, 1) * experts[k](x, t, y=y) for k in range(3))
    assert torch.allclose(v, want, atol=1e-5)
    assert torch.allclose(step.probs, probs, atol=1e-6)
    assert not torch.allclose(v, ens.velocity(x, t, y, 1.0, "top1")[0], atol=1e-3)  # a soft router: they differ


def test_top2_is_the_renormalised_sum_of_the_two_best(experts):
    router = make_router(3)
    ens = Ensemble(experts, router)
    x, t, y = _inputs(6)
    v, step = ens.velocity(x, t, y, 1.0, "top2")
    probs = torch.softmax(router(x, t), dim=-1)
    w, idx = probs.topk(2, dim=1)
    w = w / w.sum(1, keepdim=True)
    outs = torch.stack([e(x, t, y=y) for e in experts], 1)  # [B, K, C, H, W]
    want = sum(w[:, j].view(-1, 1, 1, 1) * outs[torch.arange(6), idx[:, j]] for j in range(2))
    assert torch.allclose(v, want, atol=1e-5)
    assert torch.allclose(step.weights.sum(1), torch.ones(6))


@pytest.mark.parametrize("guidance,per_row", [(1.0, 1), (1.5, 2)])
def test_top1_evaluates_one_expert_per_sample_per_step(guidance, per_row):
    experts, router = make_experts(3, seed=10), make_router(3, seed=11)
    ens = Ensemble(experts, router, class_names=CLASS_NAMES)
    count, rcount = Counter(experts), Counter([router])
    steps, n = 3, 6
    res = ens.sample(n, class_labels=[i % NUM_CLASSES for i in range(n)], strategy="top1", steps=steps, guidance=guidance,
                     return_trace=True)
    assert rcount.calls == [steps] and rcount.rows == [n * steps]  # router once per step
    assert sum(count.rows) == n * steps * per_row  # one expert per sample (x2 with CFG), not K
    assert all(c <= steps for c in count.calls)  # each expert at most one batched call per step
    assert count.rows == res.expert_rows
    used = res.trace.indices[..., 0]  # [S, N]
    for k in range(3):
        assert count.rows[k] == int((used == k).sum()) * per_row
    full = Counter(experts)
    ens.sample(n, class_labels=[i % NUM_CLASSES for i in range(n)], strategy="full", steps=steps, guidance=guidance)
    assert full.rows == [n * steps * per_row] * 3


def test_same_seed_same_images_and_different_seed_different():
    ens = Ensemble(make_experts(2), make_router(2), class_names=CLASS_NAMES)
    kw = dict(class_labels=[1, 2, 3, 0], strategy="top1", steps=2, guidance=1.5)
    a = ens.sample(4, seed=7, output="float", **kw).images
    b = ens.sample(4, seed=7, output="float", **kw).images
    c = ens.sample(4, seed=8, output="float", **kw).images
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("strategy", ["top1", "full"])
def test_a_sample_does_not_depend_on_its_batch(strategy):
    ens = Ensemble(make_experts(2), make_router(2), class_names=CLASS_NAMES)
    labels = [3, 1, 0, 1]
    kw = dict(strategy=strategy, steps=2, guidance=1.5, seed=3)
    batch4 = ens.sample(4, class_labels=labels, output="float", batch_size=4, **kw).images
    batch1 = ens.sample(4, class_labels=labels, output="float", batch_size=1, **kw).images
    alone = torch.cat([ens.sample(1, class_labels=labels[i], start_index=i, output="float", **kw).images
                       for i in range(4)])
    assert torch.allclose(batch4, batch1, atol=1e-5, rtol=0)
    assert torch.allclose(batch4, alone, atol=1e-5, rtol=0)
    # the same noise; batched matmuls differ from single-row ones by float rounding only (~1e-7)
    assert (to_uint8(batch4).int() - to_uint8(batch1).int()).abs().max() <= 1


def test_guidance_one_is_the_conditional_model_only():
    [expert] = make_experts(1)
    ens = Ensemble([expert])
    x, t, y = _inputs(4)
    count = Counter([expert])
    v, _ = ens.velocity(x, t, y, 1.0, "top1")
    assert count.rows == [4]  # no null-class pass at guidance 1
    assert torch.equal(v, expert(x, t, y=y))


def test_guidance_combines_conditional_and_null_class():
    [expert] = make_experts(1)
    ens = Ensemble([expert])
    x, t, y = _inputs(3)
    v, _ = ens.velocity(x, t, y, 3.0, "top1")
    v_c, v_u = expert(x, t, y=y), expert(x, t, y=torch.full_like(y, NUM_CLASSES))
    assert torch.allclose(v, v_u + 3.0 * (v_c - v_u), atol=1e-5)


def test_heun_uses_two_evaluations_per_step_and_trace_shapes():
    ens = Ensemble(make_experts(2), make_router(2), class_names=CLASS_NAMES)
    res = ens.sample(3, class_labels=0, strategy="top1", steps=3, sampler="heun", return_trace=True)
    assert res.trace.probs.shape == (6, 3, 2) and res.trace.indices.shape == (6, 3, 1)
    assert res.images.dtype == torch.uint8 and res.images.shape == (3, 1, 8, 8)
    assert abs(sum(res.trace.usage()) - 1) < 1e-6
    assert res.router_rows == 18


def test_gflops_per_image_counts_router_selected_experts_and_cfg():
    from atoll.models.flops import forward_flops

    experts, router = make_experts(3), make_router(3)
    ens = Ensemble(experts, router)
    e, r = forward_flops(experts[0].config), forward_flops(router.config)
    assert ens.gflops_per_image("top1", steps=10) == pytest.approx(10 * (r + e) / 1e9)
    assert ens.gflops_per_image("full", steps=10, guidance=2.0) == pytest.approx(10 * (r + 6 * e) / 1e9)
    assert ens.gflops_per_image("top2", steps=10, sampler="heun") == pytest.approx(20 * (r + 2 * e) / 1e9)
    assert Ensemble([experts[0]]).gflops_per_image("full", steps=10) == pytest.approx(10 * e / 1e9)


def test_bad_requests_are_clear_errors():
    ens = Ensemble(make_experts(2), make_router(2), class_names=CLASS_NAMES)
    with pytest.raises(SamplingError, match="class 4 is out of range; this run has 4 classes: 0=c0, 1=c1"):
        ens.sample(2, class_labels=4, steps=1)
    with pytest.raises(SamplingError, match="unknown; use full, top1"):
        ens.sample(2, class_labels=1, strategy="best", steps=1)
    with pytest.raises(SamplingError, match="sampler 'rk4' is unknown"):
        ens.sample(2, class_labels=1, sampler="rk4", steps=1)
    with pytest.raises(SamplingError, match="need a router"):
        Ensemble(make_experts(2), None)
    with pytest.raises(SamplingError, match="trained for 3 experts"):
        Ensemble(make_experts(2), make_router(3))
    assert ens.class_index("C3") == 3 and ens.class_index("2") == 2
