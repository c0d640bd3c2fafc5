"""The partition stage's work on one shard, run as Ray tasks (``atoll.data.partition`` drives them).

Every function reads one input shard (or one output shard's worth of pieces) from the
store and returns something small: the driver's memory does not grow with the data.
Scratch files go under ``partition/work/`` and are deleted before the stage commits.
"""
from __future__ import annotations

import io
import zlib

import numpy as np

from atoll.data.collection import Collection
from atoll.data.records import model_array
from atoll.data.shards import put_blocks
from atoll.data.storeref import StoreRef
from atoll.store import join

WORK = "partition/work"
PIC_PER_CLUSTER = 12


def features_key(s: int) -> str:
    return join(WORK, f"features-{s:05d}.npz")


def fine_key(s: int) -> str:
    return join(WORK, f"fine-{s:05d}.npy")


def pieces_prefix(c: int) -> str:
    return join(WORK, f"pieces/expert-{c:03d}")


def assignments_key(s: int) -> str:
    return f"partition/assignments/shard-{s:05d}.npz"


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _load(run, key: str) -> dict:
    return dict(np.load(io.BytesIO(run.get_bytes(key)), allow_pickle=False))


class Shard:
    """One input shard of ``data`` (or only some of its rows), read once: a ranged read, each sample
    checked against its crc32. ``raws[r]`` is row r's raw record (None: unreadable and skipped)."""

    def __init__(self, ref: StoreRef, prefix: str, s: int, on_corrupt: str, rows: list[int] | None = None):
        self.run = ref.open()
        self.col = Collection(self.run, [prefix], on_corrupt=on_corrupt)
        self.s, self.count = s, int(self.col.shards[s][2]["count"])
        if rows is None:
            self.raws = dict(enumerate(self.col.rows(s, 0, self.count))) if self.count else {}
        else:
            self.raws = dict(zip(rows, self.col.rows_at(s, rows)))

    def decoded(self):
        """(row ids that decode, images uint8 [n, C, H, W], labels, captions) of the rows read."""
        ids, images, labels, caps = [], [], [], []
        for r in sorted(self.raws):
            raw = self.raws[r]
            if raw is None:
                continue
            try:
                x, label, cap = model_array(raw)
            except Exception as err:  # CorruptShard: raised, or counted and skipped
                self.col.corrupt(self.s, err, range(r, r + 1))
                continue
            ids.append(r)
            images.append(x)
            labels.append(label)
            caps.append(cap)
        imgs = np.stack(images) if images else np.zeros((0, 1, 1, 1), np.uint8)
        return np.asarray(ids, np.int64), imgs, np.asarray(labels, np.int64), caps

    def skipped(self) -> dict:
        return {"corrupt_shards": list(self.col.stats["corrupt_shards"]), "skipped": self.col.stats["skipped_samples"]}


def _pooled(images: np.ndarray, clips: bool) -> np.ndarray:
    if clips and len(images):  # clips cluster on their object-centred frame mean
        from atoll.data.features import pool_clips

        return pool_clips(images)
    return images


def pca_rows(ref: StoreRef, prefix: str, s: int, rows: list[int], clips: bool, on_corrupt: str) -> np.ndarray:
    """The images (pooled for clips) of the PCA-fit sample's rows in shard ``s``."""
    _, images, _, _ = Shard(ref, prefix, s, on_corrupt, rows).decoded()
    return _pooled(images, clips)


def features(ref: StoreRef, prefix: str, s: int, state: dict, fit_rows: list[int] | None, clips: bool,
             on_corrupt: str, threads: int, device: str | None = None) -> dict:
    """Features of every readable sample of shard ``s`` -> ``work/features-s.npz``; returns the
    features of the fine-k-means sample's rows (``None``: all rows), the count, what was skipped."""
    from threadpoolctl import threadpool_limits

    from atoll.data.features import embed

    sh = Shard(ref, prefix, s, on_corrupt)
    ids, images, _, caps = sh.decoded()
    with threadpool_limits(threads):
        feats = embed(state, images=_pooled(images, clips), captions=caps, s3=ref.s3, device=device) \
            if len(ids) else np.zeros((0, 1), np.float32)
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    sh.run.put_bytes(features_key(s), _npz(features=feats, rows=ids))
    keep = np.ones(len(ids), bool) if fit_rows is None else np.isin(ids, np.asarray(fit_rows, np.int64))
    return {"count": len(ids), "fit": feats[keep], **sh.skipped()}


def fine_counts(ref: StoreRef, s: int, centroids: np.ndarray, threads: int) -> np.ndarray:
    """Nearest fine centroid of each sample of shard ``s`` -> ``work/fine-s.npy``; returns their counts."""
    from threadpoolctl import threadpool_limits

    from atoll.data.clustering import nearest

    run = ref.open()
    with threadpool_limits(threads):
        fine = nearest(_load(run, features_key(s))["features"], centroids)
    buf = io.BytesIO()
    np.save(buf, fine)
    run.put_bytes(fine_key(s), buf.getvalue())
    return np.bincount(fine, minlength=len(centroids))


