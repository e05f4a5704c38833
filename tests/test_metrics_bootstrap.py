"""Bootstrap intervals of ROI means: coverage of a planted truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from alignment.metrics import bootstrap_roi_means, foldwise, pearson_r

RHO = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.2, 0.3, 0.4])  # population r of each voxel
ROI = np.array(["A"] * 5 + ["B"] * 3)


def _pair(rng, n, ar=0.0):
    """(y_true, y_pred) with correlation RHO per column; AR(1) in time when ar > 0."""
    z1 = rng.standard_normal((n + 200, RHO.size))
    z2 = RHO * z1 + np.sqrt(1 - RHO**2) * rng.standard_normal(z1.shape)
    if ar:
        # the same AR(1) filter on both keeps their correlation at RHO
        z1 = signal.lfilter([1.0], [1.0, -ar], z1, axis=0)
        z2 = signal.lfilter([1.0], [1.0, -ar], z2, axis=0)
    return z1[200:], z2[200:]


@pytest.mark.parametrize("kind", ["stimuli", "blocks"])
def test_bootstrap_intervals_cover_the_planted_roi_means(kind):
    rng = np.random.default_rng(0)
    n_rep, n = 150, 240
    truth = np.array([RHO[ROI == "A"].mean(), RHO[ROI == "B"].mean()])
    folds = [np.arange(0, 120), np.arange(120, 240)]
    hits, widths = [], []
    for rep in range(n_rep):
        y_true, y_pred = _pair(rng, n, ar=0.6 if kind == "blocks" else 0.0)
        res = bootstrap_roi_means(
            y_true, y_pred, ROI, folds, kind=kind, n_bootstrap=200, random_state=rep
        )
        assert res.rois == ["A", "B"]
        hits.append((res.low <= truth) & (truth <= res.high))
        widths.append(res.high - res.low)
    coverage = np.mean(hits)
    # 300 intervals: 95% coverage +- 2.5% (sampling), minus a little for the percentile method
    # (and, for blocks, for the few effective samples of short autocorrelated folds: with
    # AR(1) 0.8 and 120-TR folds the block intervals cover about 88%)
    assert 0.89 <= coverage <= 0.99, coverage
    if kind == "blocks":
        # a row-wise bootstrap ignores the autocorrelation and its intervals are too narrow
        naive = []
        for _ in range(40):
            y_true, y_pred = _pair(rng, n, ar=0.6)
            res = bootstrap_roi_means(
                y_true, y_pred, ROI, folds, kind="blocks", block_length=1, n_bootstrap=200
            )
            naive.append((res.low <= truth) & (truth <= res.high))
        assert np.mean(naive) < coverage - 0.07, (np.mean(naive), coverage)


def test_bootstrap_observed_mean_is_the_score():
    rng = np.random.default_rng(1)
    y_true, y_pred = _pair(rng, 200, ar=0.5)
    folds = [np.arange(0, 100), np.arange(100, 200)]
    res = bootstrap_roi_means(y_true, y_pred, ROI, folds, kind="blocks", n_bootstrap=50)
    r = foldwise(pearson_r, y_true, y_pred, folds)
    np.testing.assert_allclose(res.mean, [r[ROI == "A"].mean(), r[ROI == "B"].mean()])
    assert np.all(res.low <= res.mean) and np.all(res.mean <= res.high)
    res = bootstrap_roi_means(y_true, y_pred, ROI, folds, kind="stimuli", n_bootstrap=50)
    centred = [np.concatenate([y[f] - y[f].mean(0) for f in folds]) for y in (y_true, y_pred)]
    r = pearson_r(*centred)
    np.testing.assert_allclose(res.mean, [r[ROI == "A"].mean(), r[ROI == "B"].mean()])
    with pytest.raises(ValueError, match="one label per voxel"):
        bootstrap_roi_means(y_true, y_pred, ROI[:3])
    with pytest.raises(ValueError, match="kind"):
        bootstrap_roi_means(y_true, y_pred, ROI, kind="rows")
