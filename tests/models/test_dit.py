"""DiT: shapes for each conditioning, gradients, conditioning effects, config round-trip."""
from __future__ import annotations

import pytest
import torch

from atoll.models.dit import DIT_SIZES, DiT, DiTConfig
from atoll.models.names import DIT_SIZE_NAMES, ROUTER_SIZE_NAMES
from atoll.models.router import ROUTER_SIZES


def test_size_names_match_size_dicts():
    assert tuple(DIT_SIZES) == DIT_SIZE_NAMES
    assert tuple(ROUTER_SIZES) == ROUTER_SIZE_NAMES


def test_paper_sizes():
    assert DIT_SIZES["DiT-XL/2"] == dict(depth=28, hidden_size=1152, patch_size=2, num_heads=16)
    assert DIT_SIZES["DiT-L/2"] == dict(depth=24, hidden_size=1024, patch_size=2, num_heads=16)
    assert DIT_SIZES["DiT-B/4"] == dict(depth=12, hidden_size=768, patch_size=4, num_heads=12)
    assert DIT_SIZES["DiT-S/2"] == dict(depth=12, hidden_size=384, patch_size=2, num_heads=6)


def _inputs(cfg: DiTConfig, B: int = 3, L: int = 5):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t = torch.rand(B, generator=g)
    kw = {}
    if cfg.num_classes:
        kw["y"] = torch.arange(B) % cfg.num_classes
        kw["y"][-1] = cfg.num_classes  # the null class
    if cfg.text_dim:
        kw["text"] = torch.randn(B, L, cfg.text_dim, generator=g)
        mask = torch.ones(B, L, dtype=torch.bool)
        mask[1, 3:] = False  # padding
        mask[-1] = False  # a dropped (null) text row
        kw["text_mask"] = mask
    return x, t, kw


CONFIGS = [
    DiTConfig("DiT-XXS/2", 28, 1, num_classes=10),
    DiTConfig("DiT-XXS/4", 28, 1),
    DiTConfig("DiT-XXS/2", 28, 1, text_dim=16, text_mode="pooled"),
    DiTConfig("DiT-XXS/4", 28, 1, num_classes=10, text_dim=16, text_mode="cross"),
    DiTConfig("DiT-XXS/2", 32, 3, num_classes=5),
    DiTConfig("DiT-XS/4", 28, 1, num_classes=10),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.size}-{c.input_size}x{c.in_channels}-"
                         f"y{c.num_classes}-{c.text_mode if c.text_dim else 'notext'}")
def test_forward_backward_shapes(cfg):
    model = cfg.build()
    x, t, kw = _inputs(cfg)
    v = model(x, t, **kw)
    assert v.shape == x.shape and v.dtype == x.dtype
    assert torch.all(v == 0)  # zero-init final layer: the untrained model predicts 0
    (v - x).square().mean().backward()
    assert model.final_layer.linear.weight.grad is not None
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def test_forward_without_conditioning_arguments_uses_null():
    cfg = DiTConfig("DiT-XXS/4", 28, 1, num_classes=10, text_dim=8)
    model = cfg.build()
    _perturb(model)
    x, t, _ = _inputs(cfg)
    v_none = model(x, t)
    v_null = model(x, t, y=torch.full((3,), 10), text=torch.randn(3, 4, 8), text_mask=torch.zeros(3, 4, dtype=torch.bool))
    torch.testing.assert_close(v_none, v_null)


