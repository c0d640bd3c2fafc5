"""The encode stage: a tiny random AutoencoderKL saved with save_pretrained, loaded by the real code."""
import numpy as np
import pytest

from atoll.data import load_arrays, run_partition
from atoll.data.collection import Collection
from atoll.data.errors import DataError
from atoll.data.records import model_array

from atoll_data_helpers import commit_digits_data, job

diffusers = pytest.importorskip("diffusers")


def save_vae(path, seed: int = 0, **kw):
    import torch

    torch.manual_seed(seed)
    cfg = dict(block_out_channels=[2, 4], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
               up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2, scaling_factor=0.5,
               shift_factor=0.1)
    cfg.update(kw)
    diffusers.AutoencoderKL(**cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    return save_vae(root / "a", seed=0), save_vae(root / "b", seed=1)


def reference_latents(path, images):
    """What diffusers itself gives: the latent mean of the images in [-1, 1] (grey repeated to RGB)."""
    import torch

    model = diffusers.AutoencoderKL.from_pretrained(str(path), local_files_only=True).eval()
    x = torch.from_numpy(images).float() / 127.5 - 1.0
    with torch.no_grad():
        return model.encode(x.expand(-1, 3, -1, -1)).latent_dist.mean.numpy()


def latent_job(name, vae, latents=None, **kw):
    """``job(...)`` of the data helpers with a ``latents`` section."""
    from atoll.spec import parse

    body = job(name, **kw).model_dump(mode="json", by_alias=True)
    body["spec"]["latents"] = latents if latents is not None else {"enabled": True, "vae": str(vae), "batchSize": 16}
    return parse(body)


def test_vae_module_encodes_like_diffusers_and_decodes_back(vaes):
    import torch

    from atoll.data.vae import Vae
    from atoll.devices import for_stage

    images = np.random.default_rng(0).integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    vae = Vae.load(str(vaes[0]), for_stage("cpu"))
    z = vae.encode(images, batch_size=2)
    assert z.shape == (5, 4, 4, 4) and np.allclose(z, reference_latents(vaes[0], images), atol=1e-6)
    assert (vae.scaling_factor, vae.shift_factor, vae.downsample) == (0.5, 0.1, 2)
    assert vae.latent_shape([1, 8, 8]) == [4, 4, 4]
    x = torch.from_numpy(vae.to_model(z))
    out = vae.decode(x, channels=1)
    assert out.shape == (5, 1, 8, 8) and out.abs().max() <= 1
    with torch.no_grad():  # decode undoes the scaling before the VAE's decoder
        model = diffusers.AutoencoderKL.from_pretrained(str(vaes[0]), local_files_only=True).eval()
        ref = model.decode(torch.from_numpy(z)).sample.clamp(-1, 1).mean(1, keepdim=True)
    assert torch.allclose(out, ref, atol=1e-5)
    assert Vae.load(str(vaes[1]), for_stage("cpu")).sha256 != vae.sha256
    with pytest.raises(DataError, match="not divisible by the VAE's downsampling"):
        vae.latent_shape([1, 9, 9])


def test_bad_vae_paths_name_the_field(vaes, tmp_path):
    from atoll.data.vae import Vae
    from atoll.devices import for_stage

    with pytest.raises(DataError, match=r"latents\.vae: .*not a folder"):
        Vae.load(str(tmp_path / "nope"), for_stage("cpu"))
    import transformers

    transformers.Dinov2Model(transformers.Dinov2Config(image_size=28, patch_size=4, hidden_size=32,
                                                       num_hidden_layers=1, num_attention_heads=4)).save_pretrained(
        tmp_path / "dino")
    with pytest.raises(DataError, match=r"latents\.vae: .* not an AutoencoderKL"):
        Vae.load(str(tmp_path / "dino"), for_stage("cpu"))
    with pytest.raises(Exception, match=r"latents\.enabled needs latents\.vae"):
        latent_job("x", None, latents={"enabled": True})


@pytest.mark.slow
def test_encode_stage_then_partition_on_latents(ray_local, vaes, file_store):
    from atoll.data.encode import check_vae, run_encode
    from atoll.data.vae import VaeMismatch

    run = file_store.sub("lat")
    commit_digits_data(run, n=300, shard=128)
    j = latent_job("lat", vaes[0], partition={"k": 3, "fineClusters": 24})
    m = run_encode(j, run)
    assert m["count"] == 300 and m["image_shape"] == [4, 4, 4] and m["num_shards"] == 3
    assert m["vae"]["scaling_factor"] == 0.5 and m["vae"]["shift_factor"] == 0.1 and len(m["vae"]["sha256"]) == 64
    # the latent shards hold exactly what the VAE gives for those images, key for key
    images = load_arrays(run, "data")
    col = Collection(run, ["latents"])
    rows = col.rows(1, 0, 5)
    stored = np.stack([model_array(r)[0] for r in rows])
    assert [r["__key__"] for r in rows] == images.keys[128:133]
    assert stored.dtype == np.float32  # float32 as the VAE gives them (batching alone may move the last bit)
    assert np.allclose(stored, reference_latents(vaes[0], images.images[128:133]), rtol=0, atol=1e-6)
    assert run_encode(j, run)["committed_at"] == m["committed_at"]  # resumed: nothing encoded again
    other = latent_job("lat", vaes[1], partition={"k": 3, "fineClusters": 24})
    with pytest.raises(VaeMismatch, match=f"{vaes[0]}.*{vaes[1]}"):
        check_vae(other, run)
    with pytest.raises(VaeMismatch, match=f"{vaes[0]}.*{vaes[1]}"):
        run_encode(other, run)
    # the partition clusters the images (PCA) and gives each expert its samples' latents
    p = run_partition(j, run)
    assert sum(p["cluster_sizes"]) == 300
    by_key = {r["__key__"]: model_array(r)[0] for s in range(3) for r in col.rows(s, 0, col.shards[s][2]["count"])}
    for e in p["experts"]:
        ecol = Collection(run, [e["prefix"]])
        assert run.manifest(e["prefix"])["image_shape"] == [4, 4, 4]
        assert run.manifest(e["prefix"])["latents"]["sha256"] == m["vae"]["sha256"]
        for r in ecol.rows(0, 0, min(4, ecol.shards[0][2]["count"])):
            assert np.array_equal(model_array(r)[0], by_key[r["__key__"]])


def test_a_vae_from_an_s3_uri_is_the_same_vae(vaes, s3_store, tmp_path, monkeypatch):
    from atoll.data.vae import Vae
    from atoll.devices import for_stage

    monkeypatch.setenv("ATOLL_MODEL_CACHE", str(tmp_path / "cache"))
    folder = s3_store.sub("models/vae")
    for p in sorted(vaes[0].iterdir()):
        folder.put_file(p.name, p)
    remote = Vae.load(folder.url(), for_stage("cpu"), s3_store.config)
    local = Vae.load(str(vaes[0]), for_stage("cpu"))
    assert remote.sha256 == local.sha256 and remote.path == folder.url()
    assert any((tmp_path / "cache").iterdir())  # downloaded once into the model cache
    images = np.random.default_rng(1).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    assert np.array_equal(remote.encode(images, 3), local.encode(images, 3))
    with pytest.raises(DataError, match=r"latents\.vae: .*holds no files"):
        Vae.load(s3_store.sub("models/none").url(), for_stage("cpu"), s3_store.config)


@pytest.mark.slow
def test_posterior_sample_keeps_the_log_variance_and_training_draws_from_it(ray_local, vaes, file_store):
    import torch

    from atoll.data.encode import run_encode
    from atoll.train.registry import make_task

    run = file_store.sub("post")
    commit_digits_data(run, n=120, shard=64)
    j = latent_job("post", vaes[0], partition={"k": 2, "fineClusters": 8},
                   latents={"enabled": True, "vae": str(vaes[0]), "posterior": "sample"})
    m = run_encode(j, run)
    assert m["moments"] is True and m["image_shape"] == [4, 4, 4]
    images = load_arrays(run, "data").images[:3]
    model = diffusers.AutoencoderKL.from_pretrained(str(vaes[0]), local_files_only=True).eval()
    with torch.no_grad():
        dist = model.encode((torch.from_numpy(images).float() / 127.5 - 1).expand(-1, 3, -1, -1)).latent_dist
    stored = np.stack([model_array(r)[0] for r in Collection(run, ["latents"]).rows(0, 0, 3)])
    assert stored.shape == (3, 8, 4, 4)
    assert np.allclose(stored[:, :4], dist.mean.numpy(), atol=1e-6) and np.allclose(stored[:, 4:], dist.logvar.numpy(), atol=1e-5)
    run_partition(j, run)
    task = make_task(j, "expert", 0)
    task.load(run)
    assert task.model_config().in_channels == 4  # the model sees c channels, not the stored 2c
    x0 = task.x0(stored)
    mean, logvar = torch.from_numpy(stored[:, :4]), torch.from_numpy(stored[:, 4:])
    assert torch.allclose(task.posterior(x0, None), (mean - 0.1) * 0.5)  # no generator: the mean
    g = torch.Generator().manual_seed(7)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    drawn = task.posterior(x0, g)
    assert torch.allclose(drawn, (mean + torch.exp(0.5 * logvar) * eps - 0.1) * 0.5, atol=1e-6)
    assert not torch.allclose(drawn, task.posterior(x0, None))
    # a training loss of the expert and of the router on the drawn latents
    for t in (task, make_task(j, "router", None)):
        if t is not task:
            t.load(run)
        b = t.make_batch(t.loader(0, 1).batch(0, 4), "cpu")
        assert b.x0.shape == (4, 8, 4, 4)
        loss = t.loss(t.build_model(), b, torch.Generator().manual_seed(0), torch.float32)
        assert torch.isfinite(loss) and loss.requires_grad
