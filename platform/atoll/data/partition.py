"""The partition stage: ``run/data`` -> one shard artifact per expert, run by Ray tasks per shard.

Layout in the run (each ``expert-NNN`` is a committed artifact of its own, so
an island reads only its own data; ``manifest.json`` of ``partition/`` is
written last)::

    partition/expert-000/{shard-00000.tar, shard-00000.idx, ..., manifest.json}
    partition/centroids.npz        feature state (e.g. PCA) + fine/coarse centroids, to assign new samples
    partition/assignments/shard-NNNNN.npz   keys of data shard NNNNN and their cluster ids
    partition/partition.png        sample images per cluster
    partition/manifest.json        k, method, sizes, fine->coarse map, agreement with labels

Steps (k-means; the driver holds bounded samples and per-shard summaries, never the data):

1. PCA is fitted on the same seeded sample of up to ``PCA_FIT_SAMPLES`` images as before,
   fetched by one Ray task per shard.
2. Ray tasks compute every sample's features (``partition/work/features-*.npz``) and
   return those of the fine-k-means sample: all samples when there are at most
   ``FINE_FIT_SAMPLES``, else a seeded sample of that many.
3. Fine k-means on that sample in the driver. With all samples in it, this is exactly
   the in-memory computation (``clustering.two_stage_kmeans``: same features, same
   clusters for the same seed); above, every sample is then given its nearest fine
   centroid by a Ray task per shard, and the fine clusters' counts weight the coarse step.
4. Coarse k-means of the fine centroids -> K clusters (largest first).
5. A Ray task per shard writes each cluster's samples (copied byte for byte, in data
   order) as one shard of that expert and the shard's assignments. When those pieces
   would be small (on average under 1/8 of ``data.shardSize``: many clusters), they are
   scratch instead, and a Ray task per output shard concatenates an expert's pieces into
   shards of ``data.shardSize``. Either way an expert's samples are in data order, which
   is all the training schedule depends on (not the shard boundaries).

``random``: each data shard's samples draw their cluster from ``default_rng([seed, shard])``.
"""
from __future__ import annotations

import io
import os

import numpy as np

from atoll.data import partition_tasks as pt
from atoll.data.distributed import map_tasks
from atoll.data.encode import LATENTS
from atoll.data.readers import committed
from atoll.data.report import agreement_from_table, print_summary, render_partition
from atoll.data.shards import commit_shards
from atoll.data.stage import DATA, check_resume, spec_hash
from atoll.data.storeref import StoreRef
from atoll.store import Store, join

PARTITION = "partition"
KIND = "atoll.partition"
#: samples fine k-means is fitted on (all of them up to this many)
FINE_FIT_SAMPLES = 100_000


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


def _rows_by_shard(ids: np.ndarray, starts: np.ndarray) -> list[list[int]]:
    """Sorted global ids -> the local rows of each shard."""
    s = np.searchsorted(starts, ids, side="right") - 1
    return [(ids[s == i] - starts[i]).tolist() for i in range(len(starts) - 1)]


class _Skipped:
    def __init__(self):
        self.shards: set[str] = set()
        self.samples = 0

    def add(self, res: dict) -> None:
        self.shards |= set(res["corrupt_shards"])

    def as_dict(self) -> dict:
        return {"corrupt_shards": sorted(self.shards), "skipped_samples": self.samples}


def _fit_state(spec, ref, shards_args, starts, n, clips, on_corrupt) -> dict:
    from atoll.data.features import fit_pca_rows, pca_sample

    f = spec.features
    if f.type == "pca":
        rows = _rows_by_shard(pca_sample(n, spec.seed), starts)
        parts = map_tasks(pt.pca_rows, [(ref, DATA, s, rows[s], clips, on_corrupt) for s in shards_args],
                          desc="partition: PCA sample", samples_of=len)
        return {"type": np.array("pca"), **fit_pca_rows(np.concatenate(parts), f.dims, spec.seed)}
    if f.type == "minilm":
        return {"type": np.array("minilm")}
    if f.type in ("dinov2", "clip"):
        from atoll.data.features import pretrained_state

        return pretrained_state(f)
    return {"type": np.array("torchscript"), "path": np.array(f.path), "batch_size": np.array(f.batch_size)}


