"""Column-wise prediction scores: Pearson r and R², overall or within folds."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["foldwise", "pearson_r", "r2_score"]


def _check_pair(y_true, y_pred, *, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate two arrays of equal shape; 1-D inputs become one column."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape; got {y_true.shape} and {y_pred.shape}"
        )
    if y_true.ndim not in (1, 2):
        raise ValueError(f"expected 1-D or 2-D arrays (samples, voxels); got shape {y_true.shape}")
    squeeze = y_true.ndim == 1
    if squeeze:
        y_true, y_pred = y_true[:, None], y_pred[:, None]
    if y_true.shape[0] < min_rows:
        raise ValueError(f"need at least {min_rows} samples; got {y_true.shape[0]}")
    if not (np.all(np.isfinite(y_true)) and np.all(np.isfinite(y_pred))):
        raise ValueError("y_true or y_pred contains NaN or inf")
    return y_true, y_pred, squeeze


def _out(x: np.ndarray, squeeze: bool):
    return x[0] if squeeze else x


def pearson_r(y_true, y_pred) -> np.ndarray:
    """Pearson correlation of each column of ``y_true`` with the same column of ``y_pred``.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples, n_voxels) or (n_samples,)
        Measured and predicted responses (at least 2 samples, no NaN).

    Returns
    -------
    ndarray of shape (n_voxels,)
        Correlations; NaN where either column is constant. A float for 1-D inputs.
    """
    y_true, y_pred, squeeze = _check_pair(y_true, y_pred)
    a = y_true - y_true.mean(axis=0)
    b = y_pred - y_pred.mean(axis=0)
    num = np.einsum("ij,ij->j", a, b)
    den = np.sqrt(np.einsum("ij,ij->j", a, a) * np.einsum("ij,ij->j", b, b))
    flat = (np.ptp(y_true, axis=0) == 0) | (np.ptp(y_pred, axis=0) == 0) | (den == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(num / den, -1.0, 1.0)
    r[flat] = np.nan
    return _out(r, squeeze)


def r2_score(y_true, y_pred) -> np.ndarray:
    """Coefficient of determination ``1 - SS_res / SS_tot`` per column.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples, n_voxels) or (n_samples,)
        Measured and predicted responses (at least 2 samples, no NaN).

    Returns
    -------
    ndarray of shape (n_voxels,)
        R² (can be negative); NaN where ``y_true`` is constant. Agrees with
        ``sklearn.metrics.r2_score(..., multioutput="raw_values")`` elsewhere. A float for 1-D
        inputs.
    """
    y_true, y_pred, squeeze = _check_pair(y_true, y_pred)
    ss_res = np.einsum("ij,ij->j", y_true - y_pred, y_true - y_pred)
    centred = y_true - y_true.mean(axis=0)
    ss_tot = np.einsum("ij,ij->j", centred, centred)
    flat = (np.ptp(y_true, axis=0) == 0) | (ss_tot == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - ss_res / ss_tot
    r2[flat] = np.nan
    return _out(r2, squeeze)


def foldwise(
    metric: Callable[[np.ndarray, np.ndarray], np.ndarray],
    y_true,
    y_pred,
    test_folds: Sequence,
    return_folds: bool = False,
):
    """Score within each test fold and average over folds.

    For time series a score must never be computed on predictions concatenated across folds
    (each fold's model has its own offset and scale); this scores each fold on its own.

    Parameters
    ----------
    metric : callable
        ``metric(y_true, y_pred) -> (n_voxels,)``, e.g. :func:`pearson_r` or :func:`r2_score`.
    y_true, y_pred : array-like of shape (n_samples, n_voxels)
        Measured responses and cross-validated predictions (each row predicted by the model of
        the fold that tested it).
    test_folds : sequence of array-like of int
        Test indices of each fold (e.g. ``[test for _, test in folds]``).
    return_folds : bool, default=False
        Also return the per-fold scores.

    Returns
    -------
    score : ndarray of shape (n_voxels,)
        Mean over folds, ignoring folds where the score is NaN for that voxel (NaN if all are).
    per_fold : ndarray of shape (n_folds, n_voxels)
        Only when ``return_folds`` is true.
    """
    y_true, y_pred, squeeze = _check_pair(y_true, y_pred)
    if len(test_folds) == 0:
        raise ValueError("test_folds is empty")
    n = y_true.shape[0]
    scores = []
    for k, idx in enumerate(test_folds):
        idx = np.asarray(idx)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"test fold {k} must be a 1-D array of integer indices")
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise ValueError(f"test fold {k} has indices outside 0..{n - 1}")
        scores.append(np.asarray(metric(y_true[idx], y_pred[idx]), dtype=float))
    per_fold = np.stack(scores)
    valid = ~np.isnan(per_fold)
    count = valid.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(valid, per_fold, 0.0).sum(axis=0) / count
    mean = np.where(count > 0, mean, np.nan)
    mean = _out(mean, squeeze)
    if return_folds:
        return mean, (per_fold[:, 0] if squeeze else per_fold)
    return mean
