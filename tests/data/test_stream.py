"""Training reads: the schedule, streaming vs in-memory loaders, exact resume, corrupt shards, S3."""
import numpy as np
import pytest

from atoll.data import CorruptShard, DataError
from atoll.data.collection import Collection
from atoll.data.loader import MemoryData, open_loader
from atoll.data.schedule import Schedule, fill_invalid
from atoll.data.sources.digits import Digits

from atoll_data_helpers import write_digits


def same(a, b):
    return np.array_equal(a.x, b.x) and np.array_equal(a.label, b.label) and np.array_equal(a.artifact, b.artifact)


@pytest.mark.parametrize("n,world,chunk,window", [(1797, 1, 64, 4096), (1797, 3, 16, 128), (100, 4, 64, 64),
                                                  (5, 2, 2, 4)])
def test_schedule_covers_each_epoch_and_is_a_pure_function(n, world, chunk, window):
    seen = []
    for r in range(world):
        s = Schedule(n, 7, r, world, chunk, window)
        L = s.epoch_length
        assert len(set(s.ids(0, L).tolist())) == L  # no sample twice in one rank's epoch
        seen += s.ids(0, L).tolist()
        again = Schedule(n, 7, r, world, chunk, window)  # a fresh process computes the same positions
        assert np.array_equal(s.ids(3 * L - 5, 3 * L + 40), again.ids(3 * L - 5, 3 * L + 40))
        pieces = np.concatenate([s.ids(a, a + 7) for a in range(0, 2 * L, 7)])[:2 * L]
        assert np.array_equal(pieces, s.ids(0, 2 * L))
        assert not np.array_equal(s.ids(0, L), s.ids(L, 2 * L)) or L < 3  # each epoch is reshuffled
    assert set(seen) == set(range(n))  # the ranks' epochs cover every sample
    assert not np.array_equal(Schedule(n, 7, 0, world, chunk, window).ids(0, 50),
                              Schedule(n, 8, 0, world, chunk, window).ids(0, 50))


def test_fill_invalid_takes_the_next_readable_sample():
    assert fill_invalid(np.array([True, False, False, True, False])).tolist() == [0, 3, 3, 3, 0]
    with pytest.raises(ValueError):
        fill_invalid(np.zeros(3, bool))


@pytest.mark.parametrize("world", [1, 2])
def test_stream_and_memory_give_the_same_batches(file_store, world):
    write_digits(file_store, n=700, shard=128)
    col = Collection(file_store, ["art"])
    data = MemoryData(col)
    for r in range(world):
        sch = Schedule(col.n, 3, r, world, chunk=16, window=128)
        mem = open_loader(col, sch, "memory", memory=data)
        stream = open_loader(col, sch, "stream", prefetch=2, threads=2)
        for a, b in [(0, 32), (32, 64), (120, 200), (1500, 1532), (40, 72)]:  # forwards, a jump, back
            assert same(mem.batch(a, b), stream.batch(a, b)), (r, a, b)
        stream.close()
    # the samples are the stored ones: keys/labels line up with the source
    ref = {s["key"]: s for s in Digits().read(0, 700)}
    part = open_loader(col, Schedule(col.n, 3), "stream").batch(0, 700)
    assert sorted(part.label.tolist()) == sorted(s["label"] for s in ref.values())


def test_a_resumed_stream_starts_where_the_uninterrupted_one_is(file_store):
    """Exact resume: a new loader at position p yields what a loader that streamed 0..p yields next."""
    write_digits(file_store, n=700, shard=100)
    col = Collection(file_store, ["art"])
    sch = Schedule(col.n, 11, 0, 1, chunk=32, window=256)
    through = open_loader(col, sch, "stream")
    batches = [through.batch(a, a + 48) for a in range(0, 48 * 30, 48)]
    fresh = open_loader(Collection(file_store, ["art"]), Schedule(col.n, 11, 0, 1, chunk=32, window=256), "stream")
    for i in (17, 18, 29):
        assert same(fresh.batch(48 * i, 48 * (i + 1)), batches[i])


