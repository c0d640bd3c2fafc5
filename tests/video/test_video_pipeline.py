"""Video runs through the pipeline: spec checks, clip features, the router on clips, and a tiny
`atoll run` of a video job that writes GIFs and frame strips (slow)."""
from __future__ import annotations

import io
import textwrap

import numpy as np
import pytest
import torch

from atoll.data.features import pool_clips
from atoll.models.router import RouterConfig
from atoll.spec import SpecError, loads

VIDEO_JOB = """
apiVersion: atoll/v1
kind: Job
metadata: {name: video-e2e}
spec:
  store: {uri: "STORE"}
  data: {source: {type: moving-clips, images: digits, numClips: 96, frames: 4, size: 16}, shardSize: 48}
  partition: {k: 2, fineClusters: 8, features: {type: pca, dims: 8}}
  experts:
    model: VDiT-XXS/4
    training: {steps: 4, batchSize: 8, checkpointEvery: 2, logEvery: 2, warmupSteps: 1}
    scaling: {cpusPerWorker: 0.5}
  router:
    model: Router-XS
    training: {steps: 4, batchSize: 16, checkpointEvery: 2, logEvery: 2, emaDecay: 0.0}
    scaling: {cpusPerWorker: 0.5}
  sample: {strategies: [top1, full], numPerClass: 1, steps: 3, guidance: 2.0}
  serve: {sequenceParallel: 2}
"""


def _job(text: str = VIDEO_JOB, store: str = "/tmp/unused"):
    return loads(textwrap.dedent(text).replace("STORE", store))


def _problems(text: str) -> str:
    with pytest.raises(SpecError) as e:
        _job(text)
    return str(e.value)


def test_video_job_validates():
    job = _job()
    assert job.spec.is_video and job.spec.serve.sequence_parallel == 2
    ring = _job(VIDEO_JOB.replace("serve: {sequenceParallel: 2}", "serve: {sequenceParallel: 3, attention: ring}"))
    assert ring.spec.serve.attention == "ring" and ring.spec.serve.ulysses_degree == 1  # no head limit


@pytest.mark.parametrize("change, field, hint", [
    (("VDiT-XXS/4", "DiT-XXS/2"), "experts.model", "needs a video DiT"),
    (("type: moving-clips, images: digits, numClips: 96, frames: 4, size: 16", "type: digits"), "experts.model",
     "is a video DiT"),
    (("sequenceParallel: 2", "sequenceParallel: 3"), "serve.sequenceParallel", "must divide the 4 attention heads"),
    (("serve: {sequenceParallel: 2}", "serve: {sequenceParallel: 6, attention: hybrid, ringDegree: 2}"),
     "serve.sequenceParallel", "gives a Ulysses degree of 3"),
    (("serve: {sequenceParallel: 2}", "serve: {attention: ring}"), "serve.attention", "set sequenceParallel > 1"),
    (("serve: {sequenceParallel: 2}", "serve: {sequenceParallel: 2, ringDegree: 2}"), "serve.ringDegree",
     "is for attention: hybrid"),
    (("VDiT-XXS/4", "VDiT-XXL/4"), "spec.experts.model", "VDiT-XXS/4"),
])
def test_video_spec_errors_name_the_field_and_fix(change, field, hint):
    msg = _problems(VIDEO_JOB.replace(*change))
    assert field in msg and hint in msg


EXPERT_SCALING = "scaling: {cpusPerWorker: 0.5}"  # the experts' (first) scaling line of VIDEO_JOB


@pytest.mark.parametrize("scaling, field, hint", [
    ("{numWorkers: 3, sequenceParallel: 2}", "experts.scaling.sequenceParallel", "must divide numWorkers (3)"),
    ("{numWorkers: 8, sequenceParallel: 8}", "experts.scaling.sequenceParallel", "must divide the 4 attention heads"),
    ("{numWorkers: 4, sequenceParallel: 4, attention: hybrid}", "experts.scaling.ringDegree", "use one of [2]"),
    ("{numWorkers: 2, sequenceParallel: 2, ringDegree: 2}", "experts.scaling.ringDegree", "is for attention: hybrid"),
    ("{attention: ring}", "experts.scaling.attention", "set sequenceParallel > 1"),
    ("{numWorkers: 8, sequenceParallel: 2, cpusPerWorker: 0.1}", "experts.training.batchSize",
     "data-parallel replicas (numWorkers 8 / sequenceParallel 2)"),
])
def test_sequence_parallel_training_spec_errors(scaling, field, hint):
    text = VIDEO_JOB.replace(EXPERT_SCALING, f"scaling: {scaling}", 1)
    if "numWorkers: 8, sequenceParallel: 2" in scaling:
        text = text.replace("batchSize: 8,", "batchSize: 6,", 1)
    msg = _problems(text)
    assert field in msg and hint in msg, msg


