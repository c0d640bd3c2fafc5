import hashlib
import io
import tarfile

import numpy as np
import pytest

from atoll.data import CorruptShard, iter_samples, load_arrays
from atoll.data.sources.digits import Digits
from atoll.data.sources.webdataset_source import WebDatasetShards

from atoll_data_helpers import write_digits


def test_round_trip_with_manifest_and_hashes(any_store):
    m = write_digits(any_store)
    assert m["count"] == 300 and [s["name"] for s in m["shards"]] == [
        "shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    assert [s["count"] for s in m["shards"]] == [128, 128, 44]
    assert any_store.manifest("art")["count"] == 300
    for s in m["shards"]:
        data = any_store.get_bytes(f"art/{s['name']}")
        assert len(data) == s["size"] and hashlib.sha256(data).hexdigest() == s["sha256"]
        names = tarfile.open(fileobj=io.BytesIO(data)).getnames()  # a standard tar
        assert names[:3] == [f"{names[0].split('.')[0]}.{e}" for e in ("cls", "png", "txt")]
    a = load_arrays(any_store, "art")
    ref = list(Digits().read(0, 300))
    assert a.images.shape == (300, 1, 8, 8) and a.images.dtype == np.uint8
    assert np.array_equal(a.images[:, 0], np.stack([r["image"][:, :, 0] for r in ref]))  # lossless
    assert a.labels.dtype == np.int64 and a.labels.tolist() == [r["label"] for r in ref]
    assert a.captions[5] == ref[5]["caption"] and a.keys[7] == ref[7]["key"]
    assert a.class_names == [str(i) for i in range(10)]


def test_iter_samples_ranks_and_shuffle(file_store):
    write_digits(file_store, n=300, shard=64)  # 5 shards
    plain = [s["key"] for s in iter_samples(file_store, "art")]
    assert len(plain) == 300 and plain == sorted(plain)
    parts = [[s["key"] for s in iter_samples(file_store, "art", rank=r, world_size=2)] for r in range(2)]
    assert sorted(parts[0] + parts[1]) == plain and not set(parts[0]) & set(parts[1])
    many = [[s["key"] for s in iter_samples(file_store, "art", rank=r, world_size=7)] for r in range(7)]
    assert sorted(sum(many, [])) == plain  # fewer shards than ranks: split by sample
    a = [s["key"] for s in iter_samples(file_store, "art", shuffle_seed=3)]
    b = [s["key"] for s in iter_samples(file_store, "art", shuffle_seed=3)]
    assert a == b and a != plain and sorted(a) == plain
    with pytest.raises(ValueError):
        next(iter_samples(file_store, "art", rank=2, world_size=2))


def test_corrupt_shard_detected(any_store):
    m = write_digits(any_store)
    key = f"art/{m['shards'][1]['name']}"
    data = bytearray(any_store.get_bytes(key))
    data[3000] ^= 0xFF
    any_store.put_bytes(key, bytes(data))
    with pytest.raises(CorruptShard) as e:
        load_arrays(any_store, "art")
    assert any_store.url(key) in str(e.value)


def test_truncated_shard_without_hash_check(file_store):
    m = write_digits(file_store)
    key = f"art/{m['shards'][0]['name']}"
    file_store.put_bytes(key, file_store.get_bytes(key)[:5000])
    with pytest.raises(CorruptShard, match="truncated"):
        load_arrays(file_store, "art", verify=False)


def test_uncommitted_artifact_is_refused(file_store):
    from atoll.data import DataError

    with pytest.raises(DataError, match="no committed manifest"):
        load_arrays(file_store, "nothing-here")


def test_webdataset_source_rereads_shards(any_store):
    m = write_digits(any_store, n=200, shard=128)
    urls = [any_store.url(f"art/{s['name']}") for s in m["shards"]]
    s3 = getattr(any_store, "config", None)
    src = WebDatasetShards(urls, s3=s3)
    assert src.count() == 200
    got = list(src.read(120, 140))
    ref = list(Digits().read(120, 140))
    assert [g["key"] for g in got] == [r["key"] for r in ref]
    assert all(np.array_equal(g["image"], r["image"]) for g, r in zip(got, ref))
    assert [g["label"] for g in got] == [r["label"] for r in ref]
    assert got[0]["caption"] == ref[0]["caption"]


def test_load_arrays_limit_reads_only_the_first_samples(file_store):
    m = write_digits(file_store, n=300, shard=128)
    file_store.delete(f"art/{m['shards'][2]['name']}")  # never opened for the first 200
    a = load_arrays(file_store, "art", limit=200)
    assert len(a) == 200 and a.keys == [s["key"] for s in Digits().read(0, 200)]