def test_artifacts_without_a_shard_index_still_stream(file_store):
    write_digits(file_store, prefix="old", n=300, shard=128, index=False)
    write_digits(file_store, prefix="new", n=300, shard=128)
    a = open_loader(Collection(file_store, ["old"]), Schedule(300, 1, chunk=16, window=64), "stream").batch(0, 300)
    b = open_loader(Collection(file_store, ["new"]), Schedule(300, 1, chunk=16, window=64), "stream").batch(0, 300)
    assert same(a, b)


def _flip(store, key, at):
    data = bytearray(store.get_bytes(key))
    data[at] ^= 0xFF
    store.put_bytes(key, bytes(data))


def test_corrupt_shard_mid_stream_errors_naming_it(any_store):
    m = write_digits(any_store, n=600, shard=100)
    bad = f"art/{m['shards'][3]['name']}"
    _flip(any_store, bad, 5000)
    col = Collection(any_store, ["art"])
    ld = open_loader(col, Schedule(col.n, 0, chunk=16, window=64), "stream")
    with pytest.raises(CorruptShard) as e:
        for a in range(0, 600, 32):
            ld.batch(a, a + 32)
    assert any_store.url(bad) in str(e.value) and "onCorrupt: skip" in str(e.value)
    with pytest.raises(CorruptShard, match=m["shards"][3]["name"]):
        MemoryData(Collection(any_store, ["art"]))


def test_corrupt_shards_skipped_and_counted_the_same_way_streamed_or_in_memory(file_store):
    m = write_digits(file_store, n=600, shard=100)
    _flip(file_store, f"art/{m['shards'][1]['name']}", 3000)          # one bad sample
    file_store.delete(f"art/{m['shards'][4]['name']}")                 # a whole shard gone
    cols = [Collection(file_store, ["art"], on_corrupt="skip") for _ in range(2)]
    sch = Schedule(600, 0, chunk=16, window=64)
    stream, mem = open_loader(cols[0], sch, "stream"), open_loader(cols[1], sch, "memory")
    for a in range(0, 1200, 50):
        s, t = stream.batch(a, a + 50), mem.batch(a, a + 50)
        assert same(s, t) and len(s.x) == 50
    for c in cols:
        assert sorted(c.stats["corrupt_shards"]) == sorted(file_store.url(f"art/{m['shards'][i]['name']}")
                                                           for i in (1, 4))
        assert c.stats["skipped_samples"] == 101
    labels = set(open_loader(cols[0], sch, "stream").batch(0, 600).label.tolist())
    assert labels  # the batches are made of the readable samples only
    assert stream.stats()["skipped_samples"] == 101 and stream.stats()["corrupt_shards"] == 2


def test_a_window_with_nothing_readable_is_an_error(file_store):
    m = write_digits(file_store, n=64, shard=64)
    file_store.delete(f"art/{m['shards'][0]['name']}")
    col = Collection(file_store, ["art"], on_corrupt="skip")
    with pytest.raises(DataError, match="unreadable"):
        open_loader(col, Schedule(64, 0, chunk=16, window=64), "stream").batch(0, 8)


def test_collection_of_several_artifacts_labels_each_with_its_artifact(any_store):
    write_digits(any_store, prefix="p0", n=300, shard=128)
    write_digits(any_store, prefix="p1", n=100, shard=128, start=300)
    col = Collection(any_store, ["p0", "p1"])
    part = open_loader(col, Schedule(col.n, 2, chunk=16, window=64), "stream", threads=3).batch(0, 400)
    assert np.bincount(part.artifact).tolist() == [300, 100]
    first = part.artifact[:64]
    assert 0 < first.mean() < 1  # a window mixes the artifacts


def test_stream_reads_stay_bounded(file_store):
    """A streamed epoch reads each sample once (no read amplification), in ranged reads of chunks."""
    write_digits(file_store, n=640, shard=128)
    col = Collection(file_store, ["art"])
    ld = open_loader(col, Schedule(640, 0, chunk=32, window=128), "stream", prefetch=0)
    ld.batch(0, 640)
    total = sum(e["size"] for e in file_store.manifest("art")["shards"])
    assert col.stats["bytes_read"] <= total and col.stats["reads"] == 640 // 32
