"""Narrative statistics: features filtered as responses are, and a calibrated null."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from alignment import dims
from alignment.data.responses import make_responses
from alignment.evaluation import narrative_features_matrix, score_layers

FAST = {"alphas": [1.0, 100.0, 10000.0], "kind": "ridge"}
TR = 2.0


def _words(rng, n_tr_run, runs=("r1", "r2"), per_tr=2, jitter=True):
    onsets, labels = [], []
    for run in runs:
        if jitter:
            o = np.sort(rng.uniform(0, n_tr_run * TR - 2, n_tr_run * per_tr))
        else:  # a steady word rate: a smooth word-level drift stays smooth on the TR grid
            o = np.arange(n_tr_run * per_tr) * TR / per_tr + 0.25
        onsets.append(o)
        labels.append(np.full(o.size, run))
    return np.concatenate(onsets), np.concatenate(labels)


def _layer(values, onsets, runs):
    coords = {
        dims.RUN: (dims.WORD, runs),
        dims.ONSET: (dims.WORD, onsets),
        dims.STIMULUS_ID: (dims.WORD, np.arange(onsets.size).astype(str)),
    }
    return xr.DataArray(values.astype(np.float32), dims=(dims.WORD, dims.UNIT), coords=coords)


def _slow_drift(t, rng):
    """A smooth drift over a run: slow sinusoids (periods 10-20 min) plus a ramp."""
    out = 3.0 * t / t.max()
    for period in (600.0, 1200.0):
        out = out + 2.0 * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    return out


@pytest.fixture(scope="module")
def drift_experiment():
    rng = np.random.default_rng(0)
    n_tr_run = 180
    onsets, runs = _words(rng, n_tr_run, jitter=False)
    F = rng.standard_normal((onsets.size, 6))
    drift = np.zeros_like(F)
    for run in ("r1", "r2"):
        sel = runs == run
        drift[sel] = _slow_drift(onsets[sel], rng)[:, None] * rng.uniform(1.5, 4.5, 6)
    clean, drifted = _layer(F, onsets, runs), _layer(F + drift, onsets, runs)
    tr_runs = np.repeat(["r1", "r2"], n_tr_run)
    template = make_responses(np.zeros((tr_runs.size, 1)), kind="narrative", run=tr_runs,
                              attrs={"tr": TR})  # fmt: skip
    X = narrative_features_matrix(clean, template, {}, "clean")
    signal = X @ rng.standard_normal((X.shape[1], 12))
    signal /= signal.std(0)
    t = np.arange(tr_runs.size)[:, None]
    drift = np.cos(2 * np.pi * t / 300 + rng.uniform(0, 6, 12))
    Y = signal + rng.standard_normal(signal.shape) + drift
    resp = make_responses(Y, kind="narrative", run=tr_runs, attrs={"tr": TR})
    return resp, {"clean": clean, "drifted": drifted}


def _mean_r(resp, layers, filter_features):
    scores = score_layers(
        resp,
        layers,
        encoder_spec=FAST,
        cv={"n_folds": 4, "inner_folds": 3, "gap_trs": 3},
        stats_spec={"n_permutations": 20},
        timeseries_spec={"filter_features": filter_features},
    )
    # every voxel carries its ROI's bootstrap interval, which brackets the ROI mean
    low, high = scores[dims.R_ROI_CI_LOW].values, scores[dims.R_ROI_CI_HIGH].values
    assert np.all(low <= scores[dims.R].mean("voxel").values[:, None] + 1e-6)
    assert np.all(high >= scores[dims.R].mean("voxel").values[:, None] - 1e-6)
    return {name: float(scores[dims.R].sel(layer=name).mean()) for name in layers}


def test_feature_drift_no_longer_leaks_into_the_score(drift_experiment):
    resp, layers = drift_experiment
    new = _mean_r(resp, layers, filter_features=True)
    old = _mean_r(resp, layers, filter_features=False)
    assert new["clean"] > 0.5
    # filtered like the responses, the drifted features score as the clean ones do ...
    assert abs(new["drifted"] - new["clean"]) < 0.02
    # ... while unfiltered, the drift enters the features the encoder sees and moves the score
    assert abs(old["drifted"] - old["clean"]) > 0.1


def test_feature_filter_is_per_run_and_matches_the_responses(drift_experiment):
    resp, layers = drift_experiment
    X = narrative_features_matrix(layers["drifted"], resp, {"delays": [0]}, "f")
    runs = resp[dims.RUN].values
    for run in ("r1", "r2"):
        sel = runs == run
        np.testing.assert_allclose(X[sel].mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(X[sel].std(0), 1, atol=1e-4)
    # changing the words of run 2 leaves run 1's features as they were (nothing crosses runs,
    # so leave-one-run-out test features never shape training features)
    other = layers["drifted"].copy(data=layers["drifted"].values.copy())
    other.values[other[dims.RUN].values == "r2"] *= -3.0
    X2 = narrative_features_matrix(other, resp, {"delays": [0]}, "f")
    sel = runs == "r1"
    np.testing.assert_array_equal(X[sel], X2[sel])
    # the filter is the responses' filter: a feature equal to a raw response column comes out
    # equal to that column as the encoder is scored on it
    from alignment.evaluation import narrative_design

    design = narrative_design(resp, {"n_folds": 4}, {})
    from alignment.evaluation import preprocess_timeseries

    raw = resp[dims.RESPONSES].values[:, :3]
    np.testing.assert_allclose(
        preprocess_timeseries(raw, runs.astype(str), TR, {}), design.Y[:, :3], atol=1e-5
    )


# ---------------------------------------------------------------------------------------------
# calibration of the narrative null
#
# False-positive rate at alpha = .05 under the null, 2000 voxels of smooth (Gaussian, sigma
# TRs) series plus a random-walk drift, Savitzky-Golay detrended as the pipeline does
# (one realisation per row, sampling error about +-0.005). Columns: circular with the old
# smallest shift of 10% of the fold; circular with every shift (the default); block; mirror.
#
# | series              | fold | circular 10% | circular | block | mirror |
# | smooth 1.5          |   60 | 0.085 | 0.061 | 0.088 | 0.065 |
# | smooth 3 + drift    |   60 | 0.106 | 0.074 | 0.113 | 0.068 |
# | smooth 1.5          |  100 | 0.073 | 0.061 | 0.102 | 0.062 |
# | smooth 3 + drift    |  100 | 0.092 | 0.065 | 0.132 | 0.068 |
# | smooth 1.5          |  200 | 0.056 | 0.060 | 0.099 | 0.061 |
# | smooth 3 + drift    |  200 | 0.054 | 0.059 | 0.129 | 0.062 |
# | smooth 3 + drift    |  300 | 0.056 | 0.052 | 0.112 | 0.053 |


def _null_series(rng, n, n_vox, smooth=2.0, walk=1.0, detrend=True):
    from scipy import ndimage

    from alignment import timeseries

    x = ndimage.gaussian_filter1d(rng.standard_normal((n, n_vox)), smooth, axis=0)
    x /= x.std(0)
    steps = np.cumsum(rng.standard_normal((n, n_vox)), axis=0)
    x = x + walk * steps / steps.std(0)
    return timeseries.detrend(x, method="savgol", window=61) if detrend else x


def test_narrative_null_is_calibrated_on_drifting_series():
    from scipy import stats

    from alignment.folds import blocked_folds
    from alignment.metrics import fdr_bh, permutation_null

    rng = np.random.default_rng(3)
    n, n_null, n_signal = 600, 1500, 500
    raw_true = _null_series(rng, n, n_null + n_signal, detrend=False)
    raw_pred = _null_series(rng, n, n_null + n_signal, detrend=False)
    folds = [te for _, te in blocked_folds(n, 3)]
    # naive: whole-series r on the raw drifting series against an i.i.d. (row-permutation)
    # null: the drifts make about half of the unrelated pairs "significant"
    naive = permutation_null(raw_true[:, :n_null], raw_pred[:, :n_null], 199, kind="permute")
    assert np.mean(naive.p <= 0.05) > 0.3
    # as the pipeline does it: detrended, scored within folds, circular-shift null
    from alignment import timeseries

    y_true = timeseries.detrend(raw_true, method="savgol", window=61)
    y_pred = timeseries.detrend(raw_pred, method="savgol", window=61)
    y_pred[:, n_null:] = y_true[:, n_null:] + 2.0 * y_pred[:, n_null:]  # planted relation
    res = permutation_null(y_true, y_pred, 199, test_folds=folds, kind="circular")
    p_null = res.p[:n_null]
    assert stats.kstest(p_null, "uniform").pvalue > 0.01
    fpr = np.mean(p_null <= 0.05)
    assert abs(fpr - 0.05) < 3 * np.sqrt(0.05 * 0.95 / n_null) + 0.005, fpr
    # FDR: among voxels with q < .05, the share of null voxels stays near or below .05 (the
    # smallest p is 1/200, so BH needs enough true effects to reach q < .05)
    q = fdr_bh(res.p)
    found = q < 0.05
    assert found[n_null:].mean() > 0.8
    assert found[:n_null].sum() / max(found.sum(), 1) < 0.05 + 0.03


def test_old_circular_null_was_liberal_on_short_folds():
    from alignment.folds import blocked_folds
    from alignment.metrics import permutation_null

    rng = np.random.default_rng(4)
    n, n_vox = 300, 1500
    y_true = _null_series(rng, n, n_vox, smooth=3.0)
    y_pred = _null_series(rng, n, n_vox, smooth=3.0)
    folds = [te for _, te in blocked_folds(n, 3)]
    old = permutation_null(y_true, y_pred, 199, test_folds=folds, kind="circular", min_shift=10)
    new = permutation_null(y_true, y_pred, 199, test_folds=folds, kind="circular")
    mirror = permutation_null(y_true, y_pred, 199, test_folds=folds, kind="mirror")
    block = permutation_null(y_true, y_pred, 199, test_folds=folds, kind="block")
    fpr = {k: np.mean(v.p <= 0.05) for k, v in
           {"old": old, "new": new, "mirror": mirror, "block": block}.items()}  # fmt: skip
    assert fpr["old"] > fpr["new"] + 0.01, fpr
    assert fpr["new"] < 0.075 and fpr["mirror"] < 0.075, fpr
    assert fpr["block"] > fpr["new"], fpr
    # the observed score is the same under every null
    np.testing.assert_allclose(old.r, new.r)
    np.testing.assert_allclose(mirror.r, block.r)


def test_mirror_null_matches_a_direct_computation():
    from alignment.metrics import foldwise, pearson_r, permutation_null

    rng = np.random.default_rng(5)
    y_true = rng.standard_normal((40, 3))
    y_pred = rng.standard_normal((40, 3))
    folds = [np.arange(0, 25), np.arange(25, 40)]
    res = permutation_null(
        y_true, y_pred, 6, test_folds=folds, kind="mirror", random_state=2, return_null=True
    )
    g = np.random.default_rng(2)
    shifts = np.stack([g.integers(1, 2 * f.size - 1, size=6, endpoint=True) for f in folds], axis=1)
    for i in range(6):
        moved = y_pred.copy()
        for k, f in enumerate(folds):
            loop = np.concatenate([y_pred[f], y_pred[f][::-1]])
            moved[f] = np.roll(loop, shifts[i, k], axis=0)[: f.size]
        np.testing.assert_allclose(
            res.null[i], foldwise(pearson_r, y_true, moved, folds), atol=1e-10
        )
