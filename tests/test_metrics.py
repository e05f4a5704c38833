import numpy as np
import pytest
from scipy import ndimage, stats
from sklearn.metrics import r2_score as sk_r2_score

from alignment.folds import blocked_folds
from alignment.metrics import (
    algonauts_score,
    fdr_bh,
    foldwise,
    isc_ceiling,
    ncsnr_ceiling,
    normalised_scores,
    pearson_r,
    permutation_null,
    r2_score,
    split_half_ceiling,
)

# ---------------------------------------------------------------------------------------------
# correlation


def test_pearson_r_and_r2_match_scipy_and_sklearn():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((50, 6))
    p = 0.5 * y + rng.standard_normal((50, 6))
    r = pearson_r(y, p)
    assert r.shape == (6,)
    for j in range(6):
        assert r[j] == pytest.approx(stats.pearsonr(y[:, j], p[:, j])[0], abs=1e-12)
    np.testing.assert_allclose(
        r2_score(y, p), sk_r2_score(y, p, multioutput="raw_values"), atol=1e-12
    )
    assert pearson_r(y[:, 0], p[:, 0]) == pytest.approx(r[0])
    assert np.ndim(r2_score(y[:, 0], p[:, 0])) == 0


def test_constant_columns_give_nan():
    rng = np.random.default_rng(1)
    y = rng.standard_normal((20, 3))
    p = rng.standard_normal((20, 3))
    y[:, 0] = 2.0
    p[:, 1] = -1.0
    with np.errstate(all="raise"):  # no warnings leak out
        r = pearson_r(y, p)
        r2 = r2_score(y, p)
    assert np.isnan(r[0]) and np.isnan(r[1]) and np.isfinite(r[2])
    assert np.isnan(r2[0]) and np.isfinite(r2[1])


