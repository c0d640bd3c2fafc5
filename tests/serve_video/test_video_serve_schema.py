"""Video runs without Ray: run facts, request checks (frames / size / format), the GIF and MP4 encoders, and the
sequence-parallel degree checks that happen before any actor starts."""
from __future__ import annotations

import io

import numpy as np
import pytest

from atoll.parallel.dims import ParallelConfigError
from atoll.sampling.grid import grid_array
from atoll.sampling.video_io import encode_video, frame_strip, read_gif, save_video
from atoll.serve.schema import GenerateRequest, Limits, RequestError, RunFacts, resolve

LIMITS = Limits(max_samples=8, max_steps=50, default_steps=10)
VIDEO = RunFacts(num_experts=2, num_classes=10, class_names=tuple(str(i) for i in range(10)),
                 image_shape=(1, 4, 16, 16), text_conditioned=False, frames=4)
IMAGE = RunFacts(num_experts=2, num_classes=3, class_names=("cat", "dog", "fox"), image_shape=(1, 8, 8),
                 text_conditioned=False)


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    from video_serve_helpers import save_video_run

    return save_video_run(str(tmp_path_factory.mktemp("video-facts")), "clips", 2)


def _r(facts, **kw):
    return resolve(GenerateRequest.model_validate(kw), LIMITS, facts)


def test_run_facts_of_a_video_run(video_run):
    from atoll.serve.runinfo import expert_heads, run_facts

    _, run = video_run
    facts = run_facts(run)
    assert facts.is_video and facts.frames == 4 and facts.image_shape == (1, 4, 16, 16)
    assert facts.num_experts == 2 and facts.num_classes == 10 and facts.class_names[3] == "digit-3"
    assert expert_heads(run, 0) == 4


def test_default_formats_and_matching_frames_and_size():
    assert _r(VIDEO).format == "gif" and _r(IMAGE).format == "png"
    r = _r(VIDEO, frames=4, size=16, format="png", **{"class": 3})
    assert (r.format, r.label) == ("png", 3)
    assert _r(VIDEO, format="json").format == "json"
    assert _r(VIDEO, format="mp4").format == "mp4"


@pytest.mark.parametrize("facts,body,field,limit,words", [
    (VIDEO, {"frames": 8}, "frames", 4, ["frames = 8", "4-frame"]),
    (VIDEO, {"size": 32}, "size", 16, ["size = 32", "16x16"]),
    (IMAGE, {"format": "gif"}, "format", ["png", "json"], ["gif", "video"]),
    (IMAGE, {"format": "mp4"}, "format", ["png", "json"], ["mp4", "video"]),
    (IMAGE, {"frames": 4}, "frames", None, ["frames = 4", "images"]),
])
def test_wrong_frames_size_or_format_name_the_field_and_the_trained_value(facts, body, field, limit, words):
    with pytest.raises(RequestError) as e:
        _r(facts, **body)
    assert e.value.status == 422 and e.value.field == field and e.value.limit == limit
    assert all(w in e.value.message for w in words), e.value.message


def test_gif_encoder_gives_back_the_exact_frames(tmp_path):
    from PIL import Image

    videos = np.random.default_rng(0).integers(0, 256, (3, 1, 5, 16, 16), dtype=np.uint8)
    data = encode_video(videos, "gif", nrow=2)
    img = Image.open(io.BytesIO(data))
    assert img.format == "GIF" and img.n_frames == 5 and img.mode in ("L", "P")
    frames = read_gif(data)
    want = np.stack([grid_array(videos[:, :, k], nrow=2)[..., 0] for k in range(5)])
    assert frames.dtype == np.uint8 and np.array_equal(frames, want)
    one = read_gif(encode_video(videos[1:2], "gif"))  # one clip inside the grid's 2-pixel white border
    assert one.shape == (5, 20, 20) and np.array_equal(one[:, 2:-2, 2:-2], videos[1, 0]) and (one[:, :2] == 255).all()
    strip = np.asarray(Image.open(io.BytesIO(encode_video(videos, "png"))))
    assert np.array_equal(strip, frame_strip(videos)[..., 0])
    paths = save_video(videos, tmp_path / "clip", scale=2)
    assert paths["gif"].read_bytes() == encode_video(videos, "gif", scale=2)
    assert paths["png"].read_bytes() == encode_video(videos, "png", scale=2)
    assert paths["mp4"].read_bytes()[4:8] == b"ftyp"
    with pytest.raises(Exception, match="webm"):
        encode_video(videos, "webm")


