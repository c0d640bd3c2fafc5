"""DINOv2 / CLIP partition features: tiny random models saved with save_pretrained, loaded by the real code."""
import numpy as np
import pytest

from atoll.data import DataError, run_partition
from atoll.data.features import compute_features, embed
from atoll.data.sources.digits import digits_arrays
from atoll.spec.models import PretrainedFeatures

from atoll_data_helpers import commit_digits_data, job

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    transformers.Dinov2Model(transformers.Dinov2Config(
        image_size=28, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        mlp_ratio=2)).save_pretrained(root / "dinov2")
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        image_size=28, patch_size=4, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=16)).save_pretrained(root / "clip")
    return root


def _images(n=40):
    images, _ = digits_arrays()
    return (images[:n, None].astype(np.float32) * (255 / 16)).astype(np.uint8)  # [n, 1, 8, 8]


@pytest.mark.parametrize("kind,hidden", [("dinov2", 32), ("clip", 24)])
def test_features_are_deterministic_mean_pooled_patch_tokens(encoders, kind, hidden):
    import torch

    images = _images()
    spec = PretrainedFeatures(type=kind, path=str(encoders / kind), batch_size=16, device="cpu")
    a, state = compute_features(spec, images, None, seed=0)
    assert a.shape == (40, hidden) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, embed(state, images=images))           # reloaded from the saved state
    assert np.allclose(a[:5], embed(state, images=images[:5]), atol=1e-5)  # batch-independent
    assert np.abs(a[0] - a[1]).max() > 1e-4                          # different digits, different features
    # the pooled tokens are the model's own: patch tokens of the resized, normalised RGB image, CLS left out
    cls = transformers.Dinov2Model if kind == "dinov2" else transformers.CLIPVisionModel
    model = cls.from_pretrained(str(encoders / kind), local_files_only=True).eval()
    x = torch.from_numpy(images[:2]).float().div(255).expand(-1, 3, -1, -1)
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bicubic", antialias=True).clamp(0, 1)
    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if kind == "dinov2" else \
        ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state[:, 1:].mean(1).numpy()
    assert np.allclose(a[:2], ref, atol=1e-5)


def test_bad_paths_name_the_field_and_the_fix(encoders, tmp_path):
    images = _images(4)

    def feats(kind, path):
        return compute_features(PretrainedFeatures(type=kind, path=str(path), device="cpu"), images, None, 0)

    with pytest.raises(DataError, match=r"partition\.features\.path: .*missing.* is not a folder"):
        feats("dinov2", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"partition\.features\.path: .*no config\.json.*save_pretrained"):
        feats("dinov2", tmp_path / "empty")
    with pytest.raises(DataError, match=r"holds a 'clip_vision_model' model, not dinov2"):
        feats("dinov2", encoders / "clip")
    with pytest.raises(DataError, match=r"holds a 'dinov2' model, not clip"):
        feats("clip", encoders / "dinov2")


def test_spec_accepts_dinov2_and_clip_and_keeps_pca_the_default(encoders):
    assert job("d").spec.partition.features.type == "pca"
    f = job("d", partition={"features": {"type": "dinov2", "path": str(encoders / "dinov2"),
                                          "batchSize": 8}}).spec.partition.features
    assert (f.type, f.batch_size, f.device) == ("dinov2", 8, "auto")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dinov2", "clip"])
def test_kmeans_on_encoder_features_runs_through_the_partition_stage(ray_local, encoders, file_store, kind):
    run = file_store.sub(f"enc-{kind}")
    commit_digits_data(run, n=300, shard=128)  # 3 shards, 3 features tasks
    m = run_partition(job(f"enc-{kind}", partition={"k": 3, "fineClusters": 24, "features": {
        "type": kind, "path": str(encoders / kind), "batchSize": 32}}), run)
    assert m["features"] == kind and sum(m["cluster_sizes"]) == 300 and min(m["cluster_sizes"]) > 0
    assert len(m["fine_to_coarse"]) == 24
    from atoll.data import load_arrays
    from atoll.data.partition import assign_new, read_assignments

    _, cluster = read_assignments(run)
    stored = load_arrays(run, "data").images[:20]
    assert np.array_equal(assign_new(run, images=stored), cluster[:20])  # same features, same clusters


@pytest.mark.slow
def test_encoder_from_an_s3_uri(ray_local, encoders, s3_store):
    """The encoder folder uploaded next to the run on the S3 server; the tasks download it themselves."""
    model = s3_store.sub("models/dinov2")
    for p in sorted((encoders / "dinov2").iterdir()):
        model.put_file(p.name, p)
    run = s3_store.sub("run")
    commit_digits_data(run, n=200, shard=128)
    m = run_partition(job("enc-s3", partition={"k": 2, "fineClusters": 16, "features": {
        "type": "dinov2", "path": model.url(), "batchSize": 64}}), run)
    assert m["features"] == "dinov2" and sum(m["cluster_sizes"]) == 200
    local, _ = compute_features(PretrainedFeatures(type="dinov2", path=str(encoders / "dinov2")),
                                _images(5), None, 0)
    from atoll.data.encoders import ImageEncoder
    from atoll.devices import for_stage

    remote = ImageEncoder("dinov2", model.url(), for_stage("cpu"), s3_store.config).features(_images(5), 8)
    assert np.array_equal(local, remote)
