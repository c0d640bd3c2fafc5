import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from atoll.data.errors import DataError
from atoll.data.sources import caption_from_class, open_source
from atoll.data.sources.fashion_mnist import FILES, FashionMnist
from atoll.data.sources.image_folder import ImageFolder

from atoll_data_helpers import grey_folder, job, make_folder

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_fashion_mnist_counts_and_shapes():
    assert FashionMnist(str(FMNIST), "test").count() == 10000
    src = FashionMnist(str(FMNIST), "all")
    images, labels, keys = src.arrays()
    assert images.shape == (70000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [7000] * 10
    assert keys[0] == "fmnist-train-00000" and keys[60000] == "fmnist-test-00000"
    s = list(src.read(59999, 60001))
    assert [x["key"] for x in s] == ["fmnist-train-59999", "fmnist-test-00000"]
    assert s[0]["image"].shape == (28, 28, 1) and s[0]["image"].dtype == np.uint8
    assert s[0]["caption"] == caption_from_class(src.class_names[s[0]["label"]])
    assert len(src.class_names) == 10


def test_fashion_mnist_resize():
    s = next(FashionMnist(str(FMNIST), "test", image_size=32).read(0, 1))
    assert s["image"].shape == (32, 32, 1)


@pytest.mark.parametrize("damage", ["truncate", "missing", "not-gzip"])
def test_fashion_mnist_bad_file_names_it(tmp_path, damage):
    for f in FILES["test"]:
        shutil.copy(FMNIST / f, tmp_path / f)
    bad = tmp_path / FILES["test"][0]
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif damage == "missing":
        bad.unlink()
    else:
        bad.write_bytes(b"hello")
    with pytest.raises(DataError) as e:
        FashionMnist(str(tmp_path), "test").count()
    assert str(bad) in str(e.value) and "dataset-fashion-mnist" in str(e.value)


def test_fashion_mnist_short_payload(tmp_path):
    """A valid gzip whose idx payload is shorter than its header says."""
    for f in FILES["test"]:
        shutil.copy(FMNIST / f, tmp_path / f)
    lbl = tmp_path / FILES["test"][1]
    raw = gzip.decompress(lbl.read_bytes())
    lbl.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(DataError, match="truncated or padded"):
        FashionMnist(str(tmp_path), "test").count()


def test_digits():
    src = open_source(job().spec.data)
    assert src.count() == 1797
    s = list(src.read(0, 3))
    assert s[0]["image"].shape == (8, 8, 1) and s[0]["image"].dtype == np.uint8
    from atoll.data.sources.digits import digits_arrays

    images, _ = digits_arrays()
    assert images.max() == 255 and images.min() == 0 and images.dtype == np.uint8  # 0..16 -> 0..255
    assert [x["label"] for x in s] == [0, 1, 2]
    assert s[1]["caption"] == "a handwritten digit one"


def test_image_folder_classes(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=("zebra", "ant"), per_class=2)
    src = ImageFolder(str(root), "folders")
    assert src.class_names == ["ant", "zebra"]
    s = list(src.read(0, 10))
    assert [x["label"] for x in s] == [0, 0, 1, 1]
    assert s[0]["image"].shape == (10, 12, 3)
    assert s[0]["caption"] == "a photo of an ant"
    assert len({x["key"] for x in s}) == 4 and all("." not in x["key"] for x in s)
    assert next(ImageFolder(str(root), "folders", image_size=16).read(0, 1))["image"].shape == (16, 16, 3)


def test_image_folder_captions(tmp_path):
    from PIL import Image

    root = tmp_path / "cap"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "sub" / "b.jpg")
    (root / "a.txt").write_text("a black square\n")
    s = list(ImageFolder(str(root), "captions").read(0, 10))
    assert [x["caption"] for x in s] == ["a black square", None]
    assert [x["label"] for x in s] == [-1, -1]
    assert s[0]["image"].shape == (8, 8, 3)


def test_image_folder_corrupt_image_names_file(tmp_path):
    root = make_folder(tmp_path / "imgs")
    bad = root / "dog" / "img1.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError) as e:
        list(ImageFolder(str(root), "folders").read(0, 100))
    assert str(bad) in str(e.value)


def test_image_folder_skips_unreadable_files_when_asked(tmp_path):
    root = make_folder(tmp_path / "imgs")
    bad = root / "dog" / "img1.png"
    bad.write_bytes(b"not a png at all")
    src = open_source(job(source={"type": "image-folder", "path": str(root)}, data={"onCorrupt": "skip"},
                          partition={"k": 2, "fineClusters": 2}).spec.data)
    got = list(src.read(0, 100))
    assert len(got) == 5 and src.skipped == [str(bad)]
    assert all("dog_img1" not in x["key"] for x in got)


def test_image_folder_without_classes(tmp_path):
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolder(str(tmp_path / "flat"), "folders")


def test_moving_clips_source_opens():
    spec = job(source={"type": "moving-clips", "numClips": 3, "frames": 4, "size": 32},
               partition={"k": 2, "fineClusters": 3}).spec.data
    src = open_source(spec)
    assert src.count() == 3
    first = next(iter(src.read(0, 1)))
    assert first["image"].shape[0] == 4 * first["image"].shape[1]  # frames stacked vertically


def test_image_folder_channels(tmp_path):
    grey = grey_folder(tmp_path / "grey")
    s = list(ImageFolder(str(grey), "folders").read(0, 10))  # auto: every file is grey -> one channel
    assert len(s) == 6 and all(x["image"].shape == (6, 7, 1) for x in s)
    rgb = list(ImageFolder(str(grey), "folders", channels=3).read(0, 10))
    assert rgb[0]["image"].shape == (6, 7, 3) and np.array_equal(rgb[0]["image"][:, :, 1], s[0]["image"][:, :, 0])
    mixed = grey_folder(tmp_path / "mixed", colour=1)  # one colour file: auto -> RGB for all
    assert {x["image"].shape for x in ImageFolder(str(mixed), "folders").read(0, 10)} == {(6, 7, 3)}
    one = list(ImageFolder(str(mixed), "folders", channels=1).read(0, 10))
    assert {x["image"].shape for x in one} == {(6, 7, 1)}
    assert job(source={"type": "image-folder", "path": str(grey), "channels": 1},
               partition={"k": 2, "fineClusters": 2}).spec.data.source.channels == 1