def _task_device(f) -> tuple[str | None, float]:
    """(device inside each features task, GPUs each task asks Ray for): an image encoder runs on the
    GPU Ray gives the task when ``features.device`` resolves to one here, else on the CPU."""
    if f.type not in ("dinov2", "clip"):
        return None, 0
    from atoll.devices import for_stage

    return ("cuda:0", 1) if for_stage(f.device).is_cuda else ("cpu", 0)


def _kmeans(spec, ref, data_m, starts, clips, on_corrupt, skipped) -> tuple[list[dict], dict]:
    """Steps 1-4: (how each shard's samples map to clusters, centroids.npz arrays)."""
    from threadpoolctl import threadpool_limits

    from atoll.data.clustering import fit_coarse, fit_fine

    n, shards = data_m["count"], range(len(data_m["shards"]))
    if spec.features.type == "minilm" and data_m.get("captions", n) < n:
        from atoll.data.errors import DataError

        raise DataError("partition.features.type 'minilm' needs a caption for every sample, and this data "
                        "has samples without one; add captions or use features.type 'pca'")
    state = _fit_state(spec, ref, shards, starts, n, clips, on_corrupt)
    everything = n <= FINE_FIT_SAMPLES
    fit = None if everything else _rows_by_shard(
        np.sort(np.random.default_rng([spec.seed, 2]).choice(n, FINE_FIT_SAMPLES, replace=False)), starts)
    feats, counts = {}, {}
    device, gpus = _task_device(spec.features)

    def got(i, res):
        feats[i], counts[i] = res["fit"], res["count"]
        skipped.add(res)

    map_tasks(pt.features, [(ref, DATA, s, state, None if fit is None else fit[s], clips, on_corrupt,
                             compute_threads(), device) for s in shards], num_gpus=gpus,
              desc=f"partition: {spec.features.type} features", on_result=got, samples_of=lambda r: r["count"])
    x = np.concatenate([f for f in (feats.pop(s) for s in shards) if len(f)])
    with threadpool_limits(compute_threads()):
        centroids, fine_of = fit_fine(x, spec.fine_clusters, spec.seed, spec.k)
    del x
    if everything:  # the fine labels of every sample come from the fit itself, as in memory
        bounds = np.cumsum([0] + [counts[s] for s in shards])
        fine = [fine_of[bounds[s]:bounds[s + 1]] for s in shards]
        fine_counts = np.bincount(fine_of, minlength=len(centroids))
    else:
        total = np.zeros(len(centroids), np.int64)

        def add(i, c):
            total.__iadd__(c)

        map_tasks(pt.fine_counts, [(ref, s, centroids, compute_threads()) for s in shards],
                  desc="partition: nearest fine centroid", on_result=add)
        fine, fine_counts = [None] * len(shards), total
    with threadpool_limits(compute_threads()):
        f2c = fit_coarse(centroids, fine_counts, spec.k, spec.seed)
    how = [{"f2c": f2c, "fine": fine[s]} for s in shards]
    cents = {"fine_centroids": centroids, "fine_to_coarse": f2c, "fine_counts": fine_counts.astype(np.int64),
             **{f"feat_{k}": v for k, v in state.items()}}
    return how, cents


def _random(spec, data_m) -> list[dict]:
    from atoll.data.clustering import relabel_by_size

    sizes = np.zeros(spec.k, np.int64)
    for s, e in enumerate(data_m["shards"]):
        sizes += np.bincount(np.random.default_rng([spec.seed, s]).integers(0, spec.k, e["count"]), minlength=spec.k)
    return [{"random": relabel_by_size(sizes)}] * len(data_m["shards"])


