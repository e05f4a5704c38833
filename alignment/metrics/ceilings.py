"""Noise ceilings and ceiling-normalised scores (DESIGN.md section 5).

Every ceiling here is a FRACTION OF VARIANCE (R² scale, 0..1) of the response that the model is
scored against: the largest R² (squared correlation) a perfect model of the signal could reach.
The matching ceiling on the correlation scale is its square root.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "NCSNRCeiling",
    "NormalisedScores",
    "SplitHalfCeiling",
    "algonauts_score",
    "isc_ceiling",
    "ncsnr_ceiling",
    "normalised_scores",
    "split_half_ceiling",
]


def _finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")


@dataclass(frozen=True)
class NCSNRCeiling:
    """Result of :func:`ncsnr_ceiling`.

    Attributes
    ----------
    ceiling : ndarray of shape (n_voxels,)
        Noise ceiling NC as a fraction of variance (0..1) of the repeat-averaged response.
    ncsnr : ndarray of shape (n_voxels,)
        Noise-ceiling signal-to-noise ratio ``sigma_signal / sigma_noise`` (inf if noiseless).
    sigma_noise : ndarray of shape (n_voxels,)
        Noise standard deviation of single trials in z-scored units.
    k : float
        Noise reduction factor of the average: ``1/n`` for ``n`` repeats, the mean over
        stimuli of ``1/n_s`` for mixed counts.
    """

    ceiling: np.ndarray
    ncsnr: np.ndarray
    sigma_noise: np.ndarray
    k: float


def ncsnr_ceiling(
    trials,
    stimulus_ids,
    sessions=None,
    n_average: int | None = None,
    voxel_chunk: int = 4096,
) -> NCSNRCeiling:
    """Noise ceiling from repeated trials, as in the Natural Scenes Dataset.

    Each voxel's trials are z-scored within each session (``ddof=1``). Then
    ``sigma_noise = sqrt(mean over stimuli with >= 2 repeats of the across-repeat variance)``
    (``ddof=1``), ``sigma_signal = sqrt(max(0, 1 - sigma_noise^2))``,
    ``ncsnr = sigma_signal / sigma_noise`` and ``NC = ncsnr^2 / (ncsnr^2 + k)``.

    Parameters
    ----------
    trials : array-like of shape (n_trials, n_voxels)
        Single-trial responses (e.g. GLMsingle betas).
    stimulus_ids : array-like of shape (n_trials,)
        Stimulus of each trial; stimuli seen more than once estimate the noise.
    sessions : array-like of shape (n_trials,), optional
        Session of each trial (z-scoring is per session); ``None``: one session.
    n_average : int, optional
        Number of repeats in the average that the model is scored on; ``k = 1 / n_average``.
        By default ``k`` is the mean over all stimuli of ``1 / n_s`` (``n_s`` their repeat
        counts, singletons included), which is NSD's ``(A/3 + B/2 + C/1) / (A + B + C)``.
    voxel_chunk : int, default=4096
        Voxels processed at a time (bounds memory).

    Returns
    -------
    NCSNRCeiling
        ``ceiling`` (fraction of variance of the repeat-averaged response), ``ncsnr``,
        ``sigma_noise`` and ``k``. Voxels constant within a session get NaN.
    """
    trials = np.asarray(trials, dtype=float)
    if trials.ndim != 2:
        raise ValueError(f"trials must be 2-D (trials, voxels); got shape {trials.shape}")
    _finite("trials", trials)
    ids = np.asarray(stimulus_ids)
    if ids.shape != (trials.shape[0],):
        raise ValueError(
            f"stimulus_ids must have one entry per trial ({trials.shape[0]}); got {ids.shape}"
        )
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    repeated = counts >= 2
    if not repeated.any():
        raise ValueError("no stimulus has 2 or more repeats: the noise cannot be estimated")
    if n_average is None:
        k = float(np.mean(1.0 / counts))
    else:
        if int(n_average) != n_average or n_average < 1:
            raise ValueError(f"n_average must be a positive integer; got {n_average}")
        k = 1.0 / n_average

    if sessions is None:
        session_rows = [np.arange(trials.shape[0])]
    else:
        sessions = np.asarray(sessions)
        if sessions.shape != (trials.shape[0],):
            raise ValueError(
                f"sessions must have one entry per trial ({trials.shape[0]}); got {sessions.shape}"
            )
        session_rows = [np.flatnonzero(sessions == s) for s in np.unique(sessions)]
    if min(len(r) for r in session_rows) < 2:
        raise ValueError("every session needs at least 2 trials to be z-scored")

    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_vox = trials.shape[1]
    noise_var = np.empty(n_vox)
    for lo in range(0, n_vox, voxel_chunk):
        block = trials[:, lo : lo + voxel_chunk]
        z = np.empty_like(block)
        for rows in session_rows:
            x = block[rows]
            sd = x.std(axis=0, ddof=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                z[rows] = (x - x.mean(axis=0)) / np.where(sd > 0, sd, np.nan)
        zs = z[order]
        means = np.add.reduceat(zs, starts, axis=0) / counts[:, None]
        dev = zs - np.repeat(means, counts, axis=0)
        var = np.add.reduceat(dev**2, starts, axis=0)[repeated] / (counts[repeated, None] - 1)
        noise_var[lo : lo + voxel_chunk] = var.mean(axis=0)

    signal_var = np.maximum(0.0, 1.0 - noise_var)
    with np.errstate(divide="ignore", invalid="ignore"):
        ncsnr = np.sqrt(signal_var) / np.sqrt(noise_var)
        # written without ncsnr so that a noiseless voxel gives 1, not inf / inf
        ceiling = signal_var / (signal_var + k * noise_var)
    return NCSNRCeiling(ceiling=ceiling, ncsnr=ncsnr, sigma_noise=np.sqrt(noise_var), k=k)


@dataclass(frozen=True)
class SplitHalfCeiling:
    """Result of :func:`split_half_ceiling`.

    Attributes
    ----------
    ceiling : ndarray of shape (n_voxels,)
        Spearman-Brown-corrected reliability of the average of ``n_average`` repeats, clipped
        to 0..1: a fraction of variance (R² scale).
    r_half : ndarray of shape (n_voxels,)
        Mean correlation between the two half-averages over splits (uncorrected).
    n_half : int
        Repeats in each half.
    """

    ceiling: np.ndarray
    r_half: np.ndarray
    n_half: int


def _colwise_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (a * b).sum(axis=0) / den, np.nan)


def split_half_ceiling(
    repeats,
    n_splits: int = 20,
    n_average: int | None = None,
    random_state=0,
) -> SplitHalfCeiling:
    """Split-half reliability with Spearman-Brown correction.

    For each random split of the repeats into two disjoint halves of ``h = n_repeats // 2``
    repeats (one repeat left out when odd), the two half-averages are correlated across samples
    per voxel; the mean correlation ``r`` over splits is stepped up to the reliability of an
    average of ``n_average`` repeats with Spearman-Brown, ``m r / (1 + (m - 1) r)`` with
    ``m = n_average / h``. Reliability is the fraction of the averaged response's variance
    that is signal, i.e. already on the R² scale (its square root is the r-scale ceiling).

    Parameters
    ----------
    repeats : array-like of shape (n_repeats, n_samples, n_voxels)
        Repeated measurements of the same samples (e.g. a test story heard ``n_repeats``
        times, or images each shown ``n_repeats`` times, aligned on axis 1).
    n_splits : int, default=20
        Random splits to average (capped at the number of distinct splits).
    n_average : int, optional
        Repeats in the average the model is scored on; default ``n_repeats``.
    random_state : int, numpy Generator or None, default=0
        Seed of the splits.

    Returns
    -------
    SplitHalfCeiling
        ``ceiling`` (n_voxels,) fraction of variance, ``r_half`` and ``n_half``. NaN for
        voxels constant in a half.
    """
    repeats = np.asarray(repeats, dtype=float)
    if repeats.ndim != 3:
        raise ValueError(
            f"repeats must be 3-D (repeats, samples, voxels); got shape {repeats.shape}"
        )
    _finite("repeats", repeats)
    n_rep, n_samples, _ = repeats.shape
    if n_rep < 2:
        raise ValueError(f"split-half needs at least 2 repeats; got {n_rep}")
    if n_samples < 3:
        raise ValueError(f"need at least 3 samples to correlate; got {n_samples}")
    if n_average is None:
        n_average = n_rep
    if int(n_average) != n_average or n_average < 1:
        raise ValueError(f"n_average must be a positive integer; got {n_average}")
    if int(n_splits) != n_splits or n_splits < 1:
        raise ValueError(f"n_splits must be a positive integer; got {n_splits}")
    h = n_rep // 2
    n_distinct = (
        np.prod(np.arange(n_rep - 2 * h + 1, n_rep + 1, dtype=float))
        / np.prod(np.arange(1, h + 1, dtype=float)) ** 2
        / 2
    )
    rng = np.random.default_rng(random_state)
    rs = []
    for _ in range(int(min(n_splits, max(1, n_distinct)))):
        perm = rng.permutation(n_rep)
        a = repeats[perm[:h]].mean(axis=0)
        b = repeats[perm[h : 2 * h]].mean(axis=0)
        rs.append(_colwise_r(a, b))
    r = np.mean(rs, axis=0)
    m = n_average / h
    with np.errstate(invalid="ignore"):
        rel = m * r / (1.0 + (m - 1.0) * r)
        ceiling = np.where(r > 0, np.clip(rel, 0.0, 1.0), np.where(np.isnan(r), np.nan, 0.0))
    return SplitHalfCeiling(ceiling=ceiling, r_half=r, n_half=h)


def isc_ceiling(responses, method: str = "pairwise") -> np.ndarray:
    """Inter-subject correlation ceiling for subjects who heard (or saw) the same stimulus.

    Model: ``y_s = signal + noise_s`` with a signal shared by all subjects and independent
    noise. The fraction of subject ``s``'s variance that is shared signal bounds the R² of any
    model that predicts the stimulus-driven response.

    Parameters
    ----------
    responses : array-like of shape (n_subjects, n_time, n_voxels)
        Time-aligned responses in a common space (e.g. fsaverage), at least 2 subjects.
    method : {"pairwise", "ratio"}, default="pairwise"
        ``"pairwise"``: mean of subject ``s``'s Pearson correlations with each other subject,
        which equals the shared fraction when all subjects are equally noisy.
        ``"ratio"``: ``(mean_o r(s, o))^2 / mean_{o<p; o,p != s} r(o, p)``, which stays (nearly)
        unbiased when noise levels differ between subjects (needs >= 3 subjects).

    Returns
    -------
    ndarray of shape (n_subjects, n_voxels)
        Shared-signal fraction (R² scale), clipped to 0..1; NaN for a voxel constant in any
        subject.
    """
    y = np.asarray(responses, dtype=float)
    if y.ndim != 3:
        raise ValueError(f"responses must be 3-D (subjects, time, voxels); got shape {y.shape}")
    _finite("responses", y)
    n_sub, n_time, _ = y.shape
    if n_sub < 2:
        raise ValueError(f"inter-subject correlation needs at least 2 subjects; got {n_sub}")
    if n_time < 3:
        raise ValueError(f"need at least 3 time points; got {n_time}")
    if method not in ("pairwise", "ratio"):
        raise ValueError(f"method must be 'pairwise' or 'ratio'; got {method!r}")
    if method == "ratio" and n_sub < 3:
        raise ValueError("method='ratio' needs at least 3 subjects")
    sd = y.std(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (y - y.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, np.nan)
    total = z.sum(axis=0)
    # sum over o != s of r(s, o) = mean_t z_s * (sum_o z_o - z_s)
    r_sum = np.einsum("stv,tv->sv", z, total) / n_time - 1.0
    mean_r = r_sum / (n_sub - 1)
    if method == "pairwise":
        out = mean_r
    else:
        all_pairs = ((total**2).mean(axis=0) - n_sub) / 2.0  # sum of r over all pairs
        others = (all_pairs[None] - r_sum) / ((n_sub - 1) * (n_sub - 2) / 2.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where((mean_r > 0) & (others > 0), mean_r**2 / others, 0.0)
        out = np.where(np.isnan(mean_r) | np.isnan(others), np.nan, out)
    with np.errstate(invalid="ignore"):
        return np.clip(out, 0.0, 1.0)


class NormalisedScores(NamedTuple):
    """Scores relative to a noise ceiling (see :func:`normalised_scores`)."""

    r_over_ceiling: np.ndarray
    fraction_explained: np.ndarray
    above_ceiling: np.ndarray


def normalised_scores(r, ceiling) -> NormalisedScores:
    """Correlations relative to a noise ceiling given as a fraction of variance.

    Parameters
    ----------
    r : array-like
        Correlations (any shape; NaN allowed).
    ceiling : array-like
        Noise ceiling on the R² scale (fraction of variance), broadcastable to ``r``.

    Returns
    -------
    NormalisedScores
        ``r_over_ceiling = r / sqrt(ceiling)`` (correlation scale);
        ``fraction_explained = r |r| / ceiling`` (fraction of the explainable variance, signed
        so that a negative correlation does not count as explained variance; equals
        ``r^2 / ceiling`` for ``r >= 0``); ``above_ceiling``: boolean, ``r > sqrt(ceiling)``.
        The first two are NaN where ``ceiling <= 0`` or either input is NaN, and then
        ``above_ceiling`` is False.
    """
    r = np.asarray(r, dtype=float)
    c = np.asarray(ceiling, dtype=float)
    try:
        r, c = np.broadcast_arrays(r, c)
    except ValueError as err:
        raise ValueError(f"r {r.shape} and ceiling {c.shape} cannot be broadcast together") from err
    if np.any(c > 1.0 + 1e-9):
        raise ValueError(
            "ceiling must be a fraction of variance (0..1); got values above 1 "
            "(a ceiling in percent? divide it by 100)"
        )
    ok = (c > 0) & ~np.isnan(r)
    safe = np.where(ok, c, 1.0)
    r_over = np.where(ok, r / np.sqrt(safe), np.nan)
    frac = np.where(ok, r * np.abs(r) / safe, np.nan)
    above = ok & (r > np.sqrt(safe))
    return NormalisedScores(r_over, frac, above)


def algonauts_score(r, nc, nc_units: str = "fraction", reduce: bool = True):
    """Algonauts 2023 challenge score (noise-normalised squared correlation, percent).

    ``r < 0 -> 0``; ``100 * r^2 / NC`` with ``NC == 0 -> 1e-14``; clipped at 100; mean over
    voxels. The challenge's development kit computes ``NC = ncsnr^2 / (ncsnr^2 + k)``, a
    fraction; NSD's released noise-ceiling maps are in percent. Pass ``nc_units`` accordingly.

    Parameters
    ----------
    r : array-like of shape (n_voxels,)
        Correlations between measured and predicted responses; NaN (e.g. a constant
        prediction) counts as 0.
    nc : array-like of shape (n_voxels,)
        Noise ceiling of each voxel.
    nc_units : {"fraction", "percent"}, default="fraction"
        Units of ``nc``: 0..1 or 0..100.
    reduce : bool, default=True
        Return the mean (a float) or the per-voxel scores.

    Returns
    -------
    float or ndarray of shape (n_voxels,)
        Score in percent (0..100).
    """
    r = np.asarray(r, dtype=float)
    nc = np.asarray(nc, dtype=float)
    if r.shape != nc.shape:
        raise ValueError(f"r {r.shape} and nc {nc.shape} must have the same shape")
    if r.size == 0:
        raise ValueError("r is empty")
    _finite("nc", nc)
    if np.any(nc < 0):
        raise ValueError("nc contains negative values")
    if nc_units == "percent":
        nc = nc / 100.0
    elif nc_units != "fraction":
        raise ValueError(f"nc_units must be 'fraction' or 'percent'; got {nc_units!r}")
    if np.any(nc > 1.0 + 1e-9):
        raise ValueError("nc has values above 1: pass nc_units='percent' for a ceiling in percent")
    r = np.where(np.isnan(r) | (r < 0), 0.0, r)
    nc = np.where(nc == 0, 1e-14, nc)
    score = np.minimum(100.0 * r**2 / nc, 100.0)
    return float(score.mean()) if reduce else score
