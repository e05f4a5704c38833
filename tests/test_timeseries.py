import numpy as np
import pytest
from scipy import stats

from alignment.timeseries import (
    detrend,
    fir_delay_labels,
    fir_delays,
    lanczos_kernel,
    lanczos_resample,
    run_segments,
    spm_hrf,
    tr_times,
    zscore_runs,
)

TR = 2.0


def _huth_lanczosinterp2d(data, oldtime, newtime, window=3, cutoff_mult=1.0):
    """Loop transcription of the Huth lab's lanczosinterp2D, as a reference."""
    cutoff = 1 / np.mean(np.diff(newtime)) * cutoff_mult
    sincmat = np.zeros((len(newtime), len(oldtime)))
    for i in range(len(newtime)):
        t = (newtime[i] - oldtime) * cutoff
        with np.errstate(divide="ignore", invalid="ignore"):
            val = window * np.sin(np.pi * t) * np.sin(np.pi * t / window) / (np.pi**2 * t**2)
        val[t == 0] = 1.0
        val[np.abs(t) > window] = 0.0
        sincmat[i] = val
    return sincmat @ data


def _word_times(rng, duration):
    t = np.cumsum(rng.uniform(0.2, 0.4, int(duration / 0.2) + 10))
    return t[t < duration]


def test_lanczos_kernel_values():
    c = 0.5
    k = lanczos_kernel(np.array([0.0, 1.0, 2.0, 4.0, 6.0, 6.1, -1.0]), c, window=3)
    assert k[0] == 1.0
    assert k[1] == pytest.approx(
        3 * np.sin(np.pi * 0.5) * np.sin(np.pi * 0.5 / 3) / (np.pi**2 * 0.25)
    )
    assert k[2] == pytest.approx(0.0, abs=1e-15)  # zero crossings at integer c t
    assert k[3] == pytest.approx(0.0, abs=1e-15)
    assert k[5] == 0.0  # beyond the window
    assert k[6] == k[1]  # symmetric


def test_lanczos_matches_huth_reference():
    rng = np.random.default_rng(0)
    new = tr_times(60, TR)
    t = _word_times(rng, 60 * TR)
    values = rng.standard_normal((t.size, 4))
    out = lanczos_resample(values, t, new)
    np.testing.assert_allclose(out, _huth_lanczosinterp2d(values, t, new), atol=1e-12)
    out2 = lanczos_resample(values, t, new, window=5, cutoff_mult=0.8)
    ref2 = _huth_lanczosinterp2d(values, t, new, window=5, cutoff_mult=0.8)
    np.testing.assert_allclose(out2, ref2, atol=1e-12)


def test_lanczos_on_grid_is_identity():
    new = tr_times(50, TR)
    values = np.column_stack([np.ones(50), np.sin(new / 7.0)])
    np.testing.assert_allclose(lanczos_resample(values, new, new), values, atol=1e-12)


def test_lanczos_reproduces_slow_sinusoid_and_constant():
    rng = np.random.default_rng(1)
    n_tr = 150
    new = tr_times(n_tr, TR)
    t = _word_times(rng, n_tr * TR)
    slow = np.sin(2 * np.pi * t / 40.0)
    out = lanczos_resample(np.column_stack([slow, np.full(t.size, 3.0)]), t, new, normalize=True)
    inner = slice(5, -5)
    np.testing.assert_allclose(out[inner, 0], np.sin(2 * np.pi * new / 40.0)[inner], atol=0.05)
    np.testing.assert_allclose(out[:, 1], 3.0, atol=1e-12)


def test_lanczos_sum_scales_with_event_rate():
    rng = np.random.default_rng(2)
    new = tr_times(100, TR)
    t = _word_times(rng, 100 * TR)
    out = lanczos_resample(np.ones(t.size), t, new)  # 1-D in, 1-D out
    assert out.shape == (100,)
    events_per_tr = t.size / 100
    assert np.mean(out[5:-5]) == pytest.approx(events_per_tr, rel=0.05)


