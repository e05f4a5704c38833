"""Significance of prediction scores: permutation / circular-shift nulls and FDR.

The null of :func:`permutation_null` is built for the SAME score as the observed one (pooled r
for images, per-fold r averaged over folds for time series), so that the p-value answers "could
a model unrelated to this voxel have scored this well under this scoring?".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PermutationResult", "fdr_bh", "permutation_null"]


@dataclass(frozen=True)
class PermutationResult:
    """Result of :func:`permutation_null`.

    Attributes
    ----------
    r : ndarray of shape (n_voxels,)
        Observed score (pooled r for ``kind="permute"``, mean per-fold r for ``"circular"``).
    p : ndarray of shape (n_voxels,)
        One-sided p-value ``(1 + #(null >= r)) / (1 + n_permutations)`` (null values within
        1e-6 below r count as ties); NaN where r is NaN.
    null_mean : ndarray of shape (n_voxels,)
        Mean of the null distribution.
    null_p95 : ndarray of shape (n_voxels,)
        95th percentile of the null distribution.
    n_permutations : int
        Size of the null.
    kind : str
        ``"permute"`` or ``"circular"``.
    null : ndarray of shape (n_permutations, n_voxels) or None
        The null scores, only with ``return_null=True``.
    """

    r: np.ndarray
    p: np.ndarray
    null_mean: np.ndarray
    null_p95: np.ndarray
    n_permutations: int
    kind: str
    null: np.ndarray | None = None


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre columns and scale them to unit norm; also return which columns are usable."""
    x = x - x.mean(axis=0)
    norm = np.sqrt((x * x).sum(axis=0))
    ok = norm > 0
    return x / np.where(ok, norm, 1.0), ok


def _check_folds(test_folds, n: int) -> list[np.ndarray]:
    if test_folds is None:
        return [np.arange(n)]
    folds = []
    for k, idx in enumerate(test_folds):
        idx = np.asarray(idx)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"test fold {k} must be a 1-D array of integer indices")
        if idx.size < 3:
            raise ValueError(f"test fold {k} has {idx.size} samples; at least 3 are needed")
        if idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"test fold {k} has indices outside 0..{n - 1}")
        folds.append(idx)
    if not folds:
        raise ValueError("test_folds is empty")
    allidx = np.concatenate(folds)
    if np.unique(allidx).size != allidx.size:
        raise ValueError("test folds overlap (or repeat an index)")
    return folds


def permutation_null(
    y_true,
    y_pred,
    n_permutations: int = 1000,
    test_folds=None,
    kind: str = "permute",
    min_shift: int | None = None,
    random_state=0,
    voxel_chunk: int = 2000,
    return_null: bool = False,
) -> PermutationResult:
    """Observed Pearson r per voxel with a permutation (or circular-shift) null.

    The same permutations (or shifts) are applied to every voxel, which keeps the spatial
    correlation of the null (needed for max-statistic corrections on ``null``).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples, n_voxels)
        Measured responses and cross-validated predictions.
    n_permutations : int, default=1000
        Size of the null.
    test_folds : sequence of array-like of int, optional
        Test indices of each fold; ``None``: one fold holding all samples. Rows in no fold are
        ignored.
    kind : {"permute", "circular"}, default="permute"
        ``"permute"`` (images): the score is Pearson r pooled over the rows of all folds; the
        null permutes the rows of ``y_pred`` within each fold. ``"circular"`` (time series):
        the score is Pearson r within each fold averaged over folds (as
        :func:`alignment.metrics.foldwise`); the null circularly shifts ``y_pred`` within each
        fold by a random shift in ``[min_shift, len - min_shift]``, which keeps its
        autocorrelation. The circular null is valid when each fold spans many autocorrelation
        lengths (a few hundred TRs); with short, strongly smoothed folds the few distinct
        shifts make it somewhat liberal.
    min_shift : int, optional
        Smallest circular shift; default 10% of each fold's length (at least 1).
    random_state : int, numpy Generator or None, default=0
        Seed of the permutations/shifts.
    voxel_chunk : int, default=2000
        Voxels processed at a time (bounds memory for 100k voxels).
    return_null : bool, default=False
        Keep the full null (n_permutations, n_voxels) in the result.

    Returns
    -------
    PermutationResult
        ``r``, ``p``, ``null_mean``, ``null_p95`` per voxel (and ``null`` if asked). Voxels with
        a constant column get NaN everywhere.
    """
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape; got {y_true.shape} and {y_pred.shape}"
        )
    if y_true.ndim == 1:
        y_true, y_pred = y_true[:, None], y_pred[:, None]
    if y_true.ndim != 2:
        raise ValueError(f"expected 2-D arrays (samples, voxels); got shape {y_true.shape}")
    if not (np.all(np.isfinite(y_true)) and np.all(np.isfinite(y_pred))):
        raise ValueError("y_true or y_pred contains NaN or inf")
    n, n_vox = y_true.shape
    if n < 3:
        raise ValueError(f"need at least 3 samples; got {n}")
    if int(n_permutations) != n_permutations or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive integer; got {n_permutations}")
    n_permutations = int(n_permutations)
    if int(voxel_chunk) != voxel_chunk or voxel_chunk < 1:
        raise ValueError(f"voxel_chunk must be a positive integer; got {voxel_chunk}")
    voxel_chunk = int(voxel_chunk)
    folds = _check_folds(test_folds, n)
    rng = np.random.default_rng(random_state)

    if kind == "permute":
        rows = np.concatenate(folds)
        perms = np.empty((n_permutations, rows.size), dtype=np.int32 if n < 2**31 else np.int64)
        start = 0
        for f in folds:
            base = np.broadcast_to(np.arange(start, start + f.size), (n_permutations, f.size))
            perms[:, start : start + f.size] = rng.permuted(base, axis=1)
            start += f.size
        scorer = _PooledScorer(rows, perms)
    elif kind == "circular":
        shifts = np.empty((n_permutations, len(folds)), dtype=np.int64)
        for k, f in enumerate(folds):
            m = max(1, round(0.1 * f.size)) if min_shift is None else int(min_shift)
            if m < 1 or f.size - m < m:
                raise ValueError(
                    f"min_shift={m} is invalid for a fold of {f.size} samples "
                    f"(needs 1 <= min_shift <= {f.size // 2})"
                )
            shifts[:, k] = rng.integers(m, f.size - m, size=n_permutations, endpoint=True)
        scorer = _CircularScorer(folds, shifts)
    else:
        raise ValueError(f"kind must be 'permute' or 'circular'; got {kind!r}")

    r = np.empty(n_vox)
    p = np.empty(n_vox)
    null_mean = np.empty(n_vox)
    null_p95 = np.empty(n_vox)
    null_all = np.empty((n_permutations, n_vox)) if return_null else None
    for lo in range(0, n_vox, voxel_chunk):
        sl = slice(lo, lo + voxel_chunk)
        obs, null = scorer(y_true[:, sl], y_pred[:, sl])
        r[sl] = obs
        # a tolerance so that exact ties (up to rounding) count as ">="
        exceed = (null >= obs - 1e-6).sum(axis=0)
        p[sl] = np.where(np.isnan(obs), np.nan, (1.0 + exceed) / (1.0 + n_permutations))
        null_mean[sl] = null.mean(axis=0)
        null_p95[sl] = np.percentile(null, 95, axis=0)
        if null_all is not None:
            null_all[:, sl] = null
    return PermutationResult(r, p, null_mean, null_p95, n_permutations, kind, null_all)