def run_partition(job, run: Store) -> dict:
    """Clusters ``run/data`` into ``job.spec.partition.k`` experts; returns the committed manifest."""
    spec, on_corrupt = job.spec.partition, job.spec.data.on_corrupt
    data_m = committed(run, DATA)
    lat_m = committed(run, LATENTS) if job.spec.latents.enabled else None
    digest = spec_hash({"data": data_m["spec_hash"], "shards": [s["sha256"] for s in data_m["shards"]],
                        "partition": spec.model_dump(mode="json"),
                        **({"latents": lat_m["spec_hash"]} if lat_m else {})})
    done = check_resume(run, PARTITION, digest, "partition")
    if done is not None:
        return done
    run.delete_prefix(PARTITION)  # leftovers of an interrupted run; nothing committed is lost
    k, names, ref = spec.k, data_m.get("class_names"), StoreRef.of(run)
    clips = job.spec.data.source.type == "moving-clips"
    starts = np.concatenate([[0], np.cumsum([e["count"] for e in data_m["shards"]])]).astype(np.int64)
    skipped = _Skipped()
    if spec.method == "random":
        how, cents = _random(spec, data_m), {}
    else:
        how, cents = _kmeans(spec, ref, data_m, starts, clips, on_corrupt, skipped)
    experts, summary = _write_experts(job, run, ref, data_m, how, clips, on_corrupt, skipped, digest, lat_m)
    counts = summary["counts"]
    coarse = (summary["sums"] / np.maximum(counts, 1)[:, None]).astype(np.float32) if summary["sums"] is not None \
        else np.zeros((k, 1), np.float32)
    run.put_bytes(join(PARTITION, "centroids.npz"), npz_bytes(method=np.array(spec.method), k=np.array(k),
                                                              coarse_centroids=coarse, **cents))
    skipped.samples = int(data_m["count"] - counts.sum())
    manifest = {
        "kind": KIND, "spec_hash": digest, "spec": spec.model_dump(mode="json"), "method": spec.method, "k": k,
        "features": spec.features.type if spec.method == "kmeans" else None,
        "features_input": "object-centred frame mean of each clip" if clips else "images",
        "count": int(counts.sum()), "cluster_sizes": counts.tolist(), "experts": experts,
        "num_fine": len(cents["fine_centroids"]) if cents else None,
        "fine_fit_samples": min(data_m["count"], FINE_FIT_SAMPLES) if cents else None,
        "fine_to_coarse": cents["fine_to_coarse"].tolist() if cents else None,
        "agreement": agreement_from_table(summary["table"]), "skipped": skipped.as_dict(),
        "class_names": names, "files": {"centroids": "centroids.npz", "assignments": "assignments/shard-*.npz",
                                        "picture": "partition.png"},
    }
    picks = [np.stack([im for _, im in p]) if p else np.zeros((0, 1, 1, 1), np.uint8) for p in summary["pics"]]
    run.put_bytes(join(PARTITION, "partition.png"), render_partition(picks, manifest, names))
    manifest = run.commit(PARTITION, manifest)
    print_summary(manifest, names)
    return manifest


