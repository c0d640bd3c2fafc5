"""Small runs written straight into a store (no Ray stages) for the benches: the scikit-learn digits,
scaled, as the data and a two-expert partition by label parity. Not a test fixture: benches build
what they measure themselves."""
from __future__ import annotations

import numpy as np


def digits_samples(size: int) -> list[dict]:
    """The 1797 digits as uint8 [size, size, 1] images with labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    out = []
    for i, (im, y) in enumerate(zip(d.images, d.target)):
        a = np.asarray(Image.fromarray((im * 16).clip(0, 255).astype(np.uint8)).resize((size, size)))
        out.append({"key": f"d{i:05d}", "image": a[:, :, None], "label": int(y)})
    return out


def write_run(job, size: int, experts: int = 2):
    """``data/`` and ``partition/expert-00k/`` of ``job``'s run (label % experts), and ``job.json``."""
    from atoll.data.shards import commit_shards, write_samples_shard
    from atoll.store import open_store

    samples = digits_samples(size)
    run = open_store(job.spec.store.uri).sub(job.name)
    commit_shards(run, "data", [write_samples_shard(run, "data", 0, samples)], num_classes=10,
                  class_names=[str(i) for i in range(10)])
    for k in range(experts):
        prefix = f"partition/expert-{k:03d}"
        commit_shards(run, prefix, [write_samples_shard(run, prefix, 0, [s for s in samples if s["label"] % experts == k])])
    run.put_json("job.json", {"spec": job.model_dump(mode="json", by_alias=True)})
    return run
