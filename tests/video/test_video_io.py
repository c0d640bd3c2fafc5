"""GIF + frame-strip writers and the video sampler."""
import numpy as np
import torch

from atoll.models.video_dit import VideoDiTConfig
from atoll.sampling.video_io import frame_strip, gif_bytes, read_gif, sample_video, save_video, video_to_uint8


def _videos():
    v = np.zeros((2, 1, 3, 8, 8), dtype=np.uint8)
    for k in range(3):
        v[:, 0, k, 2 * k:2 * k + 2, 2 * k:2 * k + 2] = 255  # a moving square
    v[1] //= 2
    return v


def test_gif_roundtrip_and_strip(tmp_path):
    v = _videos()
    frames = read_gif(gif_bytes(v, scale=1))
    assert frames.shape == (3, 2 + 10, 2 + 2 * 10)  # one row of 2 clips, pad 2
    np.testing.assert_array_equal(frames[1, 2:10, 2:10], v[0, 0, 1])
    np.testing.assert_array_equal(frames[2, 2:10, 12:20], v[1, 0, 2])
    strip = frame_strip(v)
    assert strip.shape == (2 + 2 * 10, 2 + 3 * 10, 1)
    np.testing.assert_array_equal(strip[12:20, 22:30, 0], v[1, 0, 2])
    paths = save_video(v, tmp_path / "out" / "clip")
    assert paths["gif"].read_bytes()[:6] == b"GIF89a" and paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["mp4"].read_bytes()[4:8] == b"ftyp"


def test_video_to_uint8():
    x = torch.zeros(1, 1, 2, 4, 4)
    x[0, 0, 1] = 1.0
    u = video_to_uint8(x)
    assert u.shape == (1, 1, 2, 4, 4) and u.dtype == np.uint8
    assert u[0, 0, 0].max() == 128 and u[0, 0, 1].min() == 255


def test_sample_video_deterministic():
    torch.manual_seed(0)
    m = VideoDiTConfig("VDiT-XS/2", 4, 2, 1, num_classes=2).build().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    a = sample_video(m, 2, steps=3, y=torch.tensor([0, 1]), guidance=2.0, seed=5)
    b = sample_video(m, 2, steps=3, y=torch.tensor([0, 1]), guidance=2.0, seed=5)
    assert a.shape == (2, 1, 2, 4, 4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
