"""jobs/gpu-imagenet-ddm.yaml is the DDM ImageNet setup, and `atoll plan` sees it in latent space."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ddm():
    from atoll.spec import load

    return load(str(REPO / "jobs" / "gpu-imagenet-ddm.yaml"))


def test_the_ddm_job_is_the_papers_setup(ddm):
    s = ddm.spec
    assert s.data.image_size == 256 and s.data.source.type == "image-folder"
    assert s.latents.enabled and s.latents.vae.startswith("s3://")
    assert (s.partition.method, s.partition.k, s.partition.fine_clusters) == ("kmeans", 8, 1024)
    assert s.partition.features.type == "dinov2"
    assert s.experts.model == "DiT-XL/2" and s.experts.mode == "ensemble" and s.router.model == "Router-B"
    assert "top1" in s.sample.strategies and s.experts.scaling.use_gpu
    assert [i.experts for i in s.islands.islands] == [[k] for k in range(8)]


def test_plan_of_the_ddm_job_is_in_latent_space(ddm):
    from atoll.planning import plan

    p = plan(ddm)
    assert (p["data"]["channels"], p["data"]["size"]) == (4, 32)  # SD-VAE: 256 px -> 32x32x4
    assert "4x32x32" in p["data"]["latents"] and p["models"]["expert"]["size"] == "DiT-XL/2"
    per_step = p["inference"]["monolith_gflops_per_image"] / (p["inference"]["steps"] * (2 if p["inference"]["cfg"] else 1))
    assert per_step == pytest.approx(237.2, abs=0.1)  # 2 x the DiT paper's 118.6 GMACs of DiT-XL/2 at 32x32x4
    assert 1.0 < p["inference"]["top1_over_monolith"] < 1.01


def test_plan_reads_a_local_vaes_config(tmp_path):
    import json

    from atoll.planning import data_shape
    from atoll.spec import parse

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 16,
                                                      "block_out_channels": [8, 16, 32]}))
    job = parse({"apiVersion": "atoll/v1", "kind": "Job", "metadata": {"name": "p"}, "spec": {
        "data": {"source": {"type": "image-folder", "path": "/x"}, "imageSize": 64},
        "latents": {"enabled": True, "vae": str(tmp_path)}}})
    d = data_shape(job)
    assert (d.channels, d.size) == (16, 16) and "its config.json" in d.latents
