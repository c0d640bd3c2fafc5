"""The sequence-parallel (Ulysses, gloo on 127.0.0.1) VideoDiT forward equals the single-rank forward.

N=2 and N=4 spawned ranks, fp32, several sequence lengths including ones N does
not divide (padding) and one shorter than N; also the all-to-all volume against
the Ulysses formula, and the clear error when N does not divide the heads.
"""
import json

import pytest
import torch.multiprocessing as mp

from atoll.parallel.groups import free_port

from sp_workers import CASES, num_tokens, worker


@pytest.mark.parametrize("world", [2, 4])
def test_sequence_parallel_forward_matches_single_rank(world, tmp_path):
    assert any(num_tokens(c) % world for c in CASES)  # padding is exercised
    out = str(tmp_path / "result")
    mp.spawn(worker, args=(world, free_port(), out), nprocs=world, join=True)
    results = [json.load(open(f"{out}.{r}")) for r in range(world)]
    for res in results:
        assert [c["tokens"] for c in res["cases"]] == [num_tokens(c) for c in CASES]
        for c in res["cases"]:
            assert c["ref_scale"] > 0.1, c  # a non-trivial output
            assert c["max_abs_err"] <= 1e-5, c
            assert c["a2a_calls"] == 4 * c["depth"], c  # q, k, v, out per block
            assert c["sent_bytes"] == c["formula_bytes"], c
        if world == 2:
            assert res["sampler_max_abs_err"] <= 1e-5
        heads = 6 if world == 4 else 7
        assert res["heads_error"] is not None
        assert f"N={world}" in res["heads_error"] and f"num_heads={heads}" in res["heads_error"]


@pytest.mark.parametrize("world", [2, 4])
def test_ring_and_hybrid_attention_forward_and_backward_match_single_rank(world, tmp_path):
    """Ring (2 and 4 ranks), hybrid Ulysses x ring (2 x 2) and Ulysses (4): the VideoDiT forward on every
    clip shape (1 to 50 tokens, divisible by N or not, one shorter than N) to 1e-5, and its backward to 1e-5
    relative to the largest gradient."""
    from sp_workers import layouts_worker

    out = str(tmp_path / "layouts")
    mp.spawn(layouts_worker, args=(world, free_port(), out), nprocs=world, join=True)
    for r in range(world):
        res = json.load(open(f"{out}.{r}"))
        assert sorted(res) == (["hybrid", "ring", "ulysses"] if world == 4 else ["ring"])
        for attention, rows in res.items():
            assert [row["tokens"] for row in rows] == [num_tokens(c) for c in CASES]
            for row in rows:
                assert row["ref_scale"] > 0.1 and row["fwd_err"] <= 1e-5, (attention, row)
            backward = [row for row in rows if "bwd_err" in row]
            assert len(backward) == 2 and any(row["tokens"] % world for row in backward)
            for row in backward:  # fp32 rounding grows with the gradients (here up to ~30): relative bound
                assert row["bwd_scale"] > 0.1 and row["bwd_err"] <= 1e-5 * max(1.0, row["bwd_scale"]), (attention, row)
