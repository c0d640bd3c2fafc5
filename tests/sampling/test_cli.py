"""``atoll sample`` on a tiny saved run; bad input exits non-zero with a message."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from atoll.cli import app


def _run(*args):
    return CliRunner().invoke(app, ["sample", *map(str, args)])


def test_sample_writes_grid_and_trace(saved_runs, tmp_path):
    run = Path(saved_runs["root"]) / "ens"
    out, trace = tmp_path / "grid.png", tmp_path / "trace.png"
    r = _run(run, "--strategy", "top1", "--class", "3", "-n", "4", "--steps", "2", "--guidance", "1.5",
             "--seed", "0", "-o", out, "--trace", trace)
    assert r.exit_code == 0, r.output
    grid = Image.open(io.BytesIO(out.read_bytes()))
    assert grid.size == ((2 * 10 + 2) * 8, (2 * 10 + 2) * 8)  # 4 images -> 2 x 2, 8x8 upscaled x8
    Image.open(io.BytesIO(trace.read_bytes())).verify()


def test_class_by_name_and_monolith(saved_runs, tmp_path):
    out = tmp_path / "g.png"
    r = _run(Path(saved_runs["root"]) / "mono", "--strategy", "full", "--class", "c3", "-n", "2", "--steps", "1",
             "-o", out)
    assert r.exit_code == 0, r.output
    assert out.exists()


def test_bad_strategy_exits_with_a_message(saved_runs, tmp_path):
    r = _run(Path(saved_runs["root"]) / "ens", "--strategy", "best", "-o", tmp_path / "g.png")
    assert r.exit_code != 0
    assert "strategy 'best' is unknown; use full, top1" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "g.png").exists()


def test_bad_class_and_bad_run_exit_with_a_message(saved_runs, tmp_path):
    r = _run(Path(saved_runs["root"]) / "ens", "--class", "42", "-o", tmp_path / "g.png")
    assert r.exit_code == 1 and "class 42 is out of range" in r.output
    r = _run(tmp_path / "nowhere", "-o", tmp_path / "g.png")
    assert r.exit_code == 1 and "no Atoll run at" in r.output and "nowhere" in r.output


def test_out_dir_and_npz_hold_every_image_at_its_own_resolution_with_labels(saved_runs, tmp_path, monkeypatch):
    import csv

    import numpy as np

    import atoll.sampling.cli as sampling_cli
    from atoll.sampling import Ensemble

    monkeypatch.setattr(sampling_cli, "CHUNK", 2)   # 5 images in 3 chunks: chunking must change no image
    run = Path(saved_runs["root"]) / "ens"
    folder, npz = tmp_path / "imgs", tmp_path / "s.npz"
    r = _run(run, "--strategy", "top1", "-n", "5", "--steps", "2", "--seed", "7", "--guidance", "1.5",
             "--out-dir", folder, "--npz", npz)
    assert r.exit_code == 0, r.output
    assert "grid.png" not in r.output                                      # no grid unless -o is given
    want = Ensemble.from_pretrained(str(run)).sample(5, strategy="top1", steps=2, seed=7, guidance=1.5,
                                                     class_labels=[0, 1, 2, 3, 0])
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    for i, f in enumerate(files):
        img = np.asarray(Image.open(f))
        assert img.shape == (8, 8) and img.dtype == np.uint8               # grey 8x8, not upscaled
        # the same noise per image whatever the chunk; batch shapes may move a pixel by one level (float sums)
        assert np.abs(img.astype(int) - want.images[i, 0].numpy().astype(int)).max() <= 1, i
    rows = list(csv.DictReader((folder / "labels.csv").open()))
    assert [(r["file"], int(r["label"])) for r in rows] == [(f"{i:06d}.png", i % 4) for i in range(5)]
    assert rows[3]["class_name"] == "c3"
    data = np.load(npz)
    assert data["arr_0"].shape == (5, 8, 8, 1) and data["arr_0"].dtype == np.uint8
    assert np.array_equal(data["arr_0"][..., 0], np.stack([np.asarray(Image.open(f)) for f in files]))
    assert data["arr_1"].tolist() == [0, 1, 2, 3, 0] and list(data["class_names"][:2]) == ["c0", "c1"]


def test_out_dir_with_o_also_writes_the_grid(saved_runs, tmp_path):
    run = Path(saved_runs["root"]) / "ens"
    r = _run(run, "-n", "2", "--steps", "1", "--out-dir", tmp_path / "d", "-o", tmp_path / "g.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.png").exists() and len(list((tmp_path / "d").glob("*.png"))) == 2
