"""Bootstrap confidence intervals of ROI-mean scores.

An ROI's mean r is a statistic of the test rows (images, or TRs) that it was computed on; its
sampling uncertainty comes from which stimuli (or which stretches of the story) happened to be
tested. The bootstrap resamples those rows, recomputes every voxel's r on the resample with the
same scoring as the headline number (pooled r over fold-centred rows for images; per-fold r
averaged over folds for time series), averages over the ROI's voxels and reads the percentile
interval:

- **images**: stimuli are resampled with replacement (each image is one unit);
- **time series**: a moving-block bootstrap within each test fold (blocks of ``block_length``
  TRs, a random start, concatenated until the fold's length), which keeps the autocorrelation
  that a row-wise bootstrap would destroy (and whose intervals would be too narrow).

Every voxel of every ROI is scored on the same resamples, so the intervals of two ROIs are
comparable, and the cost is a few matrix products: the resample is a matrix of row counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alignment.metrics.stats import _check_folds, autocorrelation_length

__all__ = ["ROIBootstrap", "bootstrap_roi_means"]


@dataclass(frozen=True)
class ROIBootstrap:
    """Result of :func:`bootstrap_roi_means`.

    Attributes
    ----------
    rois : list of str
        ROI names, in order of first appearance.
    mean : ndarray of shape (n_rois,)
        Observed ROI mean of the voxels' r (voxels with a NaN r left out).
    low, high : ndarray of shape (n_rois,)
        Percentile confidence interval at ``level``.
    level : float
    n_bootstrap : int
    kind : str
        ``"stimuli"`` or ``"blocks"``.
    block_length : int or None
        Block length of the time-series bootstrap (the largest over folds).
    """

    rois: list
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float
    n_bootstrap: int
    kind: str
    block_length: int | None = None


def _block_counts(size: int, block: int, n_boot: int, rng) -> np.ndarray:
    """How often each row of a fold appears in each moving-block resample (n_boot, size)."""
    n_blocks = -(-size // block)
    # circular blocks (wrapping at the fold's end): every row is drawn equally often, where
    # plain moving blocks under-draw the rows near the ends and give too narrow intervals
    starts = rng.integers(0, size, size=(n_boot, n_blocks))
    rows = ((starts[:, :, None] + np.arange(block)) % size).reshape(n_boot, -1)[:, :size]
    counts = np.zeros((n_boot, size))
    np.add.at(counts, (np.repeat(np.arange(n_boot), size), rows.ravel()), 1.0)
    return counts


def _weighted_r(w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of every column pair (a, b) under row weights w (n_boot, n) -> (n_boot, V)."""
    n = w.sum(axis=1, keepdims=True)
    sa, sb = w @ a, w @ b
    saa, sbb, sab = w @ (a * a), w @ (b * b), w @ (a * b)
    cov = sab - sa * sb / n
    var = (saa - sa * sa / n) * (sbb - sb * sb / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cov / np.sqrt(var)
    return np.where(var > 1e-20, np.clip(r, -1.0, 1.0), np.nan)


def bootstrap_roi_means(
    y_true,
    y_pred,
    roi,
    test_folds=None,
    kind: str = "stimuli",
    n_bootstrap: int = 1000,
    level: float = 0.95,
    block_length: int | str = "auto",
    random_state=0,
) -> ROIBootstrap:
    """Percentile bootstrap intervals of the ROI means of cross-validated r.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples, n_voxels)
        Measured responses and out-of-fold predictions (as scored).
    roi : array-like of shape (n_voxels,)
        ROI label per voxel; ``"none"`` is left out.
    test_folds : sequence of array-like of int, optional
        Test rows of each fold (``None``: one fold). ``kind="stimuli"`` centres each fold and
        pools them (the images' score); ``kind="blocks"`` scores each fold and averages.
    kind : {"stimuli", "blocks"}, default="stimuli"
        Resample stimuli (images) or blocks of consecutive rows within each fold (time series).
    n_bootstrap : int, default=1000
    level : float, default=0.95
        Coverage of the interval.
    block_length : int or "auto", default="auto"
        ``kind="blocks"``: TRs per block; ``"auto"`` is four times the 1/e autocorrelation length
        of the fold's measured responses (at most a quarter of the fold).
    random_state : int, Generator or None, default=0

    Returns
    -------
    ROIBootstrap
    """
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(
            f"y_true and y_pred must be 2-D of one shape; got {y_true.shape} and {y_pred.shape}"
        )
    roi = np.asarray(roi).astype(str)
    if roi.shape != (y_true.shape[1],):
        raise ValueError(f"roi needs one label per voxel ({y_true.shape[1]}); got {roi.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 10:  # 0 is handled by callers
        raise ValueError(f"n_bootstrap must be an integer >= 10; got {n_bootstrap}")
    if kind not in ("stimuli", "blocks"):
        raise ValueError(f"kind must be 'stimuli' or 'blocks'; got {kind!r}")
    n_bootstrap = int(n_bootstrap)
    folds = _check_folds(test_folds, y_true.shape[0])
    rng = np.random.default_rng(random_state)
    names = [r for r in dict.fromkeys(roi.tolist()) if r != "none"] or ["all"]
    masks = [roi == r for r in names] if names != ["all"] else [np.ones(roi.size, bool)]

    max_block = None
    if kind == "stimuli":
        rows = np.concatenate(folds)
        a = np.concatenate([y_true[f] - y_true[f].mean(0) for f in folds])
        b = np.concatenate([y_pred[f] - y_pred[f].mean(0) for f in folds])
        w = rng.multinomial(rows.size, np.full(rows.size, 1.0 / rows.size), size=n_bootstrap)
        boot = _weighted_r(w.astype(float), a, b)
        obs = _weighted_r(np.ones((1, rows.size)), a, b)[0]
    else:
        sums = np.zeros((n_bootstrap, y_true.shape[1]))
        counts = np.zeros_like(sums)
        obs_sum = np.zeros(y_true.shape[1])
        obs_count = np.zeros_like(obs_sum)
        max_block = 0
        for f in folds:
            a, b = y_true[f], y_pred[f]
            auto = block_length == "auto"
            block = 4 * autocorrelation_length(a) if auto else int(block_length)
            block = int(np.clip(block, 1, max(1, f.size // 4)))
            max_block = max(max_block, block)
            r = _weighted_r(_block_counts(f.size, block, n_bootstrap, rng), a, b)
            sums += np.nan_to_num(r)
            counts += np.isfinite(r)
            r0 = _weighted_r(np.ones((1, f.size)), a, b)[0]
            obs_sum += np.nan_to_num(r0)
            obs_count += np.isfinite(r0)
        with np.errstate(divide="ignore", invalid="ignore"):
            boot = np.where(counts > 0, sums / counts, np.nan)
            obs = np.where(obs_count > 0, obs_sum / obs_count, np.nan)

    tail = 100 * (1 - level) / 2
    mean, low, high = [], [], []
    for m in masks:
        good = m & np.isfinite(obs)
        if not good.any():
            mean.append(np.nan), low.append(np.nan), high.append(np.nan)
            continue
        means = np.nanmean(boot[:, good], axis=1)
        mean.append(float(obs[good].mean()))
        low.append(float(np.nanpercentile(means, tail)))
        high.append(float(np.nanpercentile(means, 100 - tail)))
    return ROIBootstrap(
        names,
        np.array(mean),
        np.array(low),
        np.array(high),
        float(level),
        n_bootstrap,
        kind,
        max_block,
    )