def _picks(keys: list[str], cluster: np.ndarray, k: int, seed: int) -> list[list[tuple[int, int]]]:
    """Per cluster, the (hash, row) of the PIC_PER_CLUSTER samples with the smallest seeded key hash:
    a sample of each cluster that merges across shards (keep the smallest hashes overall)."""
    out: list[list[tuple[int, int]]] = [[] for _ in range(k)]
    for r, (key, c) in enumerate(zip(keys, cluster.tolist())):
        out[c].append((zlib.crc32(f"{seed}:{key}".encode()), r))
    return [sorted(v)[:PIC_PER_CLUSTER] for v in out]


def write_pieces(ref: StoreRef, prefix: str, s: int, k: int, num_classes: int, how: dict, seed: int,
                 clips: bool, on_corrupt: str, out: list[str], latents: str | None = None) -> dict:
    """Assigns every readable sample of shard ``s`` to its cluster and writes, per cluster ``c``, the
    samples' records (copied byte for byte, in data order) as shard ``s`` of ``out[c]`` (the expert's
    artifact, or its pieces to merge), and the keys' clusters to ``partition/assignments/shard-s.npz``.
    ``how``: ``{"f2c", "fine"}`` (kmeans; ``fine`` None = read ``work/fine-s.npy``) or ``{"random": relabel}``.
    ``latents``: the prefix of the encode stage's shards; the experts then get each sample's latent record.
    Returns per-cluster counts, the cluster x label table, feature sums and picture candidates."""
    sh = Shard(ref, prefix, s, on_corrupt)
    run = sh.run
    rows = np.asarray([r for r, raw in sorted(sh.raws.items()) if raw is not None], np.int64)
    if "random" in how:
        draw = np.random.default_rng([seed, s]).integers(0, k, sh.count)
        cluster = np.asarray(how["random"], np.int64)[draw[rows]]
        feats = None
    else:
        z = _load(run, features_key(s))
        fine = np.load(io.BytesIO(run.get_bytes(fine_key(s)))) if how.get("fine") is None else np.asarray(how["fine"])
        rows, feats = z["rows"], z["features"]  # the samples that decoded when features were computed
        cluster = np.asarray(how["f2c"], np.int64)[fine]
    raws = [sh.raws[r] for r in rows.tolist()]
    keys = [raw["__key__"] for raw in raws]
    blocks = [raw["__tar__"] for raw in raws]
    if latents is not None:  # the same samples' latents (shard s of the encode stage, matched by key)
        lat = {raw["__key__"]: raw["__tar__"] for raw in Shard(ref, latents, s, on_corrupt).raws.values() if raw}
        keep = [i for i, key in enumerate(keys) if key in lat]  # a sample the encode stage could not read is skipped
        rows, cluster, raws, keys = rows[keep], cluster[keep], [raws[i] for i in keep], [keys[i] for i in keep]
        feats = None if feats is None else feats[keep]
        blocks = [lat[key] for key in keys]
    labels = np.asarray([int(raw["cls"].decode()) if "cls" in raw else -1 for raw in raws], np.int64)
    pieces = []
    for c in range(k):
        sel = np.flatnonzero(cluster == c)
        pieces.append(put_blocks(run, out[c], s, [blocks[i] for i in sel]) if len(sel) else None)
    run.put_bytes(assignments_key(s), _npz(keys=np.asarray(keys), cluster=cluster))
    table = np.zeros((k, max(num_classes, 1)), np.int64)
    has = (labels >= 0) & (labels < table.shape[1])
    np.add.at(table, (cluster[has], labels[has]), 1)
    sums = None
    if feats is not None and len(feats):
        sums = np.zeros((k, feats.shape[1]), np.float64)
        np.add.at(sums, cluster, feats.astype(np.float64))
    pics = []
    for c, cand in enumerate(_picks(keys, cluster, k, seed)):
        imgs = _pooled(np.stack([model_array(raws[r])[0] for _, r in cand]), clips) if cand else None
        pics.append([(h, imgs[j]) for j, (h, _) in enumerate(cand)])
    return {"pieces": pieces, "counts": np.bincount(cluster, minlength=k), "table": table, "sums": sums,
            "pics": pics, **sh.skipped()}


def merge_pieces(ref: StoreRef, c: int, q: int, shard_size: int, out_prefix: str) -> dict:
    """Output shard ``q`` of expert ``c``: samples ``q*shard_size ...`` of its pieces, in data order."""
    run = ref.open()
    col = Collection(run, [pieces_prefix(c)])
    lo, hi = q * shard_size, min((q + 1) * shard_size, col.n)
    blocks = [raw["__tar__"] for s, a, b in col.spans(lo, hi) for raw in col.rows(s, a, b)]
    return put_blocks(run, out_prefix, q, blocks)
