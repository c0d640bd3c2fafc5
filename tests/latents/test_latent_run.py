"""A latent-space job end to end through `atoll run`: encode -> partition -> experts + router -> samples
(decoded with the run's VAE) -> report, on a tiny image folder; resume skips the encode stage."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.slow
diffusers = pytest.importorskip("diffusers")

JOB = """
apiVersion: atoll/v1
kind: Job
metadata: {name: tiny-latent}
spec:
  store: {uri: "STORE"}
  data: {source: {type: image-folder, path: "FOLDER"}, imageSize: 16, shardSize: 32}
  latents: {enabled: true, vae: "VAE", batchSize: 16}
  partition: {k: 2, fineClusters: 8}
  experts:
    model: DiT-XXS/2
    training: {steps: 4, batchSize: 8, checkpointEvery: 4, logEvery: 2}
    scaling: {cpusPerWorker: 0.5}
  router:
    model: Router-XS
    training: {steps: 4, batchSize: 8, checkpointEvery: 4, logEvery: 2, emaDecay: 0.0}
    scaling: {cpusPerWorker: 0.5}
  sample: {strategies: [top1], numPerClass: 2, steps: 2}
"""


def image_folder(root):
    """Two classes of 16x16 RGB pictures: red squares and blue discs at random places."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    for c in ("square", "disc"):
        (root / c).mkdir(parents=True)
        for i in range(24):
            a = np.full((16, 16, 3), 230, np.uint8)
            cy, cx = rng.integers(5, 11, 2)
            mask = (abs(yy - cy) < 4) & (abs(xx - cx) < 4) if c == "square" else (yy - cy) ** 2 + (xx - cx) ** 2 < 16
            a[mask] = (200, 30, 30) if c == "square" else (30, 30, 200)
            Image.fromarray(a).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, ray_local):
    import torch

    from atoll.cli import app

    root = tmp_path_factory.mktemp("latent-run")
    torch.manual_seed(0)
    diffusers.AutoencoderKL(block_out_channels=[2, 4], in_channels=3, out_channels=3,
                            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                            latent_channels=4, norm_num_groups=2).save_pretrained(root / "vae")
    job = root / "job.yaml"
    job.write_text(textwrap.dedent(JOB).replace("STORE", str(root / "store"))
                   .replace("FOLDER", str(image_folder(root / "images"))).replace("VAE", str(root / "vae")))
    r = CliRunner().invoke(app, ["run", str(job)])
    assert r.exit_code == 0, r.output
    return root, job, r.output


def test_atoll_run_trains_in_latent_space_and_decodes_samples(latent_run):
    import torch

    from atoll import pipeline
    from atoll.sampling.ensemble import Ensemble
    from atoll.spec import load

    root, path, out = latent_run
    job = load(str(path))
    assert pipeline.active_stages(job)[:3] == ("data", "encode", "partition")
    run = pipeline.open_run(job)
    lat = run.manifest("latents")
    assert lat["count"] == 48 and lat["image_shape"] == [4, 8, 8] and lat["data_image_shape"] == [3, 16, 16]
    assert run.manifest("partition/expert-000")["image_shape"] == [4, 8, 8]
    from atoll.data.collection import Collection
    from atoll.data.records import model_array
    from atoll.train.registry import make_task

    task = make_task(job, "expert", 0)  # what the expert trains on: (z - shift) * scale of its latents
    task.load(run)
    z = np.stack([model_array(r)[0] for r in Collection(run, ["partition/expert-000"]).rows(0, 0, 3)])
    v = lat["vae"]
    assert torch.allclose(task.x0(z), (torch.from_numpy(z) - v["shift_factor"]) * v["scaling_factor"])
    assert v["scaling_factor"] == 0.18215  # diffusers' AutoencoderKL default (SD-VAE)
    ens = Ensemble.from_pretrained(run)
    assert ens.image_shape == (4, 8, 8) and ens.experts[0].config.in_channels == 4
    assert ens.decoder is not None and ens.decoder.sha256 == lat["vae"]["sha256"]
    res = ens.sample(3, steps=2, class_labels=0)
    assert res.images.shape == (3, 3, 16, 16) and res.images.dtype == torch.uint8  # the data's shape
    assert run.exists("samples/top1.png") and run.manifest("samples") is not None


def test_a_serve_replica_decodes_with_the_runs_vae(latent_run):
    import asyncio

    import torch

    from atoll import pipeline
    from atoll.serve.deployments import EnsembleReplica
    from atoll.serve.runinfo import RunSource, run_facts
    from atoll.serve.scheduler import Work
    from atoll.spec import load

    run = pipeline.open_run(load(str(latent_run[1])))
    facts = run_facts(run)
    assert facts.image_shape == (3, 16, 16) and facts.latent_shape == (4, 8, 8)
    rep = EnsembleReplica(RunSource(run.uri))  # the plain class: no Ray, no Serve
    assert rep.engine.image_shape == (4, 8, 8) and rep.decoder is not None
    out = asyncio.run(rep.generate(Work(n=2, label=1, steps=2)))
    assert out.images.shape == (2, 3, 16, 16) and out.images.dtype == torch.uint8


def test_resume_skips_encode_and_another_vae_is_refused(latent_run):
    import shutil

    import torch

    from atoll import pipeline
    from atoll.data.vae import VaeMismatch
    from atoll.sampling.ensemble import Ensemble
    from atoll.spec import load

    root, path, _ = latent_run
    job = load(str(path))
    run = pipeline.open_run(job)
    encoded = run.manifest("latents")["committed_at"]
    res = pipeline.run(job, from_stage="samples")
    assert {r.name: r.status for r in res}["encode"] == "skipped"
    assert run.manifest("latents")["committed_at"] == encoded
    # the same folder now holding another VAE: resuming and sampling are refused, naming both
    shutil.copytree(root / "vae", root / "vae-old")
    torch.manual_seed(1)
    diffusers.AutoencoderKL(block_out_channels=[2, 4], in_channels=3, out_channels=3,
                            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                            latent_channels=4, norm_num_groups=2).save_pretrained(root / "vae")
    try:
        with pytest.raises(VaeMismatch, match=r"encoded with the VAE .*vae.*sha256 .* but .*vae.*sha256"):
            pipeline.run(job)
        with pytest.raises(VaeMismatch, match="encoded with the VAE"):
            Ensemble.from_pretrained(run)
        from atoll.serve.deployments import EnsembleReplica
        from atoll.serve.runinfo import RunSource

        with pytest.raises(VaeMismatch, match="encoded with the VAE"):
            EnsembleReplica(RunSource(run.uri))
    finally:
        shutil.rmtree(root / "vae")
        shutil.copytree(root / "vae-old", root / "vae")