def _write_experts(job, run, ref, data_m, how, clips, on_corrupt, skipped, digest, lat_m=None) -> tuple[list[dict], dict]:
    """Step 5: pieces per (data shard, cluster), then each expert's shards; returns its artifacts and the sums.
    With ``lat_m`` (latent space) the experts' shards hold the samples' latent records instead of images."""
    spec = job.spec.partition
    k, nshards = spec.k, len(data_m["shards"])
    summary = {"counts": np.zeros(k, np.int64), "table": None, "sums": None, "pics": [[] for _ in range(k)]}
    pieces: list[list[dict | None]] = [[None] * nshards for _ in range(k)]

    def got(s, res):
        summary["counts"] += res["counts"]
        summary["table"] = res["table"] if summary["table"] is None else summary["table"] + res["table"]
        if res["sums"] is not None:
            summary["sums"] = res["sums"] if summary["sums"] is None else summary["sums"] + res["sums"]
        for c in range(k):
            pieces[c][s] = res["pieces"][c]
            summary["pics"][c] = sorted(summary["pics"][c] + res["pics"][c], key=lambda p: p[0])[:pt.PIC_PER_CLUSTER]
        skipped.add(res)

    shard_size = int(data_m.get("shard_size") or 10000)
    # pieces of at least 1/8 of a shard (on average) are the experts' shards; smaller ones are merged
    direct = data_m["count"] / max(1, nshards) / k >= shard_size / 8
    out = [expert_prefix(c) if direct else pt.pieces_prefix(c) for c in range(k)]
    map_tasks(pt.write_pieces, [(ref, DATA, s, k, int(data_m["num_classes"]), how[s], spec.seed, clips, on_corrupt,
                                 out, LATENTS if lat_m else None) for s in range(nshards)],
              desc="partition: assign + " + ("expert shards" if direct else "pieces"), on_result=got,
              samples_of=lambda r: int(r["counts"].sum()))
    entries: list[list] = [[(s, p) for s, p in enumerate(pieces[c]) if p is not None] for c in range(k)]
    if not direct:
        jobs = []
        for c in range(k):
            commit_shards(run, pt.pieces_prefix(c), [p for _, p in entries[c]])
            jobs += [(ref, c, q, shard_size, expert_prefix(c)) for q in range(-(-int(summary["counts"][c]) // shard_size))]
        entries = [[] for _ in range(k)]
        map_tasks(pt.merge_pieces, jobs, desc="partition: expert shards",
                  on_result=lambda i, e: entries[jobs[i][1]].append((jobs[i][2], e)), samples_of=lambda e: e["count"])
    experts = []
    for c in range(k):
        m = commit_shards(run, expert_prefix(c), [e for _, e in sorted(entries[c], key=lambda t: t[0])],
                          kind=f"{KIND}.expert", expert=c, spec_hash=digest,
                          image_shape=(lat_m or data_m)["image_shape"], latents=lat_m["vae"] if lat_m else None,
                          num_classes=data_m["num_classes"], class_names=data_m.get("class_names"))
        experts.append({"id": c, "prefix": expert_prefix(c), "count": m["count"], "num_shards": m["num_shards"]})
    run.delete_prefix(pt.WORK)
    return experts, summary


def read_assignments(run: Store) -> tuple[np.ndarray, np.ndarray]:
    """(keys, cluster ids) of every data sample, in data order (for inspection; small runs: it is O(N))."""
    committed(run, PARTITION)
    keys, cluster = [], []
    for key in run.list(join(PARTITION, "assignments")):
        z = np.load(io.BytesIO(run.get_bytes(key)), allow_pickle=False)
        keys.append(z["keys"])
        cluster.append(z["cluster"])
    return (np.concatenate(keys), np.concatenate(cluster)) if keys else (np.zeros(0, str), np.zeros(0, np.int64))


def assign_new(run: Store, images: np.ndarray | None = None, captions: list[str] | None = None) -> np.ndarray:
    """Expert ids of new samples (images uint8 [N,C,H,W] and/or captions) from the saved partition."""
    from atoll.data.clustering import assign
    from atoll.data.errors import DataError
    from atoll.data.features import embed

    committed(run, PARTITION)
    z = dict(np.load(io.BytesIO(run.get_bytes(join(PARTITION, "centroids.npz")))))
    if "fine_centroids" not in z:
        raise DataError(f"the partition at {run.url(PARTITION)} is {z['method']}; new samples have no cluster. "
                        "Use partition.method: kmeans")
    state = {n[5:]: v for n, v in z.items() if n.startswith("feat_")}
    return assign(embed(state, images=images, captions=captions), z["fine_centroids"], z["fine_to_coarse"])
