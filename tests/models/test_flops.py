"""Analytic FLOPs against torch's FlopCounterMode (math SDPA backend so attention matmuls are counted)."""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from atoll.models.dit import DiTConfig
from atoll.models.flops import dit_forward_flops, router_forward_flops, train_flops_per_sample
from atoll.models.router import RouterConfig


def _counted(model, *args, **kw) -> int:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(*args, **kw)
    return fc.get_total_flops()


@pytest.mark.parametrize("cfg", [
    DiTConfig("DiT-XXS/2", 28, 1, num_classes=10),
    DiTConfig("DiT-XS/4", 28, 1),
    DiTConfig("DiT-XXS/2", 32, 3, text_dim=16, text_mode="pooled"),
    DiTConfig("DiT-XXS/4", 28, 1, text_dim=16, text_mode="cross"),
], ids=lambda c: f"{c.size}-{c.input_size}-{c.text_mode if c.text_dim else 'notext'}")
def test_dit_flops_match_counter(cfg):
    B, L = 2, 12
    x = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size)
    kw = {"text": torch.randn(B, L, cfg.text_dim)} if cfg.text_dim else {}
    counted = _counted(cfg.build(), x, torch.rand(B), **kw) / B
    analytic = dit_forward_flops(cfg, text_len=L)
    assert analytic == pytest.approx(counted, rel=0.03)


@pytest.mark.parametrize("size", ["Router-XS", "Router-B", "Router-XS@16", "Router-S@16"])
def test_router_flops_match_counter(size):
    cfg = RouterConfig(size, 28, 1, 4)
    counted = _counted(cfg.build(), torch.randn(2, 1, 28, 28), torch.rand(2)) / 2
    assert router_forward_flops(cfg) == pytest.approx(counted, rel=0.03)


def test_train_flops_and_scaling():
    cfg = DiTConfig("DiT-B/2", 32, 4)
    assert train_flops_per_sample(cfg) == 3 * dit_forward_flops(cfg)
    # DiT-XL/2 at 256px (32x32x4 latents): the paper quotes 118.6 GFLOPs (multiply-adds, i.e. ~237 GFLOPs)
    xl = dit_forward_flops(DiTConfig("DiT-XL/2", 32, 4)) / 1e9
    assert 2 * 118.6 * 0.97 < xl < 2 * 118.6 * 1.03