def test_lanczos_unsupported_rows_are_zero():
    t = np.arange(0.0, 20.0, 0.3)
    new = tr_times(30, TR)  # runs to 60 s: no events after 20 s
    out = lanczos_resample(np.ones(t.size), t, new, normalize=True)
    assert np.all(out[new > 20.0 + 3 * TR] == 0.0)


def test_lanczos_errors():
    t = np.arange(5.0)
    with pytest.raises(ValueError, match="times has 5 entries"):
        lanczos_resample(np.ones((4, 2)), t, tr_times(3, TR))
    with pytest.raises(ValueError, match="NaN"):
        lanczos_resample(np.array([1.0, np.nan, 1, 1, 1]), t, tr_times(3, TR))
    with pytest.raises(ValueError, match="at least 2"):
        lanczos_resample(np.ones(5), t, [1.0])
    with pytest.raises(ValueError, match="increasing"):
        lanczos_resample(np.ones(5), t, [3.0, 1.0])


def test_tr_times_midpoints():
    np.testing.assert_allclose(tr_times(3, 2.0), [1.0, 3.0, 5.0])
    np.testing.assert_allclose(tr_times(2, 1.5, start=10.0), [10.75, 12.25])
    with pytest.raises(ValueError):
        tr_times(0, 2.0)


def test_fir_delays_shift_exactly():
    X = np.arange(1.0, 13.0).reshape(6, 2)
    out = fir_delays(X, delays=(0, 1, 3))
    assert out.shape == (6, 6)
    np.testing.assert_array_equal(out[:, 0:2], X)
    np.testing.assert_array_equal(out[1:, 2:4], X[:-1])
    np.testing.assert_array_equal(out[0, 2:4], 0)
    np.testing.assert_array_equal(out[3:, 4:6], X[:-3])
    np.testing.assert_array_equal(out[:3, 4:6], 0)
    lead = fir_delays(X, delays=(-1,))
    np.testing.assert_array_equal(lead[:-1], X[1:])
    np.testing.assert_array_equal(lead[-1], 0)


def test_fir_delays_respect_runs():
    X = np.arange(1.0, 9.0)[:, None]
    runs = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    out = fir_delays(X, delays=(1, 2), runs=runs)
    np.testing.assert_array_equal(out[:, 0], [0, 1, 2, 3, 0, 5, 6, 7])
    np.testing.assert_array_equal(out[:, 1], [0, 0, 1, 2, 0, 0, 5, 6])
    # a delay longer than a run leaves that run all zero
    out = fir_delays(X, delays=(5,), runs=runs)
    np.testing.assert_array_equal(out, 0)


