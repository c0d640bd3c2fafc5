"""VideoDiT: shapes, patchify round trip, config, sizes vs names, conditioning, flow loss, checkpoint."""
import pytest
import torch

from atoll.models.flow import flow_loss
from atoll.models.names import VIDEO_DIT_SIZE_NAMES
from atoll.models.video_dit import VDIT_SIZES, VideoDiT, VideoDiTConfig, sincos_pos_embed_3d


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_sizes_match_names():
    assert tuple(VDIT_SIZES) == VIDEO_DIT_SIZE_NAMES


@pytest.mark.parametrize("pt", [1, 2])
def test_shapes_and_patchify_roundtrip(pt):
    cfg = VideoDiTConfig("VDiT-XS/2", input_size=8, frames=4, in_channels=1, num_classes=10, temporal_patch=pt)
    m = cfg.build()
    assert cfg.num_tokens == (4 // pt) * 16
    x = torch.randn(2, 1, 4, 8, 8)
    tok = m.patchify(x)
    assert tok.shape == (2, cfg.num_tokens, pt * 4)
    torch.testing.assert_close(m.unpatchify(tok), x, rtol=0, atol=0)
    v = m(x, torch.rand(2), torch.tensor([1, 10]))
    assert v.shape == x.shape and v.abs().max() == 0  # adaLN-Zero + zero final layer at init
    randomize(m)
    assert m(x, torch.rand(2)).abs().max() > 0


def test_tokens_are_time_major():
    cfg = VideoDiTConfig("VDiT-XS/2", input_size=4, frames=2, in_channels=1)
    m = cfg.build()
    x = torch.zeros(1, 1, 2, 4, 4)
    x[0, 0, 1, 2:, :2] = 1.0  # frame 1, patch row 1, col 0 -> token 1*4 + 1*2 + 0 = 6
    tok = m.patchify(x)
    assert tok[0].sum(1).nonzero().flatten().tolist() == [6]


def test_pos_embed_distinct():
    pe = sincos_pos_embed_3d(256, (3, 4, 4))
    assert pe.shape == (48, 256)
    assert torch.cdist(pe, pe).add(torch.eye(48) * 1e3).min() > 1e-3


def test_config_roundtrip_and_errors():
    cfg = VideoDiTConfig("VDiT-S/2", input_size=16, frames=8, in_channels=3, num_classes=5, temporal_patch=2)
    assert VideoDiTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        VideoDiTConfig("VDiT-XL/2", 16, 8, 1)
    with pytest.raises(ValueError, match="multiple of the spatial patch size 2"):
        VideoDiTConfig("VDiT-XS/2", 15, 8, 1)
    with pytest.raises(ValueError, match="frames 5 must be a multiple of temporal_patch 2"):
        VideoDiTConfig("VDiT-XS/2", 16, 5, 1, temporal_patch=2)
    with pytest.raises(ValueError, match="no field"):
        VideoDiTConfig.from_dict({**cfg.to_dict(), "depth": 3})
    m = VideoDiTConfig("VDiT-XS/2", 8, 2, 1).build()
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 2, 8, 8\]"):
        m(torch.zeros(1, 1, 3, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="num_classes=0"):
        m(torch.zeros(1, 1, 2, 8, 8), torch.rand(1), torch.tensor([0]))


def test_class_conditioning_and_cfg():
    m = randomize(VideoDiTConfig("VDiT-XS/2", 8, 2, 1, num_classes=3).build())
    x, t = torch.randn(2, 1, 2, 8, 8), torch.rand(2)
    y = torch.tensor([0, 2])
    assert not torch.allclose(m(x, t, y), m(x, t, None))
    torch.testing.assert_close(m.forward_with_cfg(x, t, y, guidance=1.0), m(x, t, y))
    g = m.forward_with_cfg(x, t, y, guidance=3.0)
    torch.testing.assert_close(g, m(x, t, None) + 3.0 * (m(x, t, y) - m(x, t, None)), atol=1e-5, rtol=1e-5)


def test_flow_loss_trains():
    torch.manual_seed(0)
    m = VideoDiTConfig("VDiT-XS/2", 8, 2, 1, num_classes=2).build()
    x0 = torch.rand(4, 1, 2, 8, 8) * 2 - 1
    y = torch.tensor([0, 1, 0, 1])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(15):
        loss = flow_loss(m, x0, y=y, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5])


def test_checkpoint_roundtrip(tmp_path):
    from atoll.models.checkpoint import from_pretrained, load_config, save_pretrained
    from atoll.store import open_store

    m = randomize(VideoDiTConfig("VDiT-XS/2", 8, 2, 1, num_classes=2).build())
    store = open_store(str(tmp_path))
    save_pretrained(m, store, "experts/000")
    assert load_config(store, "experts/000")["kind"] == "vdit"
    m2 = from_pretrained(store, "experts/000")
    x, t = torch.randn(1, 1, 2, 8, 8), torch.rand(1)
    torch.testing.assert_close(m2(x, t), m(x, t))
