"""ParallelDims: degrees vs world size, head divisibility, group layout."""
import pytest

from atoll.parallel.dims import ParallelConfigError, ParallelDims


def test_valid_layouts():
    d = ParallelDims(world_size=4, sp=2)
    assert d.dp == 2 and d.sp_group_ranks() == [[0, 1], [2, 3]]
    assert (d.sp_rank(3), d.dp_rank(3)) == (1, 1)
    assert ParallelDims(4, sp=4).dp == 1 and ParallelDims(1).sp == 1
    ParallelDims(4, sp=4).check_heads(8)


def test_errors_say_what_is_wrong():
    with pytest.raises(ParallelConfigError, match=r"sp=3 does not divide the world size 4.*\[1, 2, 4\]"):
        ParallelDims(world_size=4, sp=3)
    with pytest.raises(ParallelConfigError, match=r"dp=3 x sp=2 = 6 ranks, but the world size is 4"):
        ParallelDims(world_size=4, sp=2, dp=3)
    with pytest.raises(ParallelConfigError, match="sp must be an integer >= 1"):
        ParallelDims(world_size=4, sp=0)
    with pytest.raises(ParallelConfigError, match=r"N=4 must divide num_heads=6.*\[1, 2, 3, 6\]"):
        ParallelDims(4, sp=4).check_heads(6)
    with pytest.raises(ParallelConfigError, match=r"rank 5 is outside the world \[0, 4\)"):
        ParallelDims(4, sp=2).sp_rank(5)


def test_ring_and_hybrid_layouts():
    d = ParallelDims.for_layout(8, sp=4, attention="hybrid", ring_degree=2)
    assert (d.dp, d.ulysses, d.ring, d.attention) == (2, 2, 2, "hybrid")
    assert d.ulysses_group_ranks() == [[0, 1], [2, 3], [4, 5], [6, 7]]  # neighbours: all-to-all stays close
    assert d.ring_group_ranks() == [[0, 2], [1, 3], [4, 6], [5, 7]]  # same heads, successive token blocks
    d.check_heads(6)  # only the Ulysses degree (2) must divide the heads
    ring = ParallelDims.for_layout(4, sp=4, attention="ring")
    assert (ring.ulysses, ring.ring, ring.attention) == (1, 4, "ring")
    ring.check_heads(7)  # ring attention: any head count
    assert ParallelDims.for_layout(4, sp=2).attention == "ulysses"


def test_layout_errors_say_what_is_wrong():
    with pytest.raises(ParallelConfigError, match=r"hybrid attention needs 1 < ring degree < sp=4.*\[2\]"):
        ParallelDims.for_layout(4, sp=4, attention="hybrid")
    with pytest.raises(ParallelConfigError, match=r"attention 'tree' is unknown; use one of ulysses, ring, hybrid"):
        ParallelDims.for_layout(4, sp=4, attention="tree")
    with pytest.raises(ParallelConfigError, match=r"ring degree 3 does not divide .* sp=4"):
        ParallelDims(4, sp=4, ring=3)
    with pytest.raises(ParallelConfigError, match=r"N=4 must divide num_heads=6.*ring attention has no such limit"):
        ParallelDims.for_layout(8, sp=8, attention="hybrid", ring_degree=2).check_heads(6)


def test_ring_score_chunks_bound_memory_but_keep_whole_rows():
    import torch

    from atoll.parallel import ring

    def steps(b, h, rows, keys):
        chunks = ring._row_chunks(torch.empty(b, h, rows, 8), keys)
        assert chunks[0].start == 0 and chunks[-1].stop == rows  # every query row exactly once
        assert all(a.stop == z.start for a, z in zip(chunks, chunks[1:]))
        return chunks[0].stop - chunks[0].start

    # short keys: as many rows as fit CHUNK_ELEMENTS score elements
    assert steps(1, 4, 2048, 512) * 4 * 512 <= ring.CHUNK_ELEMENTS
    assert steps(1, 4, 2048, 512) == ring.CHUNK_ELEMENTS // (4 * 512)
    # long keys, many heads: never fewer than MIN_CHUNK_ROWS rows (no one-row matmuls)
    assert steps(8, 16, 4096, 32768) == ring.MIN_CHUNK_ROWS
    assert steps(1, 1, 10, 4) == 10  # a small block is one chunk
