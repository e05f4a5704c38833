"""Time-series preparation for narrative (story) fMRI.

Word- or frame-level features arrive at irregular event times; responses arrive once per TR. This
module moves features onto the TR grid (Lanczos interpolation, as in the Huth lab), adds finite
impulse response (FIR) delays so that a linear encoder can learn the haemodynamic lag, and cleans
responses (detrending and z-scoring per run).

Every function is a pure function over numpy arrays with time on axis 0. Where ``runs`` is
accepted it holds one label per sample; each run must be one contiguous stretch of samples, and
nothing (delays, trends, z-scores) is ever carried across a run boundary.
"""

from __future__ import annotations

import numpy as np
from scipy import signal, stats

__all__ = [
    "detrend",
    "fir_delay_labels",
    "fir_delays",
    "lanczos_kernel",
    "lanczos_resample",
    "run_segments",
    "spm_hrf",
    "tr_times",
    "zscore_runs",
]


# ---------------------------------------------------------------------------------------------
# validation helpers


def _as_2d(name: str, a, *, min_rows: int = 1) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (samples, columns); got shape {a.shape}")
    if a.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows (samples); got {a.shape[0]}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _as_times(name: str, t, *, min_len: int = 1) -> np.ndarray:
    t = np.asarray(t, dtype=float)
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {t.shape}")
    if t.size < min_len:
        raise ValueError(f"{name} needs at least {min_len} entries; got {t.size}")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def run_segments(runs, n_samples: int) -> list[slice]:
    """Slices of the contiguous runs of a series.

    Parameters
    ----------
    runs : array-like of shape (n_samples,) or None
        One run label per sample. Each label must occupy one contiguous stretch.
        ``None`` means a single run.
    n_samples : int
        Length of the series.

    Returns
    -------
    list of slice
        One slice per run, in order of appearance.
    """
    if runs is None:
        return [slice(0, n_samples)]
    runs = np.asarray(runs)
    if runs.ndim != 1 or runs.shape[0] != n_samples:
        raise ValueError(
            f"runs must be 1-D with one label per sample ({n_samples}); got shape {runs.shape}"
        )
    if n_samples == 0:
        return []
    change = np.flatnonzero(runs[1:] != runs[:-1]) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [n_samples]])
    labels = runs[starts]
    if len(np.unique(labels)) != len(labels):
        raise ValueError(
            "each run label must occupy one contiguous stretch of samples; "
            "sort the samples by run or relabel the runs"
        )
    return [slice(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


# ---------------------------------------------------------------------------------------------
# resampling


def lanczos_kernel(t, cutoff: float, window: int = 3) -> np.ndarray:
    """Lanczos-windowed sinc kernel.

    Parameters
    ----------
    t : array-like
        Time lags in seconds.
    cutoff : float
        Cutoff frequency ``c`` in Hz.
    window : int, default=3
        Number of lobes of the window on each side.

    Returns
    -------
    ndarray
        ``window * sin(pi c t) * sin(pi c t / window) / (pi^2 c^2 t^2)``, 1 at ``t == 0`` and 0
        where ``|c t| > window``; same shape as ``t``.
    """
    x = np.asarray(t, dtype=float) * cutoff
    with np.errstate(divide="ignore", invalid="ignore"):
        val = window * np.sin(np.pi * x) * np.sin(np.pi * x / window) / (np.pi**2 * x**2)
    val[x == 0] = 1.0
    val[np.abs(x) > window] = 0.0
    return val


def lanczos_resample(
    values,
    times,
    new_times,
    window: int = 3,
    cutoff_mult: float = 1.0,
    normalize: bool = False,
) -> np.ndarray:
    """Resample event-based values onto new times by Lanczos interpolation.

    Follows the Huth lab's ``lanczosinterp2D``: the output at each new time is the sum of the
    event values weighted by a Lanczos kernel (:func:`lanczos_kernel`) of the time lag, with a
    cutoff frequency ``cutoff_mult / mean(diff(new_times))`` (the Nyquist-matched low-pass for the
    TR grid when ``cutoff_mult == 1``).

    Parameters
    ----------
    values : array-like of shape (n_events, n_units) or (n_events,)
        Values at the events (e.g. one word embedding per word).
    times : array-like of shape (n_events,)
        Event times in seconds (e.g. word onsets or midpoints).
    new_times : array-like of shape (n_new,)
        Target times in seconds (e.g. :func:`tr_times`); at least two, increasing on average.
    window : int, default=3
        Lobes of the Lanczos window.
    cutoff_mult : float, default=1.0
        Multiplier of the cutoff frequency.
    normalize : bool, default=False
        ``False`` (Huth lab convention): a weighted *sum*, so the output scales with the local
        event rate relative to the TR (a constant value at 3 words per 2 s TR comes out near 3x).
        ``True``: divide each output row by its total kernel weight, a weighted *average* in
        which a constant stays constant; rows with total weight below 0.05 (no event near that
        time, e.g. silence before the story starts) are set to 0.

    Returns
    -------
    ndarray of shape (n_new, n_units) or (n_new,)
        Resampled values (1-D when ``values`` is 1-D).
    """
    values = np.asarray(values, dtype=float)
    squeeze = values.ndim == 1
    values = _as_2d("values", values[:, None] if squeeze else values)
    times = _as_times("times", times)
    new_times = _as_times("new_times", new_times, min_len=2)
    if times.shape[0] != values.shape[0]:
        raise ValueError(
            f"times has {times.shape[0]} entries but values has {values.shape[0]} rows"
        )
    if window < 1:
        raise ValueError(f"window must be a positive integer; got {window}")
    if not cutoff_mult > 0:
        raise ValueError(f"cutoff_mult must be positive; got {cutoff_mult}")
    spacing = float(np.mean(np.diff(new_times)))
    if not spacing > 0:
        raise ValueError("new_times must be increasing (mean spacing > 0)")
    cutoff = cutoff_mult / spacing

    kernel = lanczos_kernel(new_times[:, None] - times[None, :], cutoff, window)
    if normalize:
        total = kernel.sum(axis=1, keepdims=True)
        supported = total > 0.05
        kernel = np.where(supported, kernel / np.where(supported, total, 1.0), 0.0)
    out = kernel @ values
    return out[:, 0] if squeeze else out


def tr_times(n_tr: int, tr: float, start: float = 0.0) -> np.ndarray:
    """Acquisition times of the TRs of a run.

    Volume ``i`` is acquired over ``[start + i tr, start + (i + 1) tr)``; it is stamped at the
    midpoint of that interval (as in the Huth lab's ``trigger times + TR / 2``), so features
    interpolated at these times describe the stimulus during the volume.

    Parameters
    ----------
    n_tr : int
        Number of volumes.
    tr : float
        Repetition time in seconds.
    start : float, default=0.0
        Time in seconds (on the stimulus clock) at which the first volume starts.

    Returns
    -------
    ndarray of shape (n_tr,)
        ``start + (arange(n_tr) + 0.5) * tr``.
    """
    if int(n_tr) != n_tr or n_tr < 1:
        raise ValueError(f"n_tr must be a positive integer; got {n_tr}")
    if not tr > 0:
        raise ValueError(f"tr must be positive; got {tr}")
    return float(start) + (np.arange(int(n_tr)) + 0.5) * float(tr)


# ---------------------------------------------------------------------------------------------
# FIR delays


def _check_delays(delays) -> np.ndarray:
    delays = np.atleast_1d(np.asarray(delays))
    if delays.ndim != 1 or delays.size == 0:
        raise ValueError("delays must be a non-empty 1-D sequence of integers")
    if not np.issubdtype(delays.dtype, np.integer):
        if not np.all(np.equal(np.mod(delays, 1), 0)):
            raise ValueError(f"delays must be integers (in TRs); got {delays.tolist()}")
        delays = delays.astype(int)
    return delays


def fir_delays(X, delays=(1, 2, 3, 4), runs=None) -> np.ndarray:
    """Stack delayed copies of features (finite impulse response model).

    Parameters
    ----------
    X : array-like of shape (n_tr, n_units)
        Features on the TR grid.
    delays : sequence of int, default=(1, 2, 3, 4)
        Delays in TRs. Copy ``d`` holds ``X[t - d]`` at row ``t`` (a positive delay shifts the
        features down, later in time); rows with no source sample are 0. Negative delays shift
        up.
    runs : array-like of shape (n_tr,), optional
        Run label per TR; a delay never carries a sample across a run boundary (each run is
        shifted on its own and zero-filled at its start).

    Returns
    -------
    ndarray of shape (n_tr, n_units * len(delays))
        Delay-major column order: columns ``[k * n_units, (k + 1) * n_units)`` hold delay
        ``delays[k]`` of all units (see :func:`fir_delay_labels`).
    """
    X = _as_2d("X", X)
    delays = _check_delays(delays)
    n_tr, n_units = X.shape
    out = np.zeros((n_tr, n_units * len(delays)), dtype=X.dtype)
    for seg in run_segments(runs, n_tr):
        Xs = X[seg]
        n = Xs.shape[0]
        for k, d in enumerate(delays):
            cols = slice(k * n_units, (k + 1) * n_units)
            block = out[seg, cols]
            if d >= 0:
                if d < n:
                    block[d:] = Xs[: n - d]
            elif -d < n:
                block[: n + d] = Xs[-d:]
    return out


def fir_delay_labels(n_units: int, delays=(1, 2, 3, 4)) -> tuple[np.ndarray, np.ndarray]:
    """Delay and source unit of every column that :func:`fir_delays` returns.

    Parameters
    ----------
    n_units : int
        Number of units before delaying.
    delays : sequence of int, default=(1, 2, 3, 4)
        The delays passed to :func:`fir_delays`.

    Returns
    -------
    delay : ndarray of shape (n_units * len(delays),)
        Delay (TRs) of each column.
    unit : ndarray of shape (n_units * len(delays),)
        Index of the source unit of each column.
    """
    delays = _check_delays(delays)
    return np.repeat(delays, n_units), np.tile(np.arange(n_units), len(delays))


# ---------------------------------------------------------------------------------------------
# cleaning responses


def detrend(
    Y,
    runs=None,
    method: str = "polynomial",
    order: int = 2,
    window: int | None = None,
    tr: float | None = None,
) -> np.ndarray:
    """Remove slow drifts from each run.

    Parameters
    ----------
    Y : array-like of shape (n_tr, n_voxels)
        Responses.
    runs : array-like of shape (n_tr,), optional
        Run label per TR; each run is detrended on its own.
    method : {"polynomial", "savgol"}, default="polynomial"
        ``"polynomial"``: least-squares fit of a polynomial of degree ``order`` in time
        (``order=0`` only removes the mean). ``"savgol"``: a Savitzky-Golay low-pass of degree
        ``order`` over ``window`` samples (the Huth lab's drift model, 120 s window, degree 2).
    order : int, default=2
        Polynomial degree.
    window : int, optional
        Savitzky-Golay window in samples (made odd; shrunk to the run length when longer).
        Required for ``"savgol"`` unless ``tr`` is given.
    tr : float, optional
        Repetition time in seconds; with ``method="savgol"`` and no ``window``, the window is
        ``round(120 / tr)`` samples.

    Returns
    -------
    ndarray of shape (n_tr, n_voxels)
        Residuals ``Y - trend``; the trend includes the run mean, so every run comes out with
        (near) zero mean.
    """
    Y = _as_2d("Y", Y)
    if int(order) != order or order < 0:
        raise ValueError(f"order must be a non-negative integer; got {order}")
    order = int(order)
    if method == "savgol":
        if window is None:
            if tr is None:
                raise ValueError(
                    "method='savgol' needs window (samples) or tr (seconds; window = 120 s / tr)"
                )
            if not tr > 0:
                raise ValueError(f"tr must be positive; got {tr}")
            window = round(120.0 / tr)
        if int(window) != window or window < 1:
            raise ValueError(f"window must be a positive integer; got {window}")
    elif method != "polynomial":
        raise ValueError(f"method must be 'polynomial' or 'savgol'; got {method!r}")

    out = np.empty_like(Y)
    for seg in run_segments(runs, Y.shape[0]):
        Ys = Y[seg]
        n = Ys.shape[0]
        if n <= order:
            raise ValueError(
                f"a run of {n} samples is too short for a degree-{order} trend (needs > {order})"
            )
        if method == "polynomial":
            # Legendre basis on [-1, 1] keeps the least-squares problem well conditioned.
            x = np.linspace(-1.0, 1.0, n)
            basis = np.polynomial.legendre.legvander(x, order)
            coef, *_ = np.linalg.lstsq(basis, Ys, rcond=None)
            trend = basis @ coef
        else:
            w = min(int(window), n)
            if w % 2 == 0:  # savgol_filter needs an odd window
                w -= 1
            if w <= order:
                raise ValueError(
                    f"savgol window of {w} samples must exceed the polynomial order {order}"
                )
            trend = signal.savgol_filter(Ys, w, order, axis=0, mode="interp")
        out[seg] = Ys - trend
    return out


def zscore_runs(Y, runs=None, allow_constant: bool = False) -> np.ndarray:
    """Z-score every column within each run (mean 0, standard deviation 1, ``ddof=0``).

    Parameters
    ----------
    Y : array-like of shape (n_tr, n_voxels)
        Responses or features.
    runs : array-like of shape (n_tr,), optional
        Run label per TR.
    allow_constant : bool, default=False
        If ``False``, a column that is constant within any run raises ``ValueError``; if
        ``True``, it is set to 0 within that run.

    Returns
    -------
    ndarray of shape (n_tr, n_voxels)
        Z-scored copy.
    """
    Y = _as_2d("Y", Y, min_rows=2)
    out = np.empty_like(Y)
    constant = np.zeros(Y.shape[1], dtype=bool)
    for seg in run_segments(runs, Y.shape[0]):
        Ys = Y[seg]
        if Ys.shape[0] < 2:
            raise ValueError("every run needs at least 2 samples to be z-scored")
        flat = np.ptp(Ys, axis=0) == 0
        constant |= flat
        mean = Ys.mean(axis=0)
        std = np.where(flat, 1.0, Ys.std(axis=0))
        out[seg] = np.where(flat, 0.0, (Ys - mean) / std)
    if constant.any() and not allow_constant:
        idx = np.flatnonzero(constant)
        raise ValueError(
            f"{idx.size} column(s) are constant within a run (first: {idx[:10].tolist()}); "
            "drop them or pass allow_constant=True to set them to 0"
        )
    return out


# ---------------------------------------------------------------------------------------------
# haemodynamic response


def spm_hrf(dt: float, length: float = 32.0) -> np.ndarray:
    """SPM canonical haemodynamic response function.

    Difference of two gamma densities (peak at 5 s, undershoot at 15 s, undershoot ratio 1/6),
    as in SPM's ``spm_hrf`` with default parameters ``[6, 16, 1, 1, 6, 0, 32]``.

    Parameters
    ----------
    dt : float
        Sampling interval in seconds (e.g. the TR, or a finer grid).
    length : float, default=32.0
        Duration of the kernel in seconds.

    Returns
    -------
    ndarray of shape (floor(length / dt) + 1,)
        Sample ``i`` is the response at ``i * dt`` seconds after an impulse; normalised to unit
        sum.
    """
    if not dt > 0:
        raise ValueError(f"dt must be positive; got {dt}")
    if not length >= dt:
        raise ValueError(f"length ({length}) must be at least dt ({dt})")
    t = np.arange(int(np.floor(length / dt + 1e-9)) + 1) * dt
    hrf = stats.gamma.pdf(t, 6.0) - stats.gamma.pdf(t, 16.0) / 6.0
    return hrf / hrf.sum()
