"""The encode stage: ``run/data`` -> VAE latents at ``run/latents/`` (``latents.enabled``), Ray tasks per shard.

Shard ``s`` of ``latents/`` holds the latent mean (float32 ``[c, h, w]``, ``KEY.npy``; with
``latents.posterior: sample`` the mean and log-variance ``[2c, h, w]``) of every
readable sample of data shard ``s``, with the same key, label and caption, in the same order.
The manifest, committed last, records the VAE (path, sha256 of its config and weights,
``scaling_factor``, ``shift_factor``) and the latent shape; the partition then writes the
experts' shards from these records, and the experts and router train on
``(z - shift_factor) * scaling_factor``. Resuming with another VAE is refused (``VaeMismatch``).
"""
from __future__ import annotations

from atoll.data.distributed import map_tasks
from atoll.data.errors import DataError
from atoll.data.readers import committed
from atoll.data.stage import DATA, check_resume, spec_hash
from atoll.data.storeref import StoreRef
from atoll.store import Store

LATENTS = "latents"
KIND = "atoll.latents"


def compute_threads() -> int:
    """Torch threads per encode task (``ATOLL_DATA_THREADS``, default 1, as the partition's tasks)."""
    import os

    return max(1, int(os.environ.get("ATOLL_DATA_THREADS", "1")))


def encode_shard(ref: StoreRef, s: int, spec, device: str, threads: int, on_corrupt: str) -> dict:
    """Runs in a Ray task: data shard ``s`` -> latent shard ``s``; returns its entry and the VAE's sha256."""
    import torch

    from atoll.data.partition_tasks import Shard
    from atoll.data.records import encode_npy
    from atoll.data.shards import put_shard
    from atoll.data.vae import Vae
    from atoll.devices import for_stage

    torch.set_num_threads(threads)
    sh = Shard(ref, DATA, s, on_corrupt)
    ids, images, labels, caps = sh.decoded()
    vae = Vae.load(spec.vae, for_stage(device), ref.s3)
    z = vae.encode(images, spec.batch_size, moments=spec.posterior == "sample")
    keys = [sh.raws[int(r)]["__key__"] for r in ids]
    records = []
    for i, key in enumerate(keys):
        rec = {"npy": encode_npy(z[i]), "cls": str(int(labels[i])).encode()}
        if caps[i]:
            rec["txt"] = caps[i].encode("utf-8")
        records.append((key, rec))
    entry = put_shard(sh.run, LATENTS, s, records)
    return {**entry, "sha256_vae": vae.sha256, "captions": sum(bool(c) for c in caps)}


def check_vae(job, run: Store) -> None:
    """Raises ``VaeMismatch`` (naming both) when the run's committed latents came from another VAE than
    ``latents.vae`` names now (its files are hashed, the model is not loaded)."""
    from atoll.data.pretrained import identity, local_dir
    from atoll.data.vae import FIELD, VaeMismatch

    m = run.manifest(LATENTS)
    if m is None or not job.spec.latents.enabled:
        return
    path = job.spec.latents.vae
    sha = identity(local_dir(path, FIELD, StoreRef.of(run).s3))
    rec = m["vae"]
    if rec.get("sha256") != sha:
        raise VaeMismatch(f"{run.url(LATENTS)} was encoded with the VAE {rec.get('path')} (sha256 "
                          f"{str(rec.get('sha256'))[:16]}), but latents.vae is {path} (sha256 {sha[:16]}); set "
                          "latents.vae back, or encode again in a new run (metadata.name) or with `--from encode`")


def run_encode(job, run: Store) -> dict:
    """Encodes every sample of ``run/data`` once with ``latents.vae``; returns the committed manifest."""
    from atoll.data.vae import Vae
    from atoll.devices import for_stage

    spec = job.spec.latents
    data_m = committed(run, DATA)
    ref = StoreRef.of(run)
    here = for_stage(spec.device)
    vae = Vae.load(spec.vae, for_stage("cpu"), ref.s3)  # the driver only checks it and reads its facts
    existing = run.manifest(LATENTS)
    if existing is not None:
        vae.check_same(existing["vae"], run.url(LATENTS))
    moments = spec.posterior == "sample"
    digest = spec_hash({"data": data_m["spec_hash"], "shards": [s["sha256"] for s in data_m["shards"]],
                        "vae": vae.sha256, **({"moments": True} if moments else {})})
    done = check_resume(run, LATENTS, digest, "encode")
    if done is not None:
        return done
    latent_shape = vae.latent_shape(data_m["image_shape"])
    run.delete_prefix(LATENTS)  # leftovers of an interrupted run; nothing committed is lost
    device, gpus = ("cuda:0", 1) if here.is_cuda else ("cpu", 0)
    n = len(data_m["shards"])
    shards = map_tasks(encode_shard, [(ref, s, spec, device, compute_threads(), job.spec.data.on_corrupt)
                                        for s in range(n)], num_gpus=gpus,
                       desc=f"encode: {data_m['count']} images -> latents {'x'.join(map(str, latent_shape))}",
                       samples_of=lambda e: e["count"])
    if {e["sha256_vae"] for e in shards} != {vae.sha256}:
        raise DataError(f"{spec.vae} changed while the encode stage ran; rerun it with `--from encode`")
    if sum(e["count"] for e in shards) == 0:
        raise DataError(f"no sample of {run.url(DATA)} could be encoded; rerun the data stage")
    from atoll.data.shards import commit_shards

    return commit_shards(run, LATENTS, shards, kind=KIND, spec_hash=digest, vae=vae.describe(),
                         image_shape=latent_shape, moments=moments, data_image_shape=list(data_m["image_shape"]),
                         num_classes=data_m["num_classes"], class_names=data_m.get("class_names"),
                         captions=sum(e["captions"] for e in shards), shard_size=data_m.get("shard_size"),
                         device=str(here.device))