@pytest.mark.parametrize("cfg", [
    DiTConfig("DiT-XXS/4", 28, 1, num_classes=10),
    DiTConfig("DiT-XXS/4", 28, 1, num_classes=10, text_dim=16, text_mode="cross"),
    DiTConfig("DiT-XXS/4", 28, 1, text_dim=16, text_mode="pooled"),
], ids=["class", "cross", "pooled"])
def test_all_parameters_get_gradients_after_two_steps(cfg):
    """Zero-init final layer and adaLN gates: step 1 moves the final linear, step 2 the gates and
    modulations, then every parameter gets a gradient."""
    torch.manual_seed(0)
    model = cfg.build()
    x, t, kw = _inputs(cfg, B=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(3):
        opt.zero_grad()
        (model(x, t, **kw) - x).square().mean().backward()
        if step == 0:
            assert model.blocks[0].attn.qkv.weight.grad.abs().sum() == 0  # identity blocks at init
        if step < 2:
            opt.step()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, f"no gradient reaches {dead}"


def _perturb(model: torch.nn.Module, std: float = 0.05):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def test_conditioning_changes_output():
    cfg = DiTConfig("DiT-XXS/4", 28, 1, num_classes=10, text_dim=8, text_mode="cross")
    model = cfg.build()
    _perturb(model)
    x, t, _ = _inputs(cfg, B=2)
    base = model(x, t, y=torch.tensor([1, 1]))
    assert not torch.allclose(base, model(x, t, y=torch.tensor([2, 2])), atol=1e-4)  # class
    assert not torch.allclose(base, model(x, t * 0.5, y=torch.tensor([1, 1])), atol=1e-4)  # time
    text = torch.randn(2, 3, 8)
    assert not torch.allclose(model(x, t, text=text), model(x, t, text=text + 1), atol=1e-4)  # text
    # padding is ignored: masked tokens do not change the output
    mask = torch.tensor([[True, True, False]] * 2)
    text2 = text.clone()
    text2[:, 2] = 100.0
    torch.testing.assert_close(model(x, t, text=text, text_mask=mask), model(x, t, text=text2, text_mask=mask))


def test_pooled_text_changes_output_and_ignores_padding():
    cfg = DiTConfig("DiT-XXS/4", 28, 1, text_dim=8, text_mode="pooled")
    model = cfg.build()
    _perturb(model)
    x, t, _ = _inputs(cfg, B=2)
    text = torch.randn(2, 3, 8)
    assert not torch.allclose(model(x, t, text=text), model(x, t, text=-text), atol=1e-4)
    mask = torch.tensor([[True, False, False]] * 2)
    text2 = text.clone()
    text2[:, 1:] = 7.0
    torch.testing.assert_close(model(x, t, text=text, text_mask=mask), model(x, t, text=text2, text_mask=mask))


def test_forward_with_cfg_matches_two_passes():
    cfg = DiTConfig("DiT-XXS/4", 28, 1, num_classes=10)
    model = cfg.build()
    _perturb(model)
    x, t, _ = _inputs(cfg, B=2)
    y = torch.tensor([3, 4])
    v_c, v_u = model(x, t, y=y), model(x, t, y=torch.tensor([10, 10]))
    torch.testing.assert_close(model.forward_with_cfg(x, t, y, guidance=3.0), v_u + 3.0 * (v_c - v_u),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.forward_with_cfg(x, t, y, guidance=1.0), v_c)


def test_config_round_trip_and_errors():
    cfg = DiTConfig("DiT-XS/2", 28, 1, num_classes=10, text_dim=384, text_mode="cross")
    assert DiTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="size"):
        DiTConfig("DiT-Q/2", 28, 1)
    with pytest.raises(ValueError, match="input_size"):
        DiTConfig("DiT-S/4", 30, 1)
    with pytest.raises(ValueError, match="text_mode"):
        DiTConfig("DiT-S/4", 28, 1, text_dim=8, text_mode="concat")
    with pytest.raises(ValueError, match="no field"):
        DiTConfig.from_dict({**cfg.to_dict(), "colour": 1})
    model = DiT(DiTConfig("DiT-XXS/4", 28, 1))
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(2, 3, 28, 28), torch.rand(2))
    with pytest.raises(ValueError, match="num_classes=0"):
        model(torch.randn(2, 1, 28, 28), torch.rand(2), y=torch.tensor([0, 1]))


def test_pos_embed_not_in_state_dict():
    model = DiTConfig("DiT-XXS/2", 28, 1).build()
    assert "pos_embed" not in model.state_dict()
    assert model.pos_embed.shape == (1, 14 * 14, 128)


def test_bf16_autocast_forward_backward():
    cfg = DiTConfig("DiT-XXS/4", 28, 1, num_classes=10)
    model = cfg.build()
    x, t, kw = _inputs(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = model(x, t, **kw)
    v.float().square().mean().backward()
    assert v.shape == x.shape
