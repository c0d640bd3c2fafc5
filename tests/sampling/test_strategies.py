"""Strategy maths: which experts a row selects and with what weights."""
from __future__ import annotations

import pytest
import torch

from atoll.sampling import SamplingError, num_selected, select

PROBS = torch.tensor([[0.1, 0.5, 0.3, 0.1],
                      [0.7, 0.05, 0.05, 0.2]])


def test_full_keeps_every_expert_with_router_weights():
    idx, w = select(PROBS, "full")
    assert idx.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert torch.equal(w, PROBS)


def test_top2_picks_the_two_largest_and_renormalises():
    idx, w = select(PROBS, "top2")
    assert idx.tolist() == [[1, 2], [0, 3]]
    assert torch.allclose(w, torch.tensor([[0.5 / 0.8, 0.3 / 0.8], [0.7 / 0.9, 0.2 / 0.9]]))
    assert torch.allclose(w.sum(1), torch.ones(2))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_topk_has_k_nonzero_weights_summing_to_one(k):
    probs = torch.softmax(torch.randn(16, 5, generator=torch.Generator().manual_seed(k)), dim=1)
    idx, w = select(probs, f"top{k}")
    assert idx.shape == w.shape == (16, k)
    assert torch.allclose(w.sum(1), torch.ones(16))
    assert (w > 0).all()
    assert torch.equal(idx, probs.topk(k, dim=1).indices)
    dense = torch.zeros_like(probs).scatter_(1, idx, w)
    assert ((dense > 0).sum(1) == k).all()


def test_top1_is_argmax_with_weight_one():
    idx, w = select(PROBS, "top1")
    assert idx.tolist() == [[1], [0]]
    assert w.tolist() == [[1.0], [1.0]]


def test_one_expert_collapses_every_strategy():
    probs = torch.ones(3, 1)
    for s in ("full", "top1", "top4"):
        idx, w = select(probs, s)
        assert idx.tolist() == [[0]] * 3 and w.tolist() == [[1.0]] * 3
    assert num_selected("full", 1) == 1


@pytest.mark.parametrize("bad", ["top0", "topk", "all", "top-1", "Top1", ""])
def test_unknown_strategy_is_a_clear_error(bad):
    with pytest.raises(SamplingError, match="use full, top1"):
        select(PROBS, bad)


def test_topk_larger_than_k_is_a_clear_error():
    with pytest.raises(SamplingError, match="needs at least 5 experts, but this run has 4"):
        num_selected("top5", 4)
