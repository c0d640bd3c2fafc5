"""The data stage: a job's source -> WebDataset shards at ``<run>/data/``.

One Ray task per output shard (``atoll.data.distributed``); the manifest,
committed last, records a hash of the spec's data section so a rerun with the
same spec is skipped and a changed spec is refused instead of mixed.
"""
from __future__ import annotations

import hashlib
import json

from atoll.data.distributed import map_tasks
from atoll.data.errors import DataError
from atoll.data.shards import commit_shards, write_samples_shard
from atoll.data.sources import open_source
from atoll.data.storeref import StoreRef
from atoll.store import S3Config, Store

DATA = "data"
KIND = "atoll.data"


def spec_hash(obj) -> str:
    """sha256 of a pydantic model's (or dict's) canonical JSON."""
    data = obj.model_dump(mode="json") if hasattr(obj, "model_dump") else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def s3_config_for(job, run: Store) -> S3Config | None:
    """S3 settings for s3:// source URLs: the spec's store.s3 if set, else the run store's, else environment."""
    o = job.spec.store.s3
    if any(v is not None for v in (o.endpoint_url, o.region, o.access_key_id, o.secret_access_key)):
        env = S3Config.from_env()
        return S3Config(endpoint_url=o.endpoint_url or env.endpoint_url, region=o.region,
                        access_key_id=o.access_key_id, secret_access_key=o.secret_access_key)
    return StoreRef.of(run).s3


def check_resume(run: Store, prefix: str, digest: str, stage: str) -> dict | None:
    """The committed manifest when it was made from the same spec; None when the stage must run."""
    existing = run.manifest(prefix)
    if existing is None:
        return None
    if existing.get("spec_hash") != digest:
        raise DataError(f"{run.url(prefix)} was made from a different spec (its {stage} section changed); "
                        f"use a new run name (metadata.name) or rerun from this stage with `--from {stage}`")
    return existing


def convert_shard(source, ref: StoreRef, prefix: str, index: int, start: int, stop: int) -> dict:
    """Runs in a Ray worker: samples ``start..stop-1`` of the (prepared, pickled) source -> one shard;
    the entry also lists what the source skipped in this range (``data.onCorrupt: skip``)."""
    before = len(getattr(source, "skipped", []))  # what prepare() skipped: the driver counts that once
    entry = write_samples_shard(ref.open(), prefix, index, source.read(start, stop))
    return {**entry, "skipped": list(getattr(source, "skipped", []))[before:]}


def run_data(job, run: Store) -> dict:
    """Converts ``job.spec.data`` into shards at ``run/data/``; returns the committed manifest."""
    data = job.spec.data
    digest = spec_hash(data.model_dump(mode="json", exclude=data.READING))  # reading options do not change the shards
    done = check_resume(run, DATA, digest, "data")
    if done is not None:
        return done
    s3 = s3_config_for(job, run)
    run.delete_prefix(DATA)  # leftovers of an interrupted run; nothing committed is lost
    source = open_source(data, s3).prepare(run.sub(DATA))  # e.g. lists many files with Ray tasks
    n = source.count()
    if data.limit is not None:
        n = min(n, data.limit)
    if n == 0:
        raise DataError(f"data.source ({data.source.type}) has no samples; fix data.source")
    ranges = [(i, a, min(a + data.shard_size, n)) for i, a in enumerate(range(0, n, data.shard_size))]
    ref, spec_json = StoreRef.of(run), data.model_dump(mode="json")
    shards = map_tasks(convert_shard, [(source, ref, DATA, i, a, b) for i, a, b in ranges],
                       desc=f"data: {n} samples -> {len(ranges)} shards", samples_of=lambda e: e["count"])
    for sh in shards:
        if not sh["count"]:  # a range whose every sample was skipped: no shard for it
            run.delete(f"{DATA}/{sh['name']}")
            run.delete(f"{DATA}/{sh['index']['name']}")
    shards = [sh for sh in shards if sh["count"]]
    if not shards:
        raise DataError(f"no sample of data.source ({data.source.type}) could be read; fix data.source")
    skipped = list(getattr(source, "skipped", [])) + [s for sh in shards for s in sh["skipped"]]
    shapes = sorted({tuple(s) for sh in shards for s in sh["image_shapes"]})
    if len(shapes) != 1:
        fix = ("set data.source.channels: 3 (or 1) to store them all alike" if len({s[0] for s in shapes}) > 1
               else "set data.imageSize to resize them all")
        raise DataError(f"data.source images differ in shape ({', '.join('x'.join(map(str, s)) for s in shapes[:4])}"
                        f"{'...' if len(shapes) > 4 else ''} as CxHxW); {fix}")
    max_label = max(sh["max_label"] for sh in shards)
    names = source.class_names
    m = commit_shards(run, DATA, shards, kind=KIND, spec_hash=digest, spec=spec_json,
                      source=data.source.type, image_shape=list(shapes[0]),
                      num_classes=len(names) if names else max_label + 1, class_names=names,
                      captions=sum(sh["captions"] for sh in shards), shard_size=data.shard_size,
                      skipped={"count": len(skipped), "sources": skipped[:100]})
    run.delete_prefix(f"{DATA}/files")  # a source's listing (prepare), needed only while converting
    return m
