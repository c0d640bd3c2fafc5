"""A served video expert's rank group with ring and hybrid (Ulysses x ring) attention: the rank actors
(Ray, gloo on 127.0.0.1) compute the single-rank velocity of the same batch, CFG included."""
from __future__ import annotations

import asyncio

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("attention, n, ring", [("ring", 2, None), ("hybrid", 4, 2)])
def test_a_rank_group_with_ring_attention_computes_the_single_rank_velocity(tmp_path, ray_local, attention, n, ring):
    from video_serve_helpers import CHANNELS, FRAMES, SIDE, save_video_run

    from atoll.models.checkpoint import from_pretrained
    from atoll.serve.expert_batch import ExpertBatch, batch_velocity
    from atoll.serve.rank_group import RankGroup
    from atoll.serve.runinfo import RunSource

    _, run = save_video_run(str(tmp_path), "clips", 1)
    g = torch.Generator().manual_seed(3)
    batch = ExpertBatch(torch.randn(2, CHANNELS, FRAMES, SIDE, SIDE, generator=g), torch.tensor([0.3, 0.8]),
                        torch.tensor([1, 4]), guidance=2.0)
    model = from_pretrained(run, "experts/000/model").eval()
    want = batch_velocity(model, batch, int(model.config.num_classes))
    group = RankGroup(RunSource(run.uri), "experts/000/model", n, attention=attention, ring_degree=ring,
                      num_cpus=0.2, label=f"layout-{attention}")
    try:
        info = group.info()
        assert info["attention"] == attention and info["ring_degree"] == (ring or n)
        assert [r["attention"] for r in info["ranks"]] == [attention] * n
        assert [r["sp_world_size"] for r in info["ranks"]] == [n] * n
        got = asyncio.run(group.velocity(batch))
    finally:
        group.shutdown()
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-5  # fp32: ring blocks change the summation order only
