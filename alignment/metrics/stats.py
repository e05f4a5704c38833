"""Significance of prediction scores: permutation / circular-shift nulls and FDR.

The null of :func:`permutation_null` is built for the SAME score as the observed one (pooled r
for images, per-fold r averaged over folds for time series), so that the p-value answers "could
a model unrelated to this voxel have scored this well under this scoring?".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PermutationResult", "autocorrelation_length", "fdr_bh", "permutation_null"]


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
        ``"permute"``, ``"circular"``, ``"mirror"`` or ``"block"``.
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
    block_length: int | str | None = "auto",
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
    kind : {"permute", "circular", "mirror", "block"}, default="permute"
        ``"permute"`` (images): the score is Pearson r pooled over the rows of all folds; the
        null permutes the rows of ``y_pred`` within each fold. ``"circular"`` (time series):
        the score is Pearson r within each fold averaged over folds (as
        :func:`alignment.metrics.foldwise`); the null circularly shifts ``y_pred`` within each
        fold by a random shift in ``[min_shift, len - min_shift]``, which keeps its
        autocorrelation. ``"mirror"``: as ``"circular"``, but the shifts run around the fold
        followed by its time reversal, so no shifted series has a jump from the fold's end to
        its start. ``"block"``: a moving-block permutation of ``y_pred`` within each fold
        (blocks of ``block_length`` samples). With all shifts allowed (the default
        ``min_shift=1``) the circular null is close to calibrated for folds of 100 TRs or more
        (about 6% at alpha = .05 for 60-100 TR folds of smooth, drifting series); excluding
        small shifts (the old default, 10% of the fold) narrows the null and made it liberal
        (7-11%), and block permutation is worse still (9-13%): see the calibration table in
        tests/test_metrics_timeseries.py.
    min_shift : int, optional
        Smallest circular shift; default 1 (every non-zero shift).
    block_length : int or "auto", default="auto"
        ``kind="block"`` only: block length in samples; ``"auto"`` is twice the 1/e
        autocorrelation length of each fold's predictions (at most a fifth of the fold).
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
            m = 1 if min_shift is None else int(min_shift)
            if m < 1 or f.size - m < m:
                raise ValueError(
                    f"min_shift={m} is invalid for a fold of {f.size} samples "
                    f"(needs 1 <= min_shift <= {f.size // 2})"
                )
            shifts[:, k] = rng.integers(m, f.size - m, size=n_permutations, endpoint=True)
        scorer = _CircularScorer(folds, shifts)
    elif kind == "mirror":
        shifts = np.empty((n_permutations, len(folds)), dtype=np.int64)
        for k, f in enumerate(folds):
            m = 1 if min_shift is None else int(min_shift)
            if m < 1 or 2 * f.size - m < m:
                raise ValueError(
                    f"min_shift={m} is invalid for a fold of {f.size} samples "
                    f"(needs 1 <= min_shift <= {f.size})"
                )
            shifts[:, k] = rng.integers(m, 2 * f.size - m, size=n_permutations, endpoint=True)
        scorer = _MirrorScorer(folds, shifts)
    elif kind == "block":
        perms = []
        for f in folds:
            b = _block_length(block_length, y_pred[f], f.size)
            perms.append(_block_permutations(f.size, b, n_permutations, rng))
        scorer = _BlockScorer(folds, perms)
    else:
        raise ValueError(f"kind must be 'permute', 'circular', 'mirror' or 'block'; got {kind!r}")

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


class _FoldwiseScorer:
    """Mean over test folds of per-fold r, and its null: each subclass gives one fold's null
    r for every permutation (``_fold_null``); folds where a voxel is constant are skipped."""

    n_perm: int

    def _fold_null(self, k: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, yt: np.ndarray, yp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_vox = yt.shape[1]
        obs_sum = np.zeros(n_vox)
        null_sum = np.zeros((self.n_perm, n_vox))
        count = np.zeros(n_vox)
        for k, f in enumerate(self.folds):
            a, ok_a = _standardise(yt[f])
            b, ok_b = _standardise(yp[f])
            ok = ok_a & ok_b
            obs_sum += np.where(ok, np.einsum("ij,ij->j", a, b), 0.0)
            null_sum += np.where(ok, self._fold_null(k, a, b), 0.0)
            count += ok
        with np.errstate(divide="ignore", invalid="ignore"):
            obs = np.clip(obs_sum / count, -1.0, 1.0)
            null = null_sum / count
        obs[count == 0] = np.nan
        null[:, count == 0] = np.nan
        return obs, null


class _CircularScorer(_FoldwiseScorer):
    """Mean over folds of per-fold r, and its null under per-fold circular shifts of y_pred."""

    def __init__(self, folds: list[np.ndarray], shifts: np.ndarray):
        self.folds = folds
        self.shifts = shifts
        self.n_perm = shifts.shape[0]

    def _fold_null(self, k: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # cc[s] = sum_t a[t] b[t - s]: the r of y_pred rolled by s, for every s at once
        size = a.shape[0]
        cc = np.fft.irfft(np.fft.rfft(a, axis=0) * np.conj(np.fft.rfft(b, axis=0)), n=size, axis=0)
        return cc[self.shifts[:, k]]


def autocorrelation_length(x, max_lag: int | None = None) -> int:
    """Lags until the mean autocorrelation of the columns of ``x`` first drops below 1/e.

    Parameters
    ----------
    x : array-like of shape (n_samples, n_columns) or (n_samples,)
        Time series (columns are averaged after each is centred and scaled).
    max_lag : int, optional
        Largest lag considered; default ``n_samples // 2``.

    Returns
    -------
    int
        The first lag ``k >= 1`` whose autocorrelation is below ``exp(-1)`` (``max_lag`` if
        none is); 1 for white noise.
    """
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    n = x.shape[0]
    max_lag = n // 2 if max_lag is None else min(int(max_lag), n - 1)
    if n < 3 or max_lag < 1:
        return 1
    a, ok = _standardise(x)
    if not ok.any():
        return 1
    a = a[:, ok]
    spec = np.fft.rfft(a, n=2 * n, axis=0)
    acf = np.fft.irfft(spec * np.conj(spec), n=2 * n, axis=0)[: max_lag + 1].mean(axis=1)
    below = np.flatnonzero(acf[1:] < np.exp(-1))
    return int(below[0] + 1) if below.size else int(max_lag)


def _block_length(block_length, y_fold: np.ndarray, size: int) -> int:
    if block_length is None or block_length == "auto":
        # twice the 1/e autocorrelation length of the predictions keeps most of their
        # autocorrelation inside blocks; at least 5 blocks per fold so the null has spread
        b = 2 * autocorrelation_length(y_fold)
    else:
        b = int(block_length)
    if b < 1:
        raise ValueError(f"block_length must be a positive integer or 'auto'; got {block_length}")
    return max(1, min(b, size // 5))


def _block_permutations(size: int, b: int, n_permutations: int, rng) -> np.ndarray:
    """Row orders of a moving-block permutation: blocks of ``b`` rows from a random phase,
    shuffled as units (the first and last, shorter, blocks included)."""
    out = np.empty((n_permutations, size), dtype=np.int64)
    idx = np.arange(size)
    for i in range(n_permutations):
        phase = int(rng.integers(0, b))
        cuts = np.arange(phase, size, b)
        cuts = cuts[cuts > 0]
        blocks = np.split(idx, cuts)
        order = rng.permutation(len(blocks))
        out[i] = np.concatenate([blocks[j] for j in order])
    return out


class _MirrorScorer(_FoldwiseScorer):
    """Mean over folds of per-fold r, and its null under reflected circular shifts.

    Each fold's ``y_pred`` is extended by its time reversal (``[b, b[::-1]]``, continuous at
    both joins) and a window of the fold's length is read from a random start of that loop.
    Unlike a plain circular shift, no window has a jump from the fold's end back to its
    start, which with short folds and slow components made the circular null too narrow.
    Every window is standardised on its own.
    """

    def __init__(self, folds: list[np.ndarray], shifts: np.ndarray):
        self.folds = folds
        self.shifts = shifts
        self.n_perm = shifts.shape[0]

    def _fold_null(self, k: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        size, n_vox = a.shape
        loop = np.concatenate([b, b[::-1]])  # period 2 * size
        padded = np.zeros_like(loop)
        padded[:size] = a
        # cc[s] = sum_{t < size} a[t] loop[(t - s) mod 2 size]
        cc = np.fft.irfft(
            np.fft.rfft(padded, axis=0) * np.conj(np.fft.rfft(loop, axis=0)),
            n=2 * size,
            axis=0,
        )
        # sums of the window of every start, to standardise it (window mean is removed
        # by the centred a, its variance needs sum(w^2) - sum(w)^2 / size)
        twice = np.concatenate([loop, loop])
        c1 = np.concatenate([np.zeros((1, n_vox)), np.cumsum(twice, axis=0)])
        c2 = np.concatenate([np.zeros((1, n_vox)), np.cumsum(twice * twice, axis=0)])
        start = (-self.shifts[:, k]) % (2 * size)
        s1 = c1[start + size] - c1[start]
        s2 = c2[start + size] - c2[start]
        var = np.maximum(s2 - s1 * s1 / size, 1e-12)
        return cc[self.shifts[:, k]] / np.sqrt(var)


class _BlockScorer(_FoldwiseScorer):
    """Mean over folds of per-fold r, and its null under per-fold block permutations."""

    def __init__(self, folds: list[np.ndarray], perms: list[np.ndarray]):
        self.folds = folds
        self.perms = perms
        self.n_perm = perms[0].shape[0]

    def _fold_null(self, k: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a32, b32 = a.astype(np.float32), b.astype(np.float32)
        return np.stack([np.einsum("ij,ij->j", b32[perm], a32) for perm in self.perms[k]])


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
