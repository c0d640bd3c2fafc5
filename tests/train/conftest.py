"""A tiny run on the digits (8x8) prepared without the data stages, for training tests."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

from atoll.data.shards import commit_shards, write_samples_shard
from atoll.data.sources import open_source
from atoll.pipeline import open_run
from atoll.spec import loads


def tiny_job(store: str, name: str = "tiny", *, k: int = 2, steps: int = 12, workers: int = 1, zero: int = 2,
             ckpt: int = 4, router_steps: int = 10, batch: int = 32) -> object:
    return loads(textwrap.dedent(f"""
        apiVersion: atoll/v1
        kind: Job
        metadata: {{name: {name}}}
        spec:
          store: {{uri: "{store}"}}
          data: {{source: {{type: digits}}, shardSize: 2000}}
          partition: {{k: {k}, fineClusters: 16}}
          experts:
            model: DiT-XXS/2
            training: {{steps: {steps}, batchSize: {batch}, zeroStage: {zero}, checkpointEvery: {ckpt},
                        logEvery: 2, lr: 0.002}}
            scaling: {{numWorkers: {workers}}}
          router:
            model: Router-XS
            training: {{steps: {router_steps}, batchSize: 64, checkpointEvery: 100, logEvery: 5, lr: 0.003,
                        emaDecay: 0.0}}
        """))


def prepare(job, parts: list[np.ndarray] | None = None):
    """Writes data/ and partition/expert-*/ shards. ``parts``: sample indices per expert
    (default: by label parity, a split a router can learn)."""
    run = open_run(job)
    src = open_source(job.spec.data)
    samples = list(src.read(0, src.count()))
    labels = np.array([s["label"] for s in samples])
    e = write_samples_shard(run, "data", 0, samples)
    commit_shards(run, "data", [e], num_classes=10, class_names=src.class_names)
    k = job.spec.partition.k
    if parts is None:
        parts = [np.flatnonzero(labels % k == i) for i in range(k)]
    for i, idx in enumerate(parts):
        e = write_samples_shard(run, f"partition/expert-{i:03d}", 0, [samples[j] for j in idx])
        commit_shards(run, f"partition/expert-{i:03d}", [e])
    return run


@pytest.fixture
def tiny(tmp_path):
    def make(**kw):
        parts = kw.pop("parts", None)
        job = tiny_job(str(tmp_path / "store"), **kw)
        return job, prepare(job, parts)
    return make