def test_fir_delay_labels_delay_major():
    delay, unit = fir_delay_labels(3, (1, 2))
    np.testing.assert_array_equal(delay, [1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(unit, [0, 1, 2, 0, 1, 2])
    X = np.random.default_rng(0).standard_normal((10, 3))
    out = fir_delays(X, (1, 2))
    for col in range(6):
        np.testing.assert_array_equal(out[delay[col] :, col], X[: 10 - delay[col], unit[col]])


def test_fir_delays_errors():
    with pytest.raises(ValueError, match="2-D"):
        fir_delays(np.ones(5))
    with pytest.raises(ValueError, match="integers"):
        fir_delays(np.ones((5, 1)), delays=(1.5,))
    with pytest.raises(ValueError, match="one label per sample"):
        fir_delays(np.ones((5, 1)), runs=[0, 0, 1])
    with pytest.raises(ValueError, match="contiguous"):
        fir_delays(np.ones((4, 1)), runs=[0, 1, 1, 0])


def test_run_segments():
    segs = run_segments(["a", "a", "b", "c", "c"], 5)
    assert [(s.start, s.stop) for s in segs] == [(0, 2), (2, 3), (3, 5)]
    assert run_segments(None, 4) == [slice(0, 4)]


def test_detrend_polynomial_removes_planted_drift():
    rng = np.random.default_rng(3)
    n = 200
    runs = np.repeat([0, 1], n // 2)
    x = np.linspace(-1, 1, n // 2)
    drift = np.concatenate([5 + 3 * x + 4 * x**2, -2 - 6 * x + 2 * x**2])
    noise = rng.standard_normal((n, 3))
    Y = noise + drift[:, None]
    out = detrend(Y, runs=runs, order=2)
    for seg in (slice(0, 100), slice(100, 200)):
        np.testing.assert_allclose(out[seg].mean(axis=0), 0, atol=1e-10)
        # the residual is the noise minus its own projection on a quadratic: close to the noise
        assert np.corrcoef(out[seg, 0], noise[seg, 0])[0, 1] > 0.97
        assert abs(np.corrcoef(out[seg, 0], drift[seg])[0, 1]) < 0.05
    # a pure quadratic is removed exactly
    np.testing.assert_allclose(detrend(drift[:, None], runs=runs), 0, atol=1e-9)
    # order 0 only removes each run's mean
    run_means = np.stack([Y[runs == r].mean(axis=0) for r in (0, 1)])
    np.testing.assert_allclose(detrend(Y, runs=runs, order=0), Y - run_means[runs])


def test_detrend_savgol_keeps_fast_signal():
    n = 300  # 600 s at TR 2
    t = np.arange(n) * TR
    drift = 3 * np.sin(2 * np.pi * t / 1200.0) + 0.005 * t
    fast = np.sin(2 * np.pi * t / 20.0)
    Y = (drift + fast)[:, None]
    out = detrend(Y, method="savgol", tr=TR)  # 120 s window = 60 samples -> 59 (odd)
    np.testing.assert_allclose(out, detrend(Y, method="savgol", window=59), atol=1e-12)
    assert np.corrcoef(out[:, 0], fast)[0, 1] > 0.98
    assert np.abs(out[:, 0] - fast).max() < 0.3
    # a window longer than a run is shrunk to it
    short = detrend(Y[:40], method="savgol", window=121)
    assert short.shape == (40, 1)


def test_detrend_errors():
    Y = np.ones((10, 2))
    with pytest.raises(ValueError, match="window"):
        detrend(Y, method="savgol")
    with pytest.raises(ValueError, match="method"):
        detrend(Y, method="linear")
    with pytest.raises(ValueError, match="too short"):
        detrend(Y, runs=[0] * 8 + [1] * 2, order=2)
    with pytest.raises(ValueError, match="NaN"):
        detrend(np.array([[1.0], [np.nan], [2.0], [3.0]]))


def test_zscore_runs():
    rng = np.random.default_rng(4)
    runs = np.repeat([0, 1, 2], 30)
    Y = rng.standard_normal((90, 4)) * [1, 2, 3, 4] + np.repeat([[0.0], [10.0], [-5.0]], 30, 0)
    out = zscore_runs(Y, runs)
    for r in range(3):
        np.testing.assert_allclose(out[runs == r].mean(0), 0, atol=1e-12)
        np.testing.assert_allclose(out[runs == r].std(0), 1, atol=1e-12)
    np.testing.assert_allclose(zscore_runs(Y), stats.zscore(Y, axis=0))


def test_zscore_runs_constant_columns():
    Y = np.random.default_rng(5).standard_normal((20, 6))
    Y[:, 2] = 1.5
    Y[:10, 4] = 0.0  # constant in the first run only
    runs = np.repeat([0, 1], 10)
    with pytest.raises(ValueError, match=r"2 column\(s\) are constant.*\[2, 4\]"):
        zscore_runs(Y, runs)
    out = zscore_runs(Y, runs, allow_constant=True)
    np.testing.assert_array_equal(out[:, 2], 0)
    np.testing.assert_array_equal(out[:10, 4], 0)
    np.testing.assert_allclose(out[10:, 4].std(), 1)


def test_spm_hrf_shape():
    dt = 0.1
    h = spm_hrf(dt)
    t = np.arange(h.size) * dt
    assert h.size == 321
    assert h.sum() == pytest.approx(1.0)
    assert t[np.argmax(h)] == pytest.approx(5.0, abs=0.2)
    assert 14.0 < t[np.argmin(h)] < 17.0
    assert h.min() < 0
    # closed form: t^5 e^-t / 5! - t^15 e^-t / (15! 6)
    ref = stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6
    np.testing.assert_allclose(h, ref / ref.sum())
    assert spm_hrf(2.0).shape == (17,)
    with pytest.raises(ValueError):
        spm_hrf(0.0)