def test_sequence_parallel_training_layouts_validate():
    for scaling in ("{numWorkers: 4, sequenceParallel: 2}", "{numWorkers: 8, sequenceParallel: 8, attention: ring}",
                    "{numWorkers: 4, sequenceParallel: 4, attention: hybrid, ringDegree: 2}"):
        sc = _job(VIDEO_JOB.replace(EXPERT_SCALING, f"scaling: {scaling}", 1)).spec.experts.scaling
        assert sc.data_parallel * sc.sequence_parallel == sc.num_workers
    assert "router trains on whole samples" in _problems(
        VIDEO_JOB.replace("    scaling: {cpusPerWorker: 0.5}\n  sample", "    scaling: {sequenceParallel: 2, numWorkers: 2}\n  sample"))
    image = VIDEO_JOB.replace("type: moving-clips, images: digits, numClips: 96, frames: 4, size: 16", "type: digits")
    image = image.replace("VDiT-XXS/4", "DiT-XXS/2").replace("  serve: {sequenceParallel: 2}\n", "")
    assert "experts.scaling.sequenceParallel (2) is for video experts" in _problems(
        image.replace(EXPERT_SCALING, "scaling: {numWorkers: 2, sequenceParallel: 2}", 1))


def test_sequence_parallel_is_for_video_only():
    text = VIDEO_JOB.replace("type: moving-clips, images: digits, numClips: 96, frames: 4, size: 16", "type: digits")
    text = text.replace("VDiT-XXS/4", "DiT-XXS/2")
    assert "is for video experts" in _problems(text)


def test_pool_clips_centres_the_moving_object():
    """An object moving across frames pools to one sharp, centred copy of itself."""
    obj = np.full((4, 4), 200, np.uint8)
    T, S = 4, 16
    strip = np.zeros((1, 1, T * S, S), np.uint8)
    for k in range(T):  # the object moves 2 px right and 1 px down per frame
        y, x = 1 + k, 2 + 2 * k
        strip[0, 0, k * S + y: k * S + y + 4, x: x + 4] = obj
    pooled = pool_clips(strip)
    assert pooled.shape == (1, 1, S, S)
    ys, xs = np.nonzero(pooled[0, 0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (6, 9, 6, 9)  # one 4x4 block around the centre
    assert pooled[0, 0, 6:10, 6:10].min() == 200  # not smeared along the path


def test_router_routes_a_clip_on_its_frame_mean():
    torch.manual_seed(0)
    router = RouterConfig(size="Router-XS", input_size=16, in_channels=1, num_experts=2, num_classes=10).build()
    for p in router.parameters():  # adaLN-Zero starts at a constant output; perturb so inputs matter
        p.data += 0.05 * torch.randn_like(p)
    clip = torch.randn(3, 1, 4, 16, 16)
    t, y = torch.rand(3), torch.tensor([1, 2, 3])
    assert torch.allclose(router(clip, t, y), router(clip.mean(dim=2), t, y))
    assert not torch.allclose(router(clip, t, y), router(clip[:, :, 0], t, y))


@pytest.mark.slow
def test_video_job_runs_end_to_end(tmp_path, ray_local):
    from PIL import Image

    from atoll import pipeline
    from atoll.sampling import Ensemble

    job = _job(store=str(tmp_path / "store"))
    results = pipeline.run(job)
    assert all(r.status == "done" for r in results)
    run = pipeline.open_run(job)
    part = run.manifest("partition")
    assert part["features_input"].startswith("object-centred") and sum(part["cluster_sizes"]) == 96
    samples = run.manifest("samples")
    names = {f["name"] for f in samples["files"]}
    assert {"top1.gif", "top1.png", "full.gif", "expert-000.gif", "expert-001.gif", "trace.png"} <= names
    gif = Image.open(io.BytesIO(run.get_bytes("samples/top1.gif")))
    assert gif.n_frames == 4  # one GIF frame per clip frame
    report = run.get_bytes("report/index.md").decode()
    assert "samples-top1.gif" in report
    ens = Ensemble.from_pretrained(run)
    assert ens.is_video and ens.image_shape == (1, 4, 16, 16)
    out = ens.sample(2, class_labels=[3, 5], strategy="top1", steps=2, guidance=2.0, seed=1)
    assert tuple(out.images.shape) == (2, 1, 4, 16, 16) and out.images.dtype == torch.uint8


def test_clip_stills_recover_the_moving_object():
    """The classifier's still of a clip is its object, centred and upsampled to 28x28, wherever it moved."""
    from atoll.data.sources.moving_clips import MovingClips, clips_tensor
    from atoll.sampling.evaluate import clip_stills

    src = MovingClips("digits", "", num_clips=6, frames=6, size=32, seed=3)
    imgs = np.stack([s["image"] for s in src.read(0, 6)]).transpose(0, 3, 1, 2)
    stills = clip_stills(torch.from_numpy(clips_tensor(imgs)))
    assert tuple(stills.shape) == (6, 1, 28, 28) and stills.dtype == torch.uint8
    for s in stills.float():
        mass = s[0] / s[0].sum()
        cy = float((mass.sum(1) * torch.arange(28)).sum())
        cx = float((mass.sum(0) * torch.arange(28)).sum())
        assert abs(cy - 13.5) < 2.5 and abs(cx - 13.5) < 2.5  # centred, not smeared along the track
        assert s.max() > 100  # the object is there
