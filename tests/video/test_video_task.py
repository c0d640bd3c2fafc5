"""VideoExpertTask on moving-clips shards: batches are [b, C, T, H, W], the loss trains a VideoDiT."""
import textwrap

import torch

from atoll.data.shards import commit_shards, write_samples_shard
from atoll.data.sources.moving_clips import MovingClips
from atoll.models.video_dit import VideoDiT
from atoll.pipeline import open_run
from atoll.spec import loads
from atoll.train.tasks import make_task
from atoll.train.video_task import VideoExpertTask


def _job(store: str):
    job = loads(textwrap.dedent(f"""
        apiVersion: atoll/v1
        kind: Job
        metadata: {{name: vtiny}}
        spec:
          store: {{uri: "{store}"}}
          data: {{source: {{type: moving-clips, images: digits, numClips: 24, frames: 4, size: 16}}}}
          partition: {{k: 2, fineClusters: 8}}
          experts:
            model: VDiT-XS/2
            training: {{steps: 8, batchSize: 8, lr: 0.003}}
        """))
    return job


def test_video_expert_task_trains(tmp_path):
    job = _job(str(tmp_path / "store"))
    run = open_run(job)
    src = MovingClips("digits", "", num_clips=24, frames=4, size=16, seed=0)
    samples = list(src.read(0, 24))
    commit_shards(run, "data", [write_samples_shard(run, "data", 0, samples)], num_classes=10,
                  class_names=src.class_names)
    e = write_samples_shard(run, "partition/expert-000", 0, samples[:12])
    commit_shards(run, "partition/expert-000", [e])
    task = make_task(job, "expert", 0)
    assert isinstance(task, VideoExpertTask)
    task.load(run)
    assert task.num_samples() == 12 and task.clip_shape == (1, 4, 16, 16)
    model = task.build_model()
    assert isinstance(model, VideoDiT) and model.config.frames == 4 and model.config.num_classes == 10
    b = task.batch(0, 0, 0, 1, 0, 1, "cpu")
    assert tuple(b.x0.shape) == (8, 1, 4, 16, 16) and b.x0.min() >= -1 and b.x0.max() <= 1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(8):
        loss = task.loss(model, task.batch(step, 0, 0, 1, 0, 1, "cpu"), gen, torch.float32)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3])
