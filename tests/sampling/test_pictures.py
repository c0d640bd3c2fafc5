"""Grid and trace pictures are valid PNGs of the expected size."""
from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from atoll.sampling import SamplingError, Trace, grid_png, to_uint8, trace_png


def test_grid_png_has_the_expected_size_and_pixels():
    imgs = torch.zeros(5, 1, 8, 8, dtype=torch.uint8)
    imgs[3] = 200
    img = Image.open(io.BytesIO(grid_png(imgs, nrow=2, pad=2)))
    assert img.format == "PNG" and img.size == (2 * 10 + 2, 3 * 10 + 2) and img.mode == "L"
    assert img.getpixel((2 + 10 + 1, 2 + 10 + 1)) == 200  # row 1, column 1 = image 3
    assert img.getpixel((2 + 10 + 1, 2 + 20 + 1)) == 255  # the empty 6th cell is padding
    rgb = Image.open(io.BytesIO(grid_png(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), nrow=4, pad=0, scale=3)))
    assert rgb.size == (96, 24) and rgb.mode == "RGB"


def test_grid_rejects_float_images():
    with pytest.raises(SamplingError, match="uint8"):
        grid_png(torch.zeros(2, 1, 8, 8), nrow=2)


def test_to_uint8_maps_minus_one_to_one_onto_0_255():
    assert to_uint8(torch.tensor([-2.0, -1.0, 0.0, 1.0]).view(4, 1, 1, 1)).flatten().tolist() == [0, 0, 128, 255]


def test_trace_png_is_a_valid_image():
    S, N, K = 6, 3, 4
    idx = torch.randint(0, K, (S, N, 1))
    trace = Trace(t=torch.linspace(1, 1 / S, S), probs=torch.full((S, N, K), 1 / K), indices=idx,
                  weights=torch.ones(S, N, 1))
    dense = trace.expert_weights()
    assert dense.shape == (S, N, K) and torch.equal(dense.sum(-1), torch.ones(S, N))
    data = trace_png(trace, torch.zeros(N, 1, 8, 8, dtype=torch.uint8), samples=2, labels=["a", "b"])
    img = Image.open(io.BytesIO(data))
    img.verify()
    assert img.format == "PNG" and img.size[0] == 800 and img.size[1] > 100
    assert trace.subset([2, 0]).indices[:, 0].tolist() == idx[:, 2].tolist()
