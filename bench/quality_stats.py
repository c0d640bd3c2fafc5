"""95% confidence intervals for the quality bench's FIDs: a bootstrap over the generated samples.

A row's FID is computed from N generated feature vectors against the real test set's statistics.
Resampling the generated set with replacement (B times) gives the spread of FID that comes from *which*
samples were drawn. The real set (10k, 20x the generated rows) is held fixed: every row is compared with
the same one, and its own sampling noise is a small share of the variance. Resampled sets repeat samples,
which shifts bootstrap FIDs upward, so the interval is the bootstrap's spread re-centred on the point
estimate ``F``: ``[F - (q50 - q2.5), F + (q97.5 - q50)]``.

Two rows scored on the same labels and the same initial noise (every row of the bench: sample ``i``
starts from the noise of seed ``(seed, i)`` for label ``i % 10``) are compared *paired*: the same
resampled indices for both, so the interval of the difference excludes the noise the rows share, and the
upward shift cancels. A difference whose interval excludes 0 is called a win or a loss, otherwise a tie.

What it does not cover: another training run (a new training seed) would move every row as well.
"""
from __future__ import annotations

import numpy as np

B_DEFAULT = 200


def _stats(f: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = f[idx]
    return x.mean(0), np.cov(x, rowvar=False)


def _real(real: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, covariance, its symmetric square root) of the real features, computed once."""
    mu, cov = _stats(real, np.arange(len(real)))
    w, v = np.linalg.eigh(cov)
    return mu, cov, (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _fid_fixed_real(mu, cov, real) -> float:
    mu_r, cov_r, root_r = real
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root_r @ cov @ root_r), 0, None)).sum()
    d = mu - mu_r
    return max(0.0, float(d @ d + np.trace(cov) + np.trace(cov_r) - 2.0 * tr_covmean))


def _recentred(point: float, boots) -> tuple[float, float]:
    q_lo, q_mid, q_hi = np.percentile(boots, [2.5, 50, 97.5])
    return point - (q_mid - q_lo), point + (q_hi - q_mid)


def fid_interval(fake: np.ndarray, real: np.ndarray, *, b: int = B_DEFAULT, seed: int = 0) -> dict:
    """``{fid, lo, hi}``: the FID of ``fake`` [N, D] against ``real`` [M, D] and its 95% bootstrap interval."""
    fake = np.asarray(fake, np.float64)
    r = _real(np.asarray(real, np.float64))
    point = _fid_fixed_real(*_stats(fake, np.arange(len(fake))), r)
    idx = np.random.default_rng(seed).integers(0, len(fake), size=(b, len(fake)))
    lo, hi = _recentred(point, [_fid_fixed_real(*_stats(fake, i), r) for i in idx])
    return {"fid": point, "lo": max(0.0, lo), "hi": hi}


def paired_difference(a: np.ndarray, b_feats: np.ndarray, real: np.ndarray, *, b: int = B_DEFAULT,
                      seed: int = 0) -> dict:
    """FID(a) - FID(b) with its 95% bootstrap interval, resampling the same indices of the two generated
    sets (same labels and noise per index); ``verdict``: ``a better`` / ``b better`` / ``tie`` (the
    interval contains 0)."""
    a, bf = np.asarray(a, np.float64), np.asarray(b_feats, np.float64)
    if len(a) != len(bf):
        raise ValueError(f"paired rows need the same samples; got {len(a)} and {len(bf)}")
    r = _real(np.asarray(real, np.float64))
    whole = np.arange(len(a))
    point = _fid_fixed_real(*_stats(a, whole), r) - _fid_fixed_real(*_stats(bf, whole), r)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(b, len(a)))
    boots = [_fid_fixed_real(*_stats(a, i), r) - _fid_fixed_real(*_stats(bf, i), r) for i in idx]
    lo, hi = _recentred(point, boots)
    verdict = "a better" if hi < 0 else "b better" if lo > 0 else "tie"
    return {"diff": point, "lo": lo, "hi": hi, "verdict": verdict}
