"""Growing a trained ensemble (``atoll add-experts``): new data gets its own experts on their own islands,
the router is fine-tuned from the old one, the old experts' files are not touched; then one is retired."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from atoll.grow import GrowError, _check_compatible, growth_job, read_data_file
from atoll.spec import dump
from test_distill import teacher_run


def digit_folder(root, classes=(8, 9)) -> tuple[str, int]:
    """An image folder with the digits' ten class folders, images only in ``classes`` (the new data)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    n = 0
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        if y in classes:
            Image.fromarray((img * 255 / 16).astype(np.uint8), mode="L").save(root / str(y) / f"{i}.png")
            n += 1
    return str(root), n


def test_the_growth_job_and_what_new_data_must_match(tiny, tmp_path):
    job, _ = tiny(name="g", k=2)
    data = {"source": {"type": "image-folder", "path": str(tmp_path)}, "shardSize": 500}
    g = growth_job(job, data, 2, router={"experts": [0, 1, 2, 3], "init": {"checkpoint": "router/model",
                                                                           "experts": [0, 1]}})
    assert g.spec.partition.k == 2 and g.spec.data.source.type == "image-folder"
    assert g.spec.router.experts == [0, 1, 2, 3] and g.spec.router.init.experts == [0, 1]
    assert "experts" not in dump(job)["spec"]["router"] and "init" not in dump(job)["spec"]["router"]
    old = {"image_shape": [1, 8, 8], "class_names": [str(i) for i in range(10)], "num_classes": 10}
    _check_compatible(old, {**old, "class_names": ["0", "1"]}, g)  # the first classes: fine
    with pytest.raises(GrowError, match="16x16.*data.imageSize"):
        _check_compatible(old, {**old, "image_shape": [1, 16, 16]}, g)
    with pytest.raises(GrowError, match="same order"):
        _check_compatible(old, {**old, "class_names": ["8", "9"]}, g)
    f = tmp_path / "new.yaml"
    f.write_text(yaml.safe_dump({"data": data}))
    assert read_data_file(f) == data
    f.write_text("shardSize: 3\n")
    with pytest.raises(GrowError, match="--data .*new.yaml.*source"):
        read_data_file(f)


@pytest.mark.slow
def test_add_experts_trains_only_the_new_ones_and_fine_tunes_the_router(tiny, tmp_path, ray_local):
    from atoll.cli import app
    from atoll.sampling import Ensemble

    job, run = teacher_run(tiny, name="grow")
    old_files = {k: run.get_bytes(k) for k in run.list("experts")}
    folder, n_new = digit_folder(tmp_path / "new")
    (tmp_path / "new.yaml").write_text(yaml.safe_dump({"source": {"type": "image-folder", "path": folder},
                                                       "shardSize": 500}))
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(dump(job)))
    args = ["add-experts", str(path), "--data", str(tmp_path / "new.yaml"), "--experts", "1", "--router-steps", "8"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "version 2 serves experts [0, 1, 2]" in res.output

    reg = run.get_json("experts/registry.json")
    assert reg["version"] == 2 and reg["router"] == "router/versions/v2/model"
    assert [e["id"] for e in reg["experts"]] == [0, 1, 2] and reg["experts"][2]["samples"] == n_new
    assert reg["history"][-1]["action"] == "add" and reg["history"][-1]["router_train_flops"] > 0
    assert {k: run.get_bytes(k) for k in old_files} == old_files  # the old experts: byte-identical
    assert run.manifest("partition/expert-002")["count"] == n_new
    m = run.manifest("experts/002")
    assert m["steps"] == job.spec.experts.training.steps and m["num_samples"] == n_new
    rm = run.manifest("router/versions/v2")
    assert rm["steps"] == 8 and rm["num_samples"] == run.manifest("data")["count"] + n_new

    ens = Ensemble.from_pretrained(run.uri)
    assert ens.num_experts == 3 and ens.router.config.num_experts == 3
    res = CliRunner().invoke(app, args)  # the same data again: nothing is retrained or re-versioned
    assert res.exit_code == 0 and "nothing to do" in res.output and run.get_json("experts/registry.json")["version"] == 2

    res = CliRunner().invoke(app, ["remove-expert", run.uri, "--expert", "2"])  # and out again, without retraining
    assert res.exit_code == 0 and "version 3 serves experts [0, 1]" in res.output, res.output
    assert Ensemble.from_pretrained(run.uri).num_experts == 2