def test_correlation_errors():
    with pytest.raises(ValueError, match="same shape"):
        pearson_r(np.ones((5, 2)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        pearson_r(np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="at least 2"):
        r2_score(np.ones((1, 2)), np.ones((1, 2)))


def test_foldwise_scores_each_fold():
    rng = np.random.default_rng(2)
    n = 90
    y = rng.standard_normal((n, 4))
    folds = [np.arange(0, 30), np.arange(30, 60), np.arange(60, 90)]
    # a prediction that tracks y within each fold but with a fold-specific offset
    offsets = np.repeat([0.0, 10.0, -10.0], 30)[:, None]
    p = y + 0.5 * rng.standard_normal((n, 4)) + offsets
    score, per_fold = foldwise(pearson_r, y, p, folds, return_folds=True)
    assert per_fold.shape == (3, 4)
    for k, f in enumerate(folds):
        np.testing.assert_allclose(per_fold[k], pearson_r(y[f], p[f]))
    np.testing.assert_allclose(score, per_fold.mean(0))
    assert np.all(score > 0.8)
    assert np.all(pearson_r(y, p) < 0.3)  # pooling across folds would be misleading
    # a fold where a voxel is constant is skipped for that voxel
    p2 = p.copy()
    p2[:30, 0] = 1.0
    s2 = foldwise(pearson_r, y, p2, folds)
    assert s2[0] == pytest.approx(per_fold[1:, 0].mean())
    with pytest.raises(ValueError, match="outside"):
        foldwise(pearson_r, y, p, [np.arange(80, 95)])


# ---------------------------------------------------------------------------------------------
# ceilings


def _repeated_trials(rng, counts, signal_var, noise_sd=1.0):
    n_stim = counts.size
    signal = rng.standard_normal((n_stim, signal_var.size)) * np.sqrt(signal_var)
    ids = np.repeat(np.arange(n_stim), counts)
    trials = signal[ids] + noise_sd * rng.standard_normal((ids.size, signal_var.size))
    return signal, ids, trials


def test_ncsnr_ceiling_recovers_planted_ceiling():
    rng = np.random.default_rng(3)
    s2 = np.linspace(0.3, 2.0, 12)
    counts = np.full(4000, 3)
    _, ids, trials = _repeated_trials(rng, counts, s2)
    # sessions with their own offsets and scales, removed by z-scoring per session
    sessions = rng.integers(0, 4, size=ids.size)
    trials = trials * (1 + 0.5 * sessions[:, None]) + 3.0 * sessions[:, None]
    order = rng.permutation(ids.size)  # trials need not be sorted
    res = ncsnr_ceiling(trials[order], ids[order], sessions[order])
    planted = s2 / (s2 + 1 / 3)
    assert res.k == pytest.approx(1 / 3)
    np.testing.assert_allclose(res.ceiling, planted, atol=0.03)
    np.testing.assert_allclose(res.ncsnr**2, s2, rtol=0.15)
    # voxel chunking does not change the numbers
    small = ncsnr_ceiling(trials[order], ids[order], sessions[order], voxel_chunk=5)
    np.testing.assert_allclose(small.ceiling, res.ceiling)


def test_ncsnr_ceiling_mixed_repeat_counts():
    rng = np.random.default_rng(4)
    s2 = np.linspace(0.3, 2.0, 10)
    counts = rng.choice([1, 2, 3], size=8000, p=[0.2, 0.3, 0.5])
    signal, ids, trials = _repeated_trials(rng, counts, s2)
    res = ncsnr_ceiling(trials, ids)
    a, b, c = (counts == 3).sum(), (counts == 2).sum(), (counts == 1).sum()
    assert res.k == pytest.approx((a / 3 + b / 2 + c / 1) / (a + b + c))
    np.testing.assert_allclose(res.ceiling, s2 / (s2 + res.k), atol=0.03)
    # the ceiling is the R^2 that the true signal reaches on the repeat-averaged responses
    sums = np.zeros((counts.size, s2.size))
    np.add.at(sums, ids, trials)
    averaged = sums / counts[:, None]
    r2_signal = pearson_r(averaged, signal) ** 2
    np.testing.assert_allclose(res.ceiling, r2_signal, atol=0.04)
    # scored on single trials instead: k = 1
    single = ncsnr_ceiling(trials, ids, n_average=1)
    np.testing.assert_allclose(single.ceiling, s2 / (s2 + 1), atol=0.03)


def test_ncsnr_ceiling_errors_and_constant_voxel():
    rng = np.random.default_rng(5)
    trials = rng.standard_normal((12, 3))
    ids = np.repeat(np.arange(6), 2)
    trials[:, 1] = 4.0
    res = ncsnr_ceiling(trials, ids)
    assert np.isnan(res.ceiling[1]) and np.isfinite(res.ceiling[0])
    with pytest.raises(ValueError, match="no stimulus"):
        ncsnr_ceiling(trials, np.arange(12))
    with pytest.raises(ValueError, match="one entry per trial"):
        ncsnr_ceiling(trials, ids[:5])
    with pytest.raises(ValueError, match="NaN"):
        ncsnr_ceiling(np.full((12, 3), np.nan), ids)
    with pytest.raises(ValueError, match="2-D"):
        ncsnr_ceiling(np.ones(12), ids)


@pytest.mark.parametrize("n_rep", [6, 5])
def test_split_half_ceiling_recovers_reliability(n_rep):
    rng = np.random.default_rng(6)
    s2 = np.linspace(0.2, 2.0, 10)
    signal = rng.standard_normal((3000, s2.size)) * np.sqrt(s2)
    repeats = signal + rng.standard_normal((n_rep, 3000, s2.size))
    res = split_half_ceiling(repeats, n_splits=10)
    assert res.n_half == n_rep // 2
    np.testing.assert_allclose(res.ceiling, s2 / (s2 + 1 / n_rep), atol=0.04)
    one = split_half_ceiling(repeats, n_splits=10, n_average=1)
    np.testing.assert_allclose(one.ceiling, s2 / (s2 + 1), atol=0.04)
    with pytest.raises(ValueError, match="at least 2 repeats"):
        split_half_ceiling(repeats[:1])


def test_isc_ceiling_recovers_shared_fraction():
    rng = np.random.default_rng(7)
    n_sub, n_time = 6, 3000
    frac = np.linspace(0.05, 0.9, 8)
    shared = rng.standard_normal((n_time, frac.size))
    y = np.sqrt(frac) * shared + np.sqrt(1 - frac) * rng.standard_normal((n_sub, n_time, frac.size))
    y = 5.0 + 3.0 * y  # offsets and scale do not matter
    ceil = isc_ceiling(y)
    assert ceil.shape == (n_sub, frac.size)
    np.testing.assert_allclose(ceil, np.broadcast_to(frac, ceil.shape), atol=0.04)
    np.testing.assert_allclose(ceil.mean(0), frac, atol=0.02)
    # matches the brute-force mean of pairwise correlations
    s = 2
    brute = np.mean([pearson_r(y[s], y[o]) for o in range(n_sub) if o != s], axis=0)
    np.testing.assert_allclose(ceil[s], np.clip(brute, 0, 1), atol=1e-10)


def test_isc_ceiling_ratio_handles_unequal_noise():
    rng = np.random.default_rng(8)
    n_sub, n_time, n_vox = 6, 2000, 20
    noise_sd = np.linspace(0.5, 2.0, n_sub)
    shared = rng.standard_normal((n_time, n_vox))
    y = shared + noise_sd[:, None, None] * rng.standard_normal((n_sub, n_time, n_vox))
    truth = 1 / (1 + noise_sd**2)
    ratio = isc_ceiling(y, method="ratio").mean(axis=1)
    pairwise = isc_ceiling(y).mean(axis=1)
    np.testing.assert_allclose(ratio, truth, atol=0.03)
    assert np.abs(pairwise - truth).max() > 0.15  # the equal-noise estimator is biased here
    with pytest.raises(ValueError, match="at least 3"):
        isc_ceiling(y[:2], method="ratio")
    with pytest.raises(ValueError, match="3-D"):
        isc_ceiling(y[0])


def test_normalised_scores():
    r = np.array([0.5, -0.2, 0.9, 0.3, np.nan, 0.4])
    c = np.array([0.64, 0.25, 0.49, 0.0, 0.5, np.nan])
    out = normalised_scores(r, c)
    np.testing.assert_allclose(out.r_over_ceiling[:3], [0.5 / 0.8, -0.2 / 0.5, 0.9 / 0.7])
    np.testing.assert_allclose(out.fraction_explained[:3], [0.25 / 0.64, -0.04 / 0.25, 0.81 / 0.49])
    assert np.all(np.isnan(out.r_over_ceiling[3:])) and np.all(np.isnan(out.fraction_explained[3:]))
    np.testing.assert_array_equal(out.above_ceiling, [False, False, True, False, False, False])
    with pytest.raises(ValueError, match="percent"):
        normalised_scores(r, c * 100)


def test_algonauts_score():
    r = np.array([0.5, -0.3, 0.6, 0.1, np.nan])
    nc = np.array([0.5, 0.4, 0.25, 0.0, 0.3])
    # 0.25/0.5*100 = 50; negative -> 0; 0.36/0.25*100 = 144 -> 100; nc 0 -> 1e-14 -> 100; nan -> 0
    per_voxel = algonauts_score(r, nc, reduce=False)
    np.testing.assert_allclose(per_voxel, [50.0, 0.0, 100.0, 100.0, 0.0])
    assert algonauts_score(r, nc) == pytest.approx(50.0)
    assert algonauts_score(r, nc * 100, nc_units="percent") == pytest.approx(50.0)
    with pytest.raises(ValueError, match="percent"):
        algonauts_score(r, nc * 100)
    with pytest.raises(ValueError, match="same shape"):
        algonauts_score(r[:2], nc)


# ---------------------------------------------------------------------------------------------
# permutation nulls and FDR


def _uniform_ok(p):
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert 0.025 <= np.mean(p <= 0.05) <= 0.085


def test_permutation_null_uniform_for_images():
    rng = np.random.default_rng(9)
    y_true = rng.standard_normal((200, 500))
    y_pred = rng.standard_normal((200, 500))
    folds = [te for _, te in blocked_folds(200, 4)]
    res = permutation_null(y_true, y_pred, 199, test_folds=folds, random_state=1)
    np.testing.assert_allclose(res.r, pearson_r(y_true, y_pred))  # pooled r
    assert res.p.min() >= 1 / 200
    _uniform_ok(res.p)
    assert np.abs(res.null_mean).mean() < 0.01
    assert res.null_p95.mean() == pytest.approx(1.645 / np.sqrt(200), rel=0.15)


def test_permutation_null_circular_uniform_for_autocorrelated_series():
    rng = np.random.default_rng(10)
    n, n_vox = 900, 500
    smooth = 1.5  # TRs: autocorrelated like BOLD
    y_true = ndimage.gaussian_filter1d(rng.standard_normal((n, n_vox)), smooth, axis=0)
    y_pred = ndimage.gaussian_filter1d(rng.standard_normal((n, n_vox)), smooth, axis=0)
    folds = [te for _, te in blocked_folds(n, 3)]
    res = permutation_null(y_true, y_pred, 199, test_folds=folds, kind="circular")
    np.testing.assert_allclose(res.r, foldwise(pearson_r, y_true, y_pred, folds))
    _uniform_ok(res.p)
    # the row-permutation null ignores autocorrelation: too narrow, far too many "hits"
    naive = permutation_null(y_true, y_pred, 199, test_folds=folds, kind="permute")
    assert np.mean(naive.p <= 0.05) > 0.12
    assert res.null_p95.mean() > 1.5 * naive.null_p95.mean()


def test_circular_shift_matches_np_roll():
    rng = np.random.default_rng(11)
    y_true = rng.standard_normal((60, 3))
    y_pred = rng.standard_normal((60, 3))
    folds = [np.arange(0, 30), np.arange(30, 60)]
    res = permutation_null(
        y_true,
        y_pred,
        5,
        test_folds=folds,
        kind="circular",
        min_shift=3,
        random_state=4,
        return_null=True,
    )
    # replay the shifts with the same generator calls
    g = np.random.default_rng(4)
    shifts = np.stack([g.integers(3, 27, size=5, endpoint=True) for _ in folds], axis=1)
    for i in range(5):
        rolled = y_pred.copy()
        for k, f in enumerate(folds):
            rolled[f] = np.roll(y_pred[f], shifts[i, k], axis=0)
        np.testing.assert_allclose(res.null[i], foldwise(pearson_r, y_true, rolled, folds))


@pytest.mark.parametrize("kind", ["permute", "circular"])
def test_permutation_null_detects_planted_relation(kind):
    rng = np.random.default_rng(12)
    y_true = ndimage.gaussian_filter1d(rng.standard_normal((300, 20)), 1.0, axis=0)
    y_pred = y_true + 0.5 * rng.standard_normal((300, 20))
    y_pred[:, 10:] = rng.standard_normal((300, 10))  # half the voxels unrelated
    folds = [te for _, te in blocked_folds(300, 3)]
    res = permutation_null(y_true, y_pred, 99, test_folds=folds, kind=kind, voxel_chunk=7)
    np.testing.assert_allclose(res.p[:10], 1 / 100)
    assert np.median(res.p[10:]) > 0.1
    # chunking does not change the numbers
    ref = permutation_null(y_true, y_pred, 99, test_folds=folds, kind=kind)
    np.testing.assert_allclose(res.p, ref.p)
    np.testing.assert_allclose(res.null_p95, ref.null_p95)


def test_permutation_null_constant_voxel_and_errors():
    rng = np.random.default_rng(13)
    y = rng.standard_normal((40, 3))
    p = rng.standard_normal((40, 3))
    p[:, 1] = 0.0
    res = permutation_null(y, p, 20)
    assert np.isnan(res.r[1]) and np.isnan(res.p[1]) and np.isfinite(res.p[0])
    with pytest.raises(ValueError, match="same shape"):
        permutation_null(y, p[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        permutation_null(np.where(y > 2, np.nan, y), p)
    with pytest.raises(ValueError, match="min_shift"):
        permutation_null(y, p, 10, kind="circular", min_shift=25)
    with pytest.raises(ValueError, match="overlap"):
        permutation_null(y, p, 10, test_folds=[np.arange(0, 20), np.arange(10, 30)])
    with pytest.raises(ValueError, match="kind"):
        permutation_null(y, p, 10, kind="bootstrap")


def test_fdr_bh_matches_scipy():
    rng = np.random.default_rng(14)
    p = np.concatenate([rng.uniform(size=300), rng.uniform(0, 0.001, size=30)])
    np.testing.assert_allclose(fdr_bh(p), stats.false_discovery_control(p, method="bh"))
    grid = p[:300].reshape(20, 15)
    np.testing.assert_allclose(
        fdr_bh(grid), stats.false_discovery_control(grid.ravel()).reshape(20, 15)
    )
    with_nan = p.copy()
    with_nan[[3, 50, 100]] = np.nan
    q = fdr_bh(with_nan)
    keep = ~np.isnan(with_nan)
    assert np.all(np.isnan(q[~keep]))
    np.testing.assert_allclose(q[keep], stats.false_discovery_control(with_nan[keep]))
    assert np.all(np.isnan(fdr_bh([np.nan, np.nan])))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fdr_bh([0.5, 1.5])