class _PooledScorer:
    """Pooled r over the test rows, and its null under within-fold row permutations."""

    def __init__(self, rows: np.ndarray, perms: np.ndarray):
        self.rows = rows
        self.perms = perms

    def __call__(self, yt: np.ndarray, yp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, ok_a = _standardise(yt[self.rows])
        b, ok_b = _standardise(yp[self.rows])
        ok = ok_a & ok_b
        obs = np.clip(np.einsum("ij,ij->j", a, b), -1.0, 1.0)
        # the null in float32 halves the memory traffic of the gathers (2-3x faster); its
        # rounding (~1e-6) is far below the spread of any null
        a32 = a.astype(np.float32)
        b32 = b.astype(np.float32)
        null = np.empty((self.perms.shape[0], a.shape[1]))
        for i, perm in enumerate(self.perms):
            null[i] = np.einsum("ij,ij->j", b32[perm], a32)
        obs[~ok] = np.nan
        null[:, ~ok] = np.nan
        return obs, null


class _CircularScorer:
    """Mean over folds of per-fold r, and its null under per-fold circular shifts of y_pred."""

    def __init__(self, folds: list[np.ndarray], shifts: np.ndarray):
        self.folds = folds
        self.shifts = shifts

    def __call__(self, yt: np.ndarray, yp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_vox = yt.shape[1]
        n_perm = self.shifts.shape[0]
        obs_sum = np.zeros(n_vox)
        null_sum = np.zeros((n_perm, n_vox))
        count = np.zeros(n_vox)
        for k, f in enumerate(self.folds):
            a, ok_a = _standardise(yt[f])
            b, ok_b = _standardise(yp[f])
            ok = ok_a & ok_b
            size = f.size
            # cc[s] = sum_t a[t] b[t - s]: the r of y_pred rolled by s, for every s at once
            cc = np.fft.irfft(
                np.fft.rfft(a, axis=0) * np.conj(np.fft.rfft(b, axis=0)), n=size, axis=0
            )
            obs = np.einsum("ij,ij->j", a, b)
            obs_sum += np.where(ok, obs, 0.0)
            null_sum += np.where(ok, cc[self.shifts[:, k]], 0.0)
            count += ok
        with np.errstate(divide="ignore", invalid="ignore"):
            obs = np.clip(obs_sum / count, -1.0, 1.0)
            null = null_sum / count
        obs[count == 0] = np.nan
        null[:, count == 0] = np.nan
        return obs, null


def fdr_bh(p) -> np.ndarray:
    """Benjamini-Hochberg q-values.

    Parameters
    ----------
    p : array-like
        p-values in 0..1 (any shape). NaNs are kept as NaN and do not count in the number of
        tests ``m``.

    Returns
    -------
    ndarray
        q-values of the same shape: ``q_(i) = min_{j >= i} m p_(j) / j``, capped at 1 (as
        ``scipy.stats.false_discovery_control(p, method="bh")``). Reject at level ``alpha`` where
        ``q <= alpha``.
    """
    p = np.asarray(p, dtype=float)
    flat = p.ravel()
    valid = ~np.isnan(flat)
    pv = flat[valid]
    if np.any((pv < 0) | (pv > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    q = np.full(flat.shape, np.nan)
    m = pv.size
    if m:
        order = np.argsort(pv, kind="stable")
        scaled = pv[order] * m / np.arange(1, m + 1)
        qs = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
        qv = np.empty(m)
        qv[order] = qs
        q[valid] = qv
    return q.reshape(p.shape)
