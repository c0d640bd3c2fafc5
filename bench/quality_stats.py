"""95% confidence intervals for the quality bench's FIDs: a bootstrap over the samples.

A row's FID is computed from N generated and M real feature vectors. Resampling both sets with
replacement (B times) gives the spread of FID that comes from *which* samples were drawn. Resampled
sets repeat samples, which biases FID upward, so the interval is the basic bootstrap one,
``[2 F - q97.5, 2 F - q2.5]`` around the point estimate ``F`` (it corrects that first-order bias).

Two rows scored on the same labels and the same initial noise (every row of the bench: sample ``i``
starts from the noise of seed ``(seed, i)`` for label ``i % 10``) are compared *paired*: the same
resampled indices for both, so the interval of the difference excludes the shared noise. A difference
whose interval excludes 0 is called a win or a loss, otherwise a tie.

What it does not cover: another training run (a new training seed) would move every row as well.
"""
from __future__ import annotations

import numpy as np

from atoll.eval.metrics import frechet_distance

B_DEFAULT = 200


def _stats(f: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = f[idx]
    return x.mean(0), np.cov(x, rowvar=False)


def _indices(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    return rng.integers(0, n, size=(b, n))


def fid_interval(fake: np.ndarray, real: np.ndarray, *, b: int = B_DEFAULT, seed: int = 0) -> dict:
    """``{fid, lo, hi}``: the FID of ``fake`` [N, D] against ``real`` [M, D] and its 95% basic-bootstrap interval."""
    fake, real = np.asarray(fake, np.float64), np.asarray(real, np.float64)
    point = frechet_distance(*_stats(fake, np.arange(len(fake))), *_stats(real, np.arange(len(real))))
    rng = np.random.default_rng(seed)
    fi, ri = _indices(rng, len(fake), b), _indices(rng, len(real), b)
    boots = np.array([frechet_distance(*_stats(fake, fi[j]), *_stats(real, ri[j])) for j in range(b)])
    q_lo, q_hi = np.percentile(boots, [2.5, 97.5])
    return {"fid": point, "lo": max(0.0, 2 * point - q_hi), "hi": 2 * point - q_lo}


def paired_difference(a: np.ndarray, b_feats: np.ndarray, real: np.ndarray, *, b: int = B_DEFAULT,
                      seed: int = 0) -> dict:
    """FID(a) - FID(b) with its 95% basic-bootstrap interval, resampling the same indices of the two
    generated sets (same labels and noise per index) and the same real indices; ``verdict``:
    ``a better`` / ``b better`` / ``tie`` (the interval contains 0)."""
    a, bf, real = (np.asarray(x, np.float64) for x in (a, b_feats, real))
    if len(a) != len(bf):
        raise ValueError(f"paired rows need the same samples; got {len(a)} and {len(bf)}")
    full_r = _stats(real, np.arange(len(real)))
    point = frechet_distance(*_stats(a, np.arange(len(a))), *full_r) - \
        frechet_distance(*_stats(bf, np.arange(len(bf))), *full_r)
    rng = np.random.default_rng(seed)
    gi, ri = _indices(rng, len(a), b), _indices(rng, len(real), b)
    boots = []
    for j in range(b):
        r = _stats(real, ri[j])
        boots.append(frechet_distance(*_stats(a, gi[j]), *r) - frechet_distance(*_stats(bf, gi[j]), *r))
    q_lo, q_hi = np.percentile(boots, [2.5, 97.5])
    lo, hi = 2 * point - q_hi, 2 * point - q_lo
    verdict = "a better" if hi < 0 else "b better" if lo > 0 else "tie"
    return {"diff": point, "lo": lo, "hi": hi, "verdict": verdict}
