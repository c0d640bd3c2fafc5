"""DDM two-stage clustering and the random baseline.

Fine k-means (``fine`` centroids) on the features, then k-means of the fine
centroids weighted by their counts into ``k`` coarse clusters; a sample's
cluster is its fine centroid's coarse cluster. Identical feature rows are
clustered once with their count as weight (captions from class names give few
distinct rows). Coarse ids are ordered by size, largest first. Seeded, so a
fixed seed gives a fixed assignment.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atoll.data.errors import DataError


@dataclass
class Clustering:
    assignment: np.ndarray            # int64 [N]: coarse cluster of each sample
    coarse_centroids: np.ndarray      # float32 [K, D] (mean feature of each cluster)
    fine_centroids: np.ndarray | None = None  # float32 [F, D]
    fine_to_coarse: np.ndarray | None = None  # int64 [F]
    fine_counts: np.ndarray | None = None     # int64 [F]


def _by_size(assignment: np.ndarray, k: int) -> np.ndarray:
    """A relabelling of 0..k-1 so that cluster 0 is the largest (ties: lower old id first)."""
    return relabel_by_size(np.bincount(assignment, minlength=k))


def relabel_by_size(sizes: np.ndarray) -> np.ndarray:
    """``relabel[old id] = new id`` with the largest cluster first (ties: lower old id first)."""
    k = len(sizes)
    order = sorted(range(k), key=lambda c: (-sizes[c], c))
    relabel = np.empty(k, np.int64)
    relabel[order] = np.arange(k)
    return relabel


def _means(x: np.ndarray, assignment: np.ndarray, k: int) -> np.ndarray:
    sums = np.zeros((k, x.shape[1]), np.float64)
    np.add.at(sums, assignment, x)
    return (sums / np.maximum(np.bincount(assignment, minlength=k), 1)[:, None]).astype(np.float32)


#: rows the fine k-means++ seeding looks at (it is sequential: 1 step per centroid)
INIT_SAMPLES = 10000


def fine_kmeans(x: np.ndarray, weight: np.ndarray, n: int, seed: int, max_iter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [n, D], label of each row) by weighted Lloyd k-means, seeded by
    k-means++ on a seeded sample of the rows.

    The k-means++ seeding runs single-threaded: it is a long chain of small
    parallel regions, and OpenMP barriers on a busy machine make it 20x slower.
    """
    from sklearn.cluster import KMeans, kmeans_plusplus
    from threadpoolctl import threadpool_limits

    if len(x) <= n:
        return x.astype(np.float32), np.arange(len(x))
    rng = np.random.default_rng(seed)
    p = weight / weight.sum()
    m = min(len(x), max(INIT_SAMPLES, 4 * n))
    idx = np.sort(rng.choice(len(x), m, replace=False, p=p if m < len(x) else None))
    with threadpool_limits(1):
        init, _ = kmeans_plusplus(x[idx], n, random_state=int(rng.integers(2**31 - 1)))
    km = KMeans(n_clusters=n, init=init, n_init=1, max_iter=max_iter, random_state=seed)
    km.fit(x, sample_weight=weight)
    return km.cluster_centers_.astype(np.float32), km.labels_.astype(np.int64)


def fit_fine(features: np.ndarray, fine: int, seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Fine k-means of the rows (identical rows clustered once, weighted by their count):
    (centroids [F, D], fine label of each row)."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    uniq, inverse, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    if len(uniq) < k:
        raise DataError(f"the features have only {len(uniq)} distinct values, fewer than partition.k ({k}); "
                        "lower partition.k or use other partition.features")
    centroids, uniq_label = fine_kmeans(uniq, counts.astype(np.float32), fine, seed)
    return centroids, uniq_label[inverse.reshape(-1)]


def fit_coarse(centroids: np.ndarray, fine_counts: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The coarse cluster of each fine centroid (k-means of the centroids weighted by their
    sample counts), relabelled so that cluster 0 holds the most samples."""
    from sklearn.cluster import KMeans

    used = fine_counts > 0
    if used.sum() < k:
        raise DataError(f"only {int(used.sum())} fine clusters are non-empty, fewer than partition.k ({k}); "
                        "raise partition.fineClusters or lower partition.k")
    coarse = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(centroids[used], sample_weight=fine_counts[used])
    f2c = coarse.predict(centroids).astype(np.int64)
    return relabel_by_size(np.bincount(f2c, weights=fine_counts, minlength=k))[f2c]


def two_stage_kmeans(features: np.ndarray, k: int, fine: int, seed: int) -> Clustering:
    """The whole DDM clustering of features held in memory (the partition stage runs the same
    steps over Ray tasks, ``atoll.data.partition``)."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    centroids, fine_of = fit_fine(x, fine, seed, k)
    fine_counts = np.bincount(fine_of, minlength=len(centroids))
    f2c = fit_coarse(centroids, fine_counts, k, seed)
    assignment = f2c[fine_of]
    return Clustering(assignment=assignment, coarse_centroids=_means(x, assignment, k),
                      fine_centroids=centroids, fine_to_coarse=f2c, fine_counts=fine_counts.astype(np.int64))


def random_partition(features: np.ndarray, k: int, seed: int) -> Clustering:
    """Seeded uniform assignment (the paper's baseline)."""
    assignment = np.random.default_rng(seed).integers(0, k, len(features)).astype(np.int64)
    assignment = _by_size(assignment, k)[assignment]
    return Clustering(assignment=assignment, coarse_centroids=_means(features.astype(np.float32), assignment, k))


def nearest(features: np.ndarray, centroids: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Index of the nearest centroid of each row."""
    c = centroids.astype(np.float32)
    cn = (c * c).sum(1)
    out = []
    for i in range(0, len(features), batch):
        f = features[i:i + batch].astype(np.float32)
        out.append(np.argmin(cn[None, :] - 2.0 * f @ c.T, axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def assign(features: np.ndarray, fine_centroids: np.ndarray, fine_to_coarse: np.ndarray,
           batch: int = 8192) -> np.ndarray:
    """Coarse cluster of new samples: the cluster of their nearest fine centroid."""
    return fine_to_coarse[nearest(features, fine_centroids, batch)]
