"""Small job specs and image folders for the data tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def job(name: str = "t", source: dict | None = None, **data_and_partition):
    from atoll.spec import parse

    data = {"source": source or {"type": "digits"}, "shardSize": 256}
    data.update(data_and_partition.pop("data", {}))
    part = {"k": 4, "fineClusters": 64}
    part.update(data_and_partition.pop("partition", {}))
    body = {"data": data, "partition": part}
    if data["source"].get("type") == "moving-clips":  # clips need a video expert model
        body["experts"] = {"model": "VDiT-XXS/4"}
    return parse({"apiVersion": "atoll/v1", "kind": "Job", "metadata": {"name": name}, "spec": body})


def make_folder(root: Path, classes=("cat", "dog"), per_class: int = 3, size=(10, 12)) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / c / f"img{i}.png")
    return root


def commit_digits_data(run, n: int = 1797, shard: int = 512) -> dict:
    """A committed ``data`` artifact of sklearn digits written without Ray (for partition tests)."""
    from atoll.data.shards import commit_shards, write_samples_shard
    from atoll.data.sources.digits import Digits

    src = Digits()
    entries = [write_samples_shard(run, "data", i, src.read(a, min(a + shard, n)))
               for i, a in enumerate(range(0, n, shard))]
    return commit_shards(run, "data", entries, kind="atoll.data", spec_hash=f"digits-{n}", image_shape=[1, 8, 8],
                         num_classes=10, class_names=src.class_names, shard_size=shard)


def grey_folder(root: Path, classes=("a", "b"), per_class=3, colour: int = 0) -> Path:
    """Class folders of grey 6x7 PNGs (and ``colour`` RGB files in the first class)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (6, 7), dtype=np.uint8)).save(root / c / f"g{i}.png")
    for i in range(colour):
        Image.fromarray(rng.integers(0, 255, (6, 7, 3), dtype=np.uint8)).save(root / classes[0] / f"rgb{i}.png")
    return root


def write_digits(store, prefix="art", n=300, shard=128, index=True, start=0) -> dict:
    """A committed artifact of sklearn digits ``start..start+n-1`` (``index=False``: shards without their
    sample index, as artifacts were written before it existed)."""
    from atoll.data.shards import commit_shards, write_samples_shard
    from atoll.data.sources.digits import Digits

    src = Digits()
    entries = [write_samples_shard(store, prefix, i, src.read(a, min(a + shard, start + n)))
               for i, a in enumerate(range(start, start + n, shard))]
    if not index:
        for e in entries:
            store.delete(f"{prefix}/{e['index']['name']}")
            del e["index"]
    return commit_shards(store, prefix, entries, image_shape=[1, 8, 8], num_classes=10, class_names=src.class_names)
