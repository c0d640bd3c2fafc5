"""The partition stage: ``run/data`` -> one shard artifact per expert.

Layout in the run (each ``expert-NNN`` is a committed artifact of its own, so
an island reads only its own data; ``manifest.json`` of ``partition/`` is
written last)::

    partition/expert-000/{shard-00000.tar, ..., manifest.json}
    partition/centroids.npz     feature state (e.g. PCA) + fine/coarse centroids, to assign new samples
    partition/assignments.npz   data keys and their cluster ids
    partition/partition.png     sample images per cluster
    partition/manifest.json     k, method, sizes, fine->coarse map, agreement with labels
"""
from __future__ import annotations

import io
import os

import numpy as np

from atoll.data.clustering import assign, random_partition, two_stage_kmeans
from atoll.data.features import compute_features, embed
from atoll.data.readers import committed, decode_record, iter_raw
from atoll.data.report import agreement, print_summary, render_partition
from atoll.data.shards import commit_shards, put_blocks
from atoll.data.stage import DATA, check_resume, spec_hash
from atoll.progress import task
from atoll.store import Store, join

PARTITION = "partition"
KIND = "atoll.partition"


def expert_prefix(k: int) -> str:
    return join(PARTITION, f"expert-{k:03d}")


def compute_threads() -> int:
    """BLAS/OpenMP threads for features and k-means (``ATOLL_DATA_THREADS``, default 1: on a
    shared machine, multi-threaded k-means++ and eigh stall in OpenMP barriers)."""
    return max(1, int(os.environ.get("ATOLL_DATA_THREADS", "1")))


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def read_data(run: Store) -> tuple[list[dict], np.ndarray, np.ndarray, list | None]:
    """Raw records (kept for copying into expert shards), images [N,C,H,W], labels, captions."""
    m = committed(run, DATA)
    raws, images, labels, captions = [], [], [], []
    with task("partition: read data", total=m["count"]) as bar:
        for raw in iter_raw(run, DATA):
            s = decode_record(raw)
            raws.append(raw)
            images.append(s["image"])
            labels.append(s["label"])
            captions.append(s["caption"])
            bar.advance()
    return (raws, np.stack(images).transpose(0, 3, 1, 2), np.asarray(labels, np.int64),
            captions if any(c is not None for c in captions) else None)


def cluster(spec, images: np.ndarray, captions) -> tuple:
    """(Clustering, feature state) for ``job.spec.partition``."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(compute_threads()):
        if spec.method == "random":
            return random_partition(np.zeros((len(images), 1), np.float32), spec.k, spec.seed), {}
        feats, state = compute_features(spec.features, images, captions, spec.seed)
        return two_stage_kmeans(feats, spec.k, spec.fine_clusters, spec.seed), state


def write_experts(run: Store, raws: list[dict], assignment: np.ndarray, k: int, shard_size: int,
                  digest: str, data_m: dict) -> list[dict]:
    """One committed shard artifact per expert (records copied byte for byte, in data order)."""
    out = []
    with task("partition: expert shards", total=k) as bar:
        for c in range(k):
            idx = np.flatnonzero(assignment == c)
            entries = []
            for s, a in enumerate(range(0, len(idx), shard_size)):
                entries.append(put_blocks(run, expert_prefix(c), s, [raws[i]["__tar__"] for i in idx[a:a + shard_size]]))
            m = commit_shards(run, expert_prefix(c), entries, kind=f"{KIND}.expert", expert=c, spec_hash=digest,
                              image_shape=data_m["image_shape"], num_classes=data_m["num_classes"],
                              class_names=data_m.get("class_names"))
            out.append({"id": c, "prefix": expert_prefix(c), "count": m["count"], "num_shards": m["num_shards"]})
            bar.advance()
    return out


def run_partition(job, run: Store) -> dict:
    """Clusters ``run/data`` into ``job.spec.partition.k`` experts; returns the committed manifest."""
    spec = job.spec.partition
    data_m = committed(run, DATA)
    digest = spec_hash({"data": data_m["spec_hash"], "shards": [s["sha256"] for s in data_m["shards"]],
                        "partition": spec.model_dump(mode="json")})
    done = check_resume(run, PARTITION, digest, "partition")
    if done is not None:
        return done
    run.delete_prefix(PARTITION)  # leftovers of an interrupted run; nothing committed is lost
    raws, images, labels, captions = read_data(run)
    clips = job.spec.data.source.type == "moving-clips"
    if clips:  # clips cluster on their object-centred frame mean (features.pool_clips)
        from atoll.data.features import pool_clips

        images = pool_clips(images)
    cl, state = cluster(spec, images, captions)
    k, names = spec.k, data_m.get("class_names")
    experts = write_experts(run, raws, cl.assignment, k, data_m.get("shard_size") or 10000, digest, data_m)
    keys = np.asarray([r["__key__"] for r in raws])
    run.put_bytes(join(PARTITION, "assignments.npz"), npz_bytes(keys=keys, cluster=cl.assignment))
    cents = {"method": np.array(spec.method), "k": np.array(k), "coarse_centroids": cl.coarse_centroids,
             **{f"feat_{n}": v for n, v in state.items()}}
    if cl.fine_centroids is not None:
        cents.update(fine_centroids=cl.fine_centroids, fine_to_coarse=cl.fine_to_coarse, fine_counts=cl.fine_counts)
    run.put_bytes(join(PARTITION, "centroids.npz"), npz_bytes(**cents))
    manifest = {
        "kind": KIND, "spec_hash": digest, "spec": spec.model_dump(mode="json"), "method": spec.method, "k": k,
        "features": spec.features.type if spec.method == "kmeans" else None,
        "features_input": "object-centred frame mean of each clip" if clips else "images",
        "count": len(raws), "cluster_sizes": np.bincount(cl.assignment, minlength=k).tolist(), "experts": experts,
        "num_fine": None if cl.fine_centroids is None else len(cl.fine_centroids),
        "fine_to_coarse": None if cl.fine_to_coarse is None else cl.fine_to_coarse.tolist(),
        "agreement": agreement(labels, cl.assignment, k, data_m["num_classes"]),
        "class_names": names, "files": {"centroids": "centroids.npz", "assignments": "assignments.npz",
                                        "picture": "partition.png"},
    }
    run.put_bytes(join(PARTITION, "partition.png"),
                  render_partition(images, cl.assignment, manifest, names, seed=spec.seed))
    manifest = run.commit(PARTITION, manifest)
    print_summary(manifest, names)
    return manifest


def assign_new(run: Store, images: np.ndarray | None = None, captions: list[str] | None = None) -> np.ndarray:
    """Expert ids of new samples (images uint8 [N,C,H,W] and/or captions) from the saved partition."""
    from atoll.data.errors import DataError

    committed(run, PARTITION)
    z = dict(np.load(io.BytesIO(run.get_bytes(join(PARTITION, "centroids.npz")))))
    if "fine_centroids" not in z:
        raise DataError(f"the partition at {run.url(PARTITION)} is {z['method']}; new samples have no cluster. "
                        "Use partition.method: kmeans")
    state = {n[5:]: v for n, v in z.items() if n.startswith("feat_")}
    return assign(embed(state, images=images, captions=captions), z["fine_centroids"], z["fine_to_coarse"])
