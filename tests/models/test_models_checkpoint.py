"""Checkpoints: round trip through the file and S3 stores, EMA vs raw, missing and corrupt ones."""
from __future__ import annotations

import pytest
import torch
from tiny_runs import perturbed

from atoll.models.checkpoint import from_pretrained, load_config, save_pretrained
from atoll.models.dit import DiT, DiTConfig
from atoll.models.ema import EMA
from atoll.models.router import Router, RouterConfig
from atoll.store import StoreError


def _perturbed(model):
    return perturbed(model, 0, 0.05)


def test_dit_round_trip_with_ema(any_store):
    model = _perturbed(DiTConfig("DiT-XXS/4", 28, 1, num_classes=10, text_dim=8, text_mode="cross").build())
    ema = EMA(model, 0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    ema.update(model)
    m = save_pretrained(model, any_store, "experts/000", ema=ema, extra={"cluster": 0, "step": 10})
    assert {f["name"] for f in m["files"]} == {"config.json", "model.safetensors", "raw.safetensors"}
    assert any_store.manifest("experts/000")["kind"] == "dit"

    loaded = from_pretrained(any_store, "experts/000")
    assert isinstance(loaded, DiT) and not loaded.training and loaded.config == model.config
    for k, v in ema.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    raw = from_pretrained(any_store.url("experts/000"), s3=getattr(any_store, "config", None), weights="raw")
    for k, v in model.state_dict().items():
        assert torch.equal(raw.state_dict()[k], v), k
    x, t, y = torch.randn(2, 1, 28, 28), torch.rand(2), torch.tensor([1, 10])
    with torch.no_grad():
        torch.testing.assert_close(raw(x, t, y), model.eval()(x, t, y))
    assert load_config(any_store, "experts/000")["cluster"] == 0


def test_router_round_trip_without_ema(any_store):
    router = _perturbed(RouterConfig("Router-XS", 28, 1, 3).build())
    save_pretrained(router, any_store, "router")
    loaded = from_pretrained(any_store.sub("router"))
    assert isinstance(loaded, Router)
    x, t = torch.randn(2, 1, 28, 28), torch.rand(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), router.eval()(x, t))
    with pytest.raises(FileNotFoundError, match="raw.safetensors"):
        from_pretrained(any_store, "router", weights="raw")


def test_file_uri(file_store):
    model = DiTConfig("DiT-XXS/4", 28, 1).build()
    save_pretrained(model, file_store, "runs/q/experts/001")
    uri = file_store.url("runs/q/experts/001")
    assert uri.startswith("file:///")
    assert isinstance(from_pretrained(uri), DiT)


def test_missing_checkpoint_is_a_clear_error(any_store):
    with pytest.raises(FileNotFoundError) as e:
        from_pretrained(any_store, "experts/007")
    msg = str(e.value)
    assert any_store.url("experts/007") in msg and "train the expert" in msg and "run URI" in msg
    # a half-written save (files, no manifest) is not a checkpoint either
    any_store.put_bytes("experts/008/model.safetensors", b"partial")
    with pytest.raises(FileNotFoundError):
        from_pretrained(any_store, "experts/008")


def test_corrupt_weights_are_detected(file_store):
    save_pretrained(DiTConfig("DiT-XXS/4", 28, 1).build(), file_store, "e")
    file_store.put_bytes("e/model.safetensors", b"garbage")
    with pytest.raises(StoreError, match="hash"):
        from_pretrained(file_store, "e")


def test_extra_cannot_override_config(file_store):
    with pytest.raises(ValueError, match="extra"):
        save_pretrained(DiTConfig("DiT-XXS/4", 28, 1).build(), file_store, "e", extra={"kind": "x"})
