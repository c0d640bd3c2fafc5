"""Router: shapes, config, and that it learns a separable toy task."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from atoll.models.flow import interpolate
from atoll.models.router import ROUTER_SIZES, RouterConfig


@pytest.mark.parametrize("size", list(ROUTER_SIZES))
def test_output_shape(size):
    r = RouterConfig(size, 28, 1, num_experts=4).build()
    logits = r(torch.randn(5, 1, 28, 28), torch.rand(5))
    assert logits.shape == (5, 4)
    p = r.probs(torch.randn(5, 1, 28, 28), torch.rand(5))
    torch.testing.assert_close(p.sum(1), torch.ones(5))


def test_config_round_trip_and_errors():
    cfg = RouterConfig("Router-S", 32, 3, 8)
    assert RouterConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.build()(torch.randn(2, 3, 32, 32), torch.rand(2)).shape == (2, 8)
    with pytest.raises(ValueError, match="num_experts"):
        RouterConfig("Router-S", 28, 1, 0)
    with pytest.raises(ValueError, match="size"):
        RouterConfig("Router-XXL", 28, 1, 2)


def test_learns_separable_clusters():
    """Cluster k = images with a bright square in quadrant k; the router learns it from noisy x_t."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    K, B = 4, 32
    quadrants = torch.full((K, 1, 28, 28), -1.0)
    for q in range(K):
        r, c = divmod(q, 2)
        quadrants[q, :, r * 14:(r + 1) * 14, c * 14:(c + 1) * 14] = 1.0

    def batch():
        k = torch.randint(0, K, (B,), generator=g)
        x0 = quadrants[k]
        t = torch.rand(B, generator=g) * 0.6  # mostly-signal times: the task is learnable
        return interpolate(x0, torch.randn(x0.shape, generator=g), t), t, k

    router = RouterConfig("Router-XS", 28, 1, K).build()
    opt = torch.optim.AdamW(router.parameters(), lr=3e-3)
    xe, te, ke = batch()
    with torch.no_grad():
        before = F.cross_entropy(router(xe, te), ke).item()
    for _ in range(20):
        x, t, k = batch()
        loss = F.cross_entropy(router(x, t), k)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = F.cross_entropy(router(xe, te), ke).item()
    assert before == pytest.approx(torch.log(torch.tensor(K * 1.0)).item(), abs=0.1)
    assert after < 0.5 * before, (before, after)


def test_low_resolution_router_sees_an_area_average_and_few_tokens():
    """``@16`` sizes: x_t is area-averaged to 16x16 before the patch embedding (16 tokens at patch 4)."""
    cfg = RouterConfig("Router-XS@16", 28, 1, num_experts=4, num_classes=10)
    assert (cfg.resolution, cfg.num_tokens) == (16, 16)
    r = cfg.build().eval()
    x, t, y = torch.randn(3, 1, 28, 28), torch.rand(3), torch.tensor([1, 2, 3])
    seen = {}
    r.x_embedder.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0], tokens=out.shape[1]))
    r(x, t, y)
    torch.testing.assert_close(seen["x"], F.adaptive_avg_pool2d(x, 16))
    assert seen["tokens"] == 16
    # images at or below the resolution are seen whole; sides that are not a multiple of the patch shrink to one
    assert RouterConfig("Router-XS@16", 16, 1, 2).resolution == 16
    assert RouterConfig("Router-XS@16", 14, 1, 2).resolution == 12
    assert RouterConfig("Router-XS@16", 8, 3, 2).num_tokens == 4
    assert RouterConfig("Router-XS", 28, 1, 2).resolution == 28
    with pytest.raises(ValueError, match="Router-XS@16"):
        RouterConfig("Router-XS", 30, 1, 2)


def test_low_resolution_router_cost_does_not_grow_with_the_image():
    from atoll.models.flops import router_forward_flops

    small, big = RouterConfig("Router-S@16", 32, 4, 8), RouterConfig("Router-S@16", 256, 4, 8)
    assert router_forward_flops(big) == pytest.approx(router_forward_flops(small), rel=1e-3)
    assert router_forward_flops(RouterConfig("Router-S", 64, 4, 8)) > 10 * router_forward_flops(small)
