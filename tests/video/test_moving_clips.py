"""Moving clips source: shape/layout, determinism, bounce stays in frame, readers, open_source."""
import numpy as np
import pytest

from atoll.data.errors import DataError
from atoll.data.sources.moving_clips import (MovingClips, bounce_track, clip_frames, clips_tensor,
                                             frames_of)

FMNIST = "/usr/share/datasets/fashion-mnist"


def test_shape_layout_label_caption():
    src = MovingClips("fashion-mnist", FMNIST, num_clips=5, frames=6, size=32, objects=2, seed=3)
    assert src.count() == 5
    s = list(src.read(0, 5))
    assert [x["key"] for x in s] == [f"mclip-f6-{i:06d}" for i in range(5)]
    img = s[0]["image"]
    assert img.shape == (6 * 32, 32, 1) and img.dtype == np.uint8
    assert frames_of(img.shape[:2]) == 6
    video, labels = src.clip(0)
    assert s[0]["label"] == labels[0] and len(labels) == 2
    names = [src.class_names[lb] for lb in labels]
    assert s[0]["caption"].startswith("a video of") and all(n in s[0]["caption"] for n in names)
    fr = clip_frames(img)
    assert fr.shape == (6, 1, 32, 32)
    np.testing.assert_array_equal(fr[:, 0], video)
    stack = np.stack([x["image"].transpose(2, 0, 1) for x in s])  # like Arrays.images [N, C, T*H, W]
    ct = clips_tensor(stack)
    assert ct.shape == (5, 1, 6, 32, 32)
    np.testing.assert_array_equal(ct[0, 0], video)
    assert video.max() > 100  # real garments, not blank frames


def test_deterministic_and_range_independent():
    a = MovingClips("fashion-mnist", FMNIST, num_clips=10, frames=4, size=24, seed=1)
    b = MovingClips("fashion-mnist", FMNIST, num_clips=10, frames=4, size=24, seed=1)
    c = MovingClips("fashion-mnist", FMNIST, num_clips=10, frames=4, size=24, seed=2)
    full = list(a.read(0, 10))
    np.testing.assert_array_equal(full[7]["image"], list(b.read(7, 8))[0]["image"])
    assert not np.array_equal(full[0]["image"], list(c.read(0, 1))[0]["image"])
    assert not np.array_equal(full[0]["image"][:24], full[0]["image"][24:48])  # it moves


def test_bounce_stays_in_frame():
    for vel in (-7.3, -1.0, 2.5, 11.0, 30.0):
        tr = bounce_track(3.0, vel, 16, 50)
        assert tr.min() >= 0 and tr.max() <= 16
    tr = bounce_track(15.0, 2.0, 16, 4)  # hits the wall and comes back
    assert tr.tolist() == [15, 15, 13, 11]
    # the object mass is conserved in every frame: nothing is clipped at the borders
    src = MovingClips("digits", "", num_clips=3, frames=20, size=16, objects=1, seed=0)
    for i in range(3):
        video, _ = src.clip(i)
        sums = video.reshape(20, -1).sum(1)
        assert (sums == sums[0]).all()


def test_errors():
    with pytest.raises(DataError, match="height 10 is not a multiple of width 4"):
        frames_of((10, 4))
    with pytest.raises(DataError, match="unknown"):
        MovingClips("cifar", FMNIST)


def test_open_source():
    from atoll.data.sources import open_source
    from atoll.spec.models import DataSpec

    spec = DataSpec.model_validate({"source": {"type": "moving-clips", "num_clips": 3, "frames": 4,
                                               "size": 16, "images": "digits"}})
    src = open_source(spec)
    assert isinstance(src, MovingClips) and src.count() == 3
    assert list(src.read(0, 1))[0]["image"].shape == (64, 16, 1)
    bad = DataSpec.model_validate({"source": {"type": "moving-clips", "size": 16}, "image_size": 32})
    with pytest.raises(DataError, match="data.source.size"):
        open_source(bad)
