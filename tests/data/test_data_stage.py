"""The data stage through Ray (session fixture ``ray_local``)."""
import os

import numpy as np
import pytest
from PIL import Image

from atoll.data import DataError, load_arrays, run_data

from atoll_data_helpers import grey_folder, job, make_folder, write_digits


def mtimes(run, prefix):
    return {k: os.stat(run.local_path(k)).st_mtime_ns for k in run.list(prefix)}


def test_run_data_writes_shards_and_resumes(ray_local, file_store):
    run = file_store.sub("r1")
    j = job("r1", data={"limit": 600})
    m = run_data(j, run)
    assert m["count"] == 600 and m["num_shards"] == 3 and [s["count"] for s in m["shards"]] == [256, 256, 88]
    assert m["image_shape"] == [1, 8, 8] and m["num_classes"] == 10 and m["captions"] == 600
    assert run.manifest("data")["spec_hash"] == m["spec_hash"]
    a = load_arrays(run, "data")
    assert a.images.shape == (600, 1, 8, 8) and len(set(a.keys)) == 600
    before = mtimes(run, "data")
    again = run_data(j, run)
    assert again == m and mtimes(run, "data") == before  # nothing rewritten
    with pytest.raises(DataError, match="--from data"):
        run_data(job("r1", data={"limit": 500}), run)


def test_run_data_on_s3(ray_local, s3_store):
    run = s3_store.sub("r2")
    m = run_data(job("r2", data={"limit": 300, "imageSize": 16}), run)
    assert m["count"] == 300 and m["image_shape"] == [1, 16, 16]
    a = load_arrays(run, "data")
    assert a.images.shape == (300, 1, 16, 16)


def test_interrupted_data_stage_leaves_no_manifest(ray_local, file_store, tmp_path):
    root = make_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=12, size=(8, 8))
    bad = root / "c" / "img5.png"
    bad.write_bytes(b"\x89PNG broken")
    run = file_store.sub("r3")
    j = job("r3", source={"type": "image-folder", "path": str(root)}, data={"shardSize": 16},
            partition={"k": 2, "fineClusters": 4})
    with pytest.raises(DataError) as e:
        run_data(j, run)
    assert str(bad) in str(e.value)
    assert run.manifest("data") is None  # shards may exist, the artifact is not committed
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad)  # fixed: the rerun completes
    m = run_data(j, run)
    assert m["count"] == 36 and m["class_names"] == ["a", "b", "c"] and m["image_shape"] == [3, 8, 8]


def test_image_folder_mixed_sizes_need_image_size(ray_local, file_store, tmp_path):
    root = make_folder(tmp_path / "imgs", classes=("a",), per_class=2, size=(8, 8))
    make_folder(tmp_path / "imgs", classes=("b",), per_class=2, size=(9, 9))
    j = job("r4", source={"type": "image-folder", "path": str(root)}, data={"shardSize": 16},
            partition={"k": 2, "fineClusters": 2})
    with pytest.raises(DataError, match="imageSize"):
        run_data(j, file_store.sub("r4"))


def test_image_folder_listed_by_ray_tasks_and_grey_stays_grey(ray_local, file_store, tmp_path):
    from atoll.data.sources.image_folder import ImageFolder

    root = grey_folder(tmp_path / "g", classes=("x", "y", "z"), per_class=7)
    run = file_store.sub("r5")
    j = job("r5", source={"type": "image-folder", "path": str(root)}, data={"shardSize": 16},
            partition={"k": 2, "fineClusters": 4})
    m = run_data(j, run)
    assert m["count"] == 21 and m["image_shape"] == [1, 6, 7] and m["num_shards"] == 2
    a = load_arrays(run, "data")
    ref = list(ImageFolder(str(root), "folders").read(0, 100))  # listed in-process: the same samples, same order
    assert a.keys == [r["key"] for r in ref] and a.labels.tolist() == [r["label"] for r in ref]
    assert np.array_equal(a.images[:, 0], np.stack([r["image"][:, :, 0] for r in ref]))
    assert not run.list("data/files")  # the listing was scratch


def test_webdataset_source_counts_shards_with_ray_tasks(ray_local, file_store):
    m = write_digits(file_store, prefix="src", n=300, shard=64)
    urls = [file_store.url(f"src/{s['name']}") for s in m["shards"]]
    run = file_store.sub("r6")
    got = run_data(job("r6", source={"type": "webdataset", "urls": urls}, data={"shardSize": 100},
                       partition={"k": 2, "fineClusters": 4}), run)
    assert got["count"] == 300 and got["num_shards"] == 3
    from atoll.data.sources.digits import Digits

    assert load_arrays(run, "data").keys == [s["key"] for s in Digits().read(0, 300)]


def test_unreadable_source_files_and_shards_skipped_and_counted(ray_local, file_store, tmp_path):
    root = make_folder(tmp_path / "imgs", classes=("a", "b"), per_class=10, size=(8, 8))
    bad = root / "b" / "img3.png"
    bad.write_bytes(b"\x89PNG broken")
    j = job("r7", source={"type": "image-folder", "path": str(root)}, data={"shardSize": 16, "onCorrupt": "skip"},
            partition={"k": 2, "fineClusters": 4})
    m = run_data(j, file_store.sub("r7"))
    assert m["count"] == 19 and m["skipped"] == {"count": 1, "sources": [str(bad)]}
    # WebDataset input: a shard that is not a tar is left out, the others converted
    good = write_digits(file_store, prefix="src", n=200, shard=100)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file" * 100)
    urls = [file_store.url(f"src/{s['name']}") for s in good["shards"]] + [str(junk)]
    wj = job("r8", source={"type": "webdataset", "urls": urls}, data={"shardSize": 64, "onCorrupt": "skip"},
             partition={"k": 2, "fineClusters": 4})
    w = run_data(wj, file_store.sub("r8"))
    assert w["count"] == 200 and w["skipped"] == {"count": 1, "sources": [str(junk)]}
    with pytest.raises(DataError, match="junk.tar"):
        run_data(job("r9", source={"type": "webdataset", "urls": urls}, partition={"k": 2, "fineClusters": 4}),
                 file_store.sub("r9"))
