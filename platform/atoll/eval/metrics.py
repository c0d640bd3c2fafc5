"""Sample-quality metrics in a classifier's feature space.

* FID: the Frechet distance between Gaussians fitted to two feature sets
  (Heusel et al. 2017), computed as in pytorch-fid.
* Class accuracy: how often the classifier recognises the class a sample was
  generated for.
* Improved precision and recall (Kynkaenniemi et al. 2019): each set's
  manifold is the union of balls around its points with the radius of the
  k-th nearest neighbour (k=3); precision is the share of generated samples
  inside the real manifold, recall the share of real samples inside the
  generated one.
* Density and coverage (Naeem et al. 2020, k=5): density counts how many real
  balls hold each generated sample (/k, ~1 for samples like the real ones),
  coverage is the share of real samples whose ball holds a generated one.

Why both: precision over-counts when the real set has outliers. Their k-NN
balls are large, and a generated set that collapses to one point next to such
an outlier is "100% precise" (``test_metrics`` builds that case). It is not a
corner case: uniform-noise images all map to nearly one point of the
classifier's feature space (spread 0.2 against real neighbour distances >= 4),
and whether that point falls inside one outlier's ball (radius 6.5 where the
median is 4.5) depends on the classifier's weights, hence on the CPU's float
summation order: noise scored precision 0.48 on one machine and 0.00 on
another. Density (0.15 / 0.00) and coverage (0.002 / 0.000) tell the two
machines' answers apart from real data (0.98 / 0.97) on both.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

from atoll.eval.classifier import Classifier, features_and_predictions, predict
from atoll.eval.errors import EvalError
from atoll.eval.images import to_labels

PR_BLOCK = 1024


def _sqrtm(a: np.ndarray) -> np.ndarray:
    out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out  # scipy < 1.16 may return (sqrtm, errest)


def _trace_sqrt_product_eigh(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr sqrt(s1 s2) through symmetric eigendecompositions (stable for singular covariances)."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(s1 + s2 - 2 sqrt(s1 s2)) for means [D] and covariances [D, D].

    As in pytorch-fid: ``scipy.linalg.sqrtm`` of the product; if that is not
    finite, ``eps`` is added to both diagonals; a complex result with a
    negligible imaginary part is taken as real. Where the imaginary part is not
    negligible (near-singular covariances from few samples), the trace is
    recomputed with symmetric eigendecompositions instead of failing. The result
    is clipped at 0 (negative values are rounding noise).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise EvalError(f"Frechet distance needs means [D] and covariances [D, D] of the same D; got "
                        f"mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * eps
        covmean = _sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            tr_covmean = float(np.trace(covmean.real))
        else:
            tr_covmean = _trace_sqrt_product_eigh(s1, s2)
    else:
        tr_covmean = float(np.trace(covmean))
    if not np.isfinite(tr_covmean):
        tr_covmean = _trace_sqrt_product_eigh(s1, s2)
    return max(0.0, float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean))


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features [N, D] (N >= 2) -> (mean [D], covariance [D, D]), float64."""
    f = np.asarray(feats, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise EvalError(f"features must be [N, D] with N >= 2 samples, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets [N, D] and [M, D] (use a few thousand samples each for a stable value)."""
    if np.ndim(a) == 2 and np.ndim(b) == 2 and np.shape(a)[1] != np.shape(b)[1]:
        raise EvalError(f"feature sets differ in width: {np.shape(a)} vs {np.shape(b)}; use one feature extractor")
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def class_accuracy(model: Classifier, images, intended_labels) -> float:
    """Share of images [N, C, H, W] the classifier assigns to their intended class [N]."""
    pred = predict(model, images)
    return float((pred == to_labels(intended_labels, len(pred), name="intended_labels")).mean())


def _subsample(f: np.ndarray, n: int, seed: int) -> torch.Tensor:
    f = np.asarray(f, np.float32)
    if len(f) > n:
        f = f[np.sort(np.random.default_rng(seed).choice(len(f), n, replace=False))]
    return torch.from_numpy(np.ascontiguousarray(f))


def knn_radii(f: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of f [N, D] to its k-th nearest other row -> [N]."""
    return torch.cat([torch.cdist(f[i:i + PR_BLOCK], f).kthvalue(k + 1, dim=1).values  # +1: itself at 0
                      for i in range(0, len(f), PR_BLOCK)])


def _coverage(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of points inside at least one ball (center, radius)."""
    inside = [(torch.cdist(points[i:i + PR_BLOCK], centers) <= radii[None]).any(dim=1)
              for i in range(0, len(points), PR_BLOCK)]
    return float(torch.cat(inside).float().mean())


def precision_recall(real_feats: np.ndarray, fake_feats: np.ndarray, *, k: int = 3,
                     max_samples: int = 5000, seed: int = 0) -> tuple[float, float]:
    """Improved precision and recall of fake [M, D] against real [N, D] features, each in [0, 1].

    Both sets are subsampled (seeded) to at most ``max_samples`` rows; the cost
    is O(N * M) distances. Each set needs more than ``k`` rows.
    """
    real, fake = _subsample(real_feats, max_samples, seed), _subsample(fake_feats, max_samples, seed + 1)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise EvalError(f"precision/recall needs features [N, D] and [M, D]; got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(len(real), len(fake)) <= k:
        raise EvalError(f"precision/recall with k={k} needs more than {k} samples per set; "
                        f"got {len(real)} real and {len(fake)} generated")
    with torch.no_grad():
        precision = _coverage(fake, real, knn_radii(real, k))
        recall = _coverage(real, fake, knn_radii(fake, k))
    return precision, recall


def density_coverage(real_feats: np.ndarray, fake_feats: np.ndarray, *, k: int = 5,
                     max_samples: int = 5000, seed: int = 0) -> tuple[float, float]:
    """Density (>= 0, ~1 for a set like the real one) and coverage (in [0, 1]) of fake [M, D] against
    real [N, D] features (Naeem et al. 2020). Both are robust to outliers in the real set, unlike
    precision: a generated point inside one outlier's ball adds 1/k to density, and coverage counts
    real points, so a collapsed set covers ~1/N of them. Subsampled (seeded) like ``precision_recall``.
    """
    real, fake = _subsample(real_feats, max_samples, seed), _subsample(fake_feats, max_samples, seed + 1)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise EvalError(f"density/coverage needs features [N, D] and [M, D]; got {tuple(real.shape)} and {tuple(fake.shape)}")
    if len(real) <= k or len(fake) < 1:
        raise EvalError(f"density/coverage with k={k} needs more than {k} real samples and one generated; "
                        f"got {len(real)} real and {len(fake)} generated")
    with torch.no_grad():
        radii = knn_radii(real, k)
        inside_count = torch.zeros(len(fake), dtype=torch.float64)
        covered = torch.zeros(len(real), dtype=torch.bool)
        for i in range(0, len(fake), PR_BLOCK):
            inside = torch.cdist(fake[i:i + PR_BLOCK], real) <= radii[None]
            inside_count[i:i + PR_BLOCK] = inside.sum(dim=1).double()
            covered |= inside.any(dim=0)
    return float(inside_count.mean() / k), float(covered.float().mean())


def evaluate_samples(images, labels, real_images, real_labels, classifier: Classifier, *,
                     k: int = 3, max_pr_samples: int = 5000) -> dict:
    """Scores generated images [N, C, H, W] against real ones [M, C, H, W] in the classifier's feature space.

    ``labels`` [N]: the class each sample was generated for (None for
    unconditional samples: no class accuracy). ``real_labels`` [M] (or None)
    gives the classifier's accuracy on the real images, the ceiling for
    ``class_accuracy``. Returns ``{fid, class_accuracy, precision, recall, density,
    coverage, real_class_accuracy, n_samples, n_real}`` (``k`` is precision/recall's;
    density/coverage use their authors' k=5).
    """
    fake_f, fake_pred = features_and_predictions(classifier, images)
    real_f, real_pred = features_and_predictions(classifier, real_images)
    precision, recall = precision_recall(real_f, fake_f, k=k, max_samples=max_pr_samples)
    density, coverage = density_coverage(real_f, fake_f, max_samples=max_pr_samples)

    def accuracy(pred: np.ndarray, wanted, name: str) -> float | None:
        return None if wanted is None else float((pred == to_labels(wanted, len(pred), name=name)).mean())

    return {
        "fid": fid_from_features(real_f, fake_f),
        "class_accuracy": accuracy(fake_pred, labels, "labels"),
        "precision": precision,
        "recall": recall,
        "density": density,
        "coverage": coverage,
        "real_class_accuracy": accuracy(real_pred, real_labels, "real_labels"),
        "n_samples": len(fake_f),
        "n_real": len(real_f),
    }