def test_mp4_encoder_is_h264_with_the_gif_layout_and_near_exact_frames():
    """MP4 = the GIF's grid in H.264 (imageio-ffmpeg's bundled ffmpeg); CRF 12 keeps every grey level
    within a few units, and smooth regions exact."""
    from atoll.sampling.video_io import VIDEO_MEDIA_TYPES, read_mp4

    videos = np.zeros((3, 1, 5, 16, 16), np.uint8)
    for k in range(5):  # a bright square moving over a mid-grey background
        videos[:, :, k] = 90
        videos[:, :, k, 4:10, 2 + 2 * k:8 + 2 * k] = 230
    data = encode_video(videos, "mp4", nrow=2, fps=8)
    assert data[4:8] == b"ftyp" and b"avc1" in data[:4096] and VIDEO_MEDIA_TYPES["mp4"] == "video/mp4"
    frames = read_mp4(data)
    want = np.stack([grid_array(videos[:, :, k], nrow=2)[..., 0] for k in range(5)])
    assert frames.shape == want.shape == (5, 38, 38)  # 2 x 2 grid with a 2-pixel border: even sides already
    err = np.abs(frames.astype(int) - want)
    assert err.mean() < 1.0 and err.max() <= 16, (err.mean(), err.max())
    noisy = np.random.default_rng(0).integers(0, 256, (1, 1, 3, 15, 15), dtype=np.uint8)  # odd sides: padded
    back = read_mp4(encode_video(noisy, "mp4", scale=1))
    assert back.shape == (3, 20, 20) and np.abs(back[:, 2:17, 2:17].astype(int) - noisy[0, 0]).mean() < 4


def test_sequence_parallel_degree_is_checked_before_any_actor_starts(video_run):
    from atoll.serve.app import deployment_options, sequence_parallel_degree, serve_config
    from atoll.serve.rank_group import RankGroup
    from atoll.serve.runinfo import RunSource
    from atoll.spec.models import ServeSpec

    _, run = video_run
    with pytest.raises(ParallelConfigError, match=r"N=3 must divide num_heads=4"):
        RankGroup(RunSource(run.uri), "experts/000/model", 3)  # would need Ray if it got past the check
    spec = ServeSpec.model_validate({"sequenceParallel": 3})
    with pytest.raises(ParallelConfigError, match="num_heads=4"):
        sequence_parallel_degree(spec, True, 4)
    with pytest.raises(ValueError, match="serve.sequenceParallel = 2 is for video runs"):
        sequence_parallel_degree(ServeSpec.model_validate({"sequenceParallel": 2}), False, 4)
    assert sequence_parallel_degree(ServeSpec.model_validate({"sequenceParallel": 2}), True, 4) == 2
    # ring attention has no head limit; hybrid's Ulysses part (sequenceParallel / ringDegree) must divide them
    assert sequence_parallel_degree(ServeSpec.model_validate({"sequenceParallel": 3, "attention": "ring"}), True, 4) == 3
    hybrid = ServeSpec.model_validate({"sequenceParallel": 6, "attention": "hybrid", "ringDegree": 2})
    with pytest.raises(ParallelConfigError, match="N=3 must divide num_heads=4"):
        sequence_parallel_degree(hybrid, True, 4)
    with pytest.raises(ParallelConfigError, match="N=3 must divide num_heads=4"):
        RankGroup(RunSource(run.uri), "experts/000/model", 6, attention="hybrid", ring_degree=2)
    gpu = ServeSpec.model_validate({"sequenceParallel": 2, "mode": "distributed", "experts": {"numGpus": 1}})
    assert deployment_options(gpu.experts, 2)["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert deployment_options(gpu.experts, 1)["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    doc = serve_config(run.uri, None, gpu, 2, video=True)
    assert doc["applications"][0]["deployments"][1]["ray_actor_options"]["num_gpus"] == 0.0  # the ranks take them
    ens = ServeSpec.model_validate({"sequenceParallel": 2, "ensemble": {"numGpus": 1}})
    (dep,) = serve_config(run.uri, None, ens, 2, video=True)["applications"][0]["deployments"]
    assert dep["name"] == "Ensemble" and dep["ray_actor_options"]["num_gpus"] == 0.0
