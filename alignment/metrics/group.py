"""Group statistics across subjects: one-sample tests, best-layer consistency, peak depth.

Every function takes a per-subject array whose first axis is the subject, so a study's answer
("which layer wins across subjects, and does the model beat its baseline?") is computed from
one number per subject, the unit of a random-effects analysis:

- :func:`sign_flip_test` / :func:`group_test`: is the mean over subjects above zero? The default
  statistic per subject is its score minus its own null mean; under the null hypothesis that
  quantity is symmetric around zero, so flipping signs gives an exact test (all ``2**n`` sign
  patterns when there are few subjects, a Monte Carlo sample otherwise). A one-sample t-test
  is available on request.
- :func:`best_layer_consistency`: in how many subjects each layer is best, and a bootstrap
  (over subjects) interval of the best layer of the group mean.
- :func:`peak_depth`: the peak of a layer profile on the relative-depth axis (0 = input,
  1 = last layer), refined between layers by a parabola through the peak and its neighbours,
  so that models of different depth are compared at sub-layer resolution.
- :func:`loso_selected`: each subject's score at the layer chosen on the OTHER subjects, which
  lets a paired comparison of two models pick each model's best layer without the upward bias
  of picking it on the same data.

With ``n`` subjects the smallest attainable sign-flip p-value is ``2**-n`` (one-sided): at
least 5 subjects are needed to reach p < .05.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "GROUP_TESTS",
    "BestLayerConsistency",
    "GroupTestResult",
    "best_layer_consistency",
    "group_test",
    "loso_selected",
    "mean_ci",
    "min_attainable_p",
    "peak_depth",
    "sign_flip_test",
    "simes",
    "t_test",
]

#: Names of the subject-level tests understood by :func:`group_test`.
GROUP_TESTS = ("sign-flip", "t-test")

_ALTERNATIVES = ("greater", "less", "two-sided")
_CHUNK_ELEMENTS = 4_000_000  # permutations x columns evaluated at once (32 MB of float64)


@dataclass(frozen=True)
class GroupTestResult:
    """Result of a test across subjects, one entry per tested column.

    Attributes
    ----------
    mean : ndarray
        Mean over subjects (NaN subjects left out).
    ci_low, ci_high : ndarray
        95% confidence interval of the mean (t distribution; NaN with fewer than 2 subjects).
    p : ndarray
        p-value of the test (NaN with fewer than 2 subjects).
    n_subjects : ndarray of int
        Subjects with a finite value.
    test : str
        ``"sign-flip"`` or ``"t-test"``.
    alternative : str
        ``"greater"``, ``"less"`` or ``"two-sided"``.
    n_permutations : int
        Sign patterns evaluated (``2**n`` when exact); 0 for the t-test.
    exact : bool
        True when every sign pattern was enumerated.
    """

    mean: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p: np.ndarray
    n_subjects: np.ndarray
    test: str
    alternative: str
    n_permutations: int = 0
    exact: bool = False


def _as_subjects(x) -> tuple[np.ndarray, tuple[int, ...]]:
    """(n_subjects, n_columns) float view of ``x`` and the trailing shape."""
    x = np.asarray(x, dtype=float)
    if x.ndim == 0:
        raise ValueError("expected an array with subjects on the first axis; got a scalar")
    shape = x.shape[1:]
    return x.reshape(x.shape[0], -1), shape


def _check_alternative(alternative: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}; got {alternative!r}")


def mean_ci(x, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the first axis and its t-distribution confidence interval (NaN ignored).

    Parameters
    ----------
    x : array-like, shape (n_subjects, ...)
        One value per subject.
    level : float
        Coverage of the interval.

    Returns
    -------
    mean, low, high : ndarray of shape ``x.shape[1:]``
        NaN where fewer than one (mean) or two (interval) subjects are finite.
    """
    from scipy.special import stdtrit  # scipy.special imports much faster than scipy.stats

    x2, shape = _as_subjects(x)
    finite = np.isfinite(x2)
    n = finite.sum(axis=0)
    total = np.where(finite, x2, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        dev = np.where(finite, x2 - mean, 0.0)
        sd = np.sqrt((dev**2).sum(axis=0) / np.maximum(n - 1, 1))
        half = stdtrit(np.maximum(n - 1, 1), 0.5 + level / 2) * sd / np.sqrt(n)
    half = np.where(n > 1, half, np.nan)
    return mean.reshape(shape), (mean - half).reshape(shape), (mean + half).reshape(shape)


def min_attainable_p(n_subjects: int, test: str = "sign-flip", alternative: str = "greater"):
    """Smallest p-value a test can give with ``n_subjects`` (0 for the t-test).

    An exact one-sided sign-flip test cannot go below ``2**-n`` (two-sided: ``2**(1-n)``).
    """
    if test == "t-test" or n_subjects < 1:
        return 0.0
    return float(2.0 ** -(n_subjects - (alternative == "two-sided")))


def _sign_patterns(n: int, n_permutations: int, rng) -> tuple[np.ndarray, bool]:
    """(B, n) matrix of +-1: every pattern when 2**n <= n_permutations, else a sample."""
    if n <= 20 and 2**n <= n_permutations:
        codes = np.arange(2**n)[:, None]
        bits = (codes >> np.arange(n)[None, :]) & 1
        return 1.0 - 2.0 * bits, True  # row 0 is the identity
    return rng.choice([-1.0, 1.0], size=(n_permutations, n)), False


def _flip_p(x: np.ndarray, signs: np.ndarray, exact: bool, alternative: str) -> np.ndarray:
    """p-values of the mean of each column of ``x`` (n, m), complete columns only."""
    n, m = x.shape
    obs = x.mean(axis=0)
    scale = np.abs(x).max(axis=0) + 1e-300
    tol = 1e-9 * scale  # exact ties (up to rounding) count as "at least as extreme"
    count = np.zeros(m)
    chunk = max(1, _CHUNK_ELEMENTS // signs.shape[0])
    for lo in range(0, m, chunk):
        sl = slice(lo, lo + chunk)
        null = signs @ x[:, sl] / n
        if alternative == "greater":
            count[sl] = (null >= obs[sl] - tol[sl]).sum(axis=0)
        elif alternative == "less":
            count[sl] = (null <= obs[sl] + tol[sl]).sum(axis=0)
        else:
            count[sl] = (np.abs(null) >= np.abs(obs[sl]) - tol[sl]).sum(axis=0)
    if exact:
        return count / signs.shape[0]
    return (1.0 + count) / (1.0 + signs.shape[0])


def sign_flip_test(
    x,
    n_permutations: int = 10000,
    alternative: str = "greater",
    random_state=0,
) -> GroupTestResult:
    """One-sample sign-flip permutation test of the mean over subjects, per column.

    Parameters
    ----------
    x : array-like, shape (n_subjects, ...)
        One value per subject and tested quantity, e.g. each subject's ROI-mean r minus its null
        mean, for every (ROI, layer). Under the null hypothesis each subject's value is
        symmetric around zero. NaN values leave that subject out of that column.
    n_permutations : int, default=10000
        Sign patterns to sample. When ``2**n_subjects <= n_permutations`` every pattern is
        enumerated and the test is exact: ``p = #(flipped mean >= observed) / 2**n``.
        Otherwise ``p = (1 + #(flipped mean >= observed)) / (1 + n_permutations)``.
    alternative : {"greater", "less", "two-sided"}
        ``"greater"``: the mean is above zero.
    random_state : int, numpy Generator or None
        Seed of the sampled sign patterns (the same patterns serve every column).

    Returns
    -------
    GroupTestResult
        Arrays of shape ``x.shape[1:]``.
    """
    _check_alternative(alternative)
    if int(n_permutations) != n_permutations or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive integer; got {n_permutations}")
    x2, shape = _as_subjects(x)
    rng = np.random.default_rng(random_state)
    finite = np.isfinite(x2)
    p = np.full(x2.shape[1], np.nan)
    exact_all, n_used = True, 0
    # columns with the same subjects present share one set of sign patterns
    patterns, inverse = np.unique(finite.T, axis=0, return_inverse=True)
    for k, present in enumerate(patterns):
        cols = np.flatnonzero(inverse.ravel() == k)
        n = int(present.sum())
        if n < 2:
            continue
        signs, exact = _sign_patterns(n, int(n_permutations), rng)
        exact_all &= exact
        n_used = max(n_used, signs.shape[0])
        p[cols] = _flip_p(x2[np.ix_(present, cols)], signs, exact, alternative)
    mean, low, high = mean_ci(x2)
    return GroupTestResult(
        mean=mean.reshape(shape),
        ci_low=low.reshape(shape),
        ci_high=high.reshape(shape),
        p=p.reshape(shape),
        n_subjects=finite.sum(axis=0).reshape(shape),
        test="sign-flip",
        alternative=alternative,
        n_permutations=n_used,
        exact=bool(exact_all and n_used > 0),
    )


def t_test(x, alternative: str = "greater") -> GroupTestResult:
    """One-sample t-test of the mean over subjects against zero, per column (NaN left out).

    Parameters
    ----------
    x : array-like, shape (n_subjects, ...)
        One value per subject.
    alternative : {"greater", "less", "two-sided"}
        Direction of the alternative.

    Returns
    -------
    GroupTestResult
        Arrays of shape ``x.shape[1:]``; p (as ``scipy.stats.ttest_1samp``) is NaN where fewer
        than 2 subjects are finite or the values do not vary.
    """
    from scipy.special import stdtr

    _check_alternative(alternative)
    x2, shape = _as_subjects(x)
    finite = np.isfinite(x2)
    n = finite.sum(axis=0)
    mean, low, high = mean_ci(x2)
    with np.errstate(invalid="ignore", divide="ignore"):
        dev = np.where(finite, x2 - mean, 0.0)
        sd = np.sqrt((dev**2).sum(axis=0) / np.maximum(n - 1, 1))
        t = mean / (sd / np.sqrt(n))
        df = np.maximum(n - 1, 1)
        if alternative == "greater":
            p = stdtr(df, -t)
        elif alternative == "less":
            p = stdtr(df, t)
        else:
            p = 2 * stdtr(df, -np.abs(t))
    p = np.where((n >= 2) & np.isfinite(t), p, np.nan)
    return GroupTestResult(
        mean=mean.reshape(shape),
        ci_low=low.reshape(shape),
        ci_high=high.reshape(shape),
        p=p.reshape(shape),
        n_subjects=n.reshape(shape),
        test="t-test",
        alternative=alternative,
    )


def group_test(
    x,
    test: str = "sign-flip",
    alternative: str = "greater",
    n_permutations: int = 10000,
    random_state=0,
) -> GroupTestResult:
    """Dispatch to :func:`sign_flip_test` (default) or :func:`t_test` by name.

    Parameters
    ----------
    x : array-like, shape (n_subjects, ...)
        One value per subject.
    test : {"sign-flip", "t-test"}
        Test across subjects.
    alternative : {"greater", "less", "two-sided"}
        Direction of the alternative.
    n_permutations : int
        Sign patterns (sign-flip only).
    random_state : int, numpy Generator or None
        Seed (sign-flip only).
    """
    if test == "sign-flip":
        return sign_flip_test(x, n_permutations, alternative, random_state)
    if test == "t-test":
        return t_test(x, alternative)
    raise ValueError(f"test must be one of {GROUP_TESTS}; got {test!r}")


@dataclass(frozen=True)
class BestLayerConsistency:
    """Result of :func:`best_layer_consistency`.

    Attributes
    ----------
    best : int
        Position of the layer with the highest group mean (-1 when every mean is NaN).
    counts : ndarray of int, shape (n_layers,)
        Subjects whose own best layer is each layer.
    n_subjects : int
        Subjects with at least one finite value.
    ci_low, ci_high : float
        95% bootstrap interval of the position of the group-mean best layer.
    bootstrap_share : float
        Share of bootstrap resamples whose best layer is ``best``.
    """

    best: int
    counts: np.ndarray
    n_subjects: int
    ci_low: float
    ci_high: float
    bootstrap_share: float


def _nanmean0(x: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(x)
    count = finite.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(finite, x, 0.0).sum(axis=axis) / count, np.nan)


def _argmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """argmax ignoring NaN; -1 where a slice has no finite value."""
    filled = np.where(np.isfinite(x), x, -np.inf)
    out = np.argmax(filled, axis=axis)
    return np.where(np.isfinite(x).any(axis=axis), out, -1)


def best_layer_consistency(
    profiles, n_bootstrap: int = 1000, random_state=0
) -> BestLayerConsistency:
    """How consistently one layer is best across subjects.

    Parameters
    ----------
    profiles : array-like, shape (n_subjects, n_layers)
        Each subject's layer profile (e.g. ROI-mean r minus null mean), layers in model order.
    n_bootstrap : int, default=1000
        Resamples of subjects (with replacement) for the interval of the best layer.
    random_state : int, numpy Generator or None
        Seed of the resamples.

    Returns
    -------
    BestLayerConsistency
        The group-mean best layer, per-layer counts of subjects whose best layer it is, and the
        2.5-97.5 percentile interval of the best layer over bootstrap resamples of subjects.
    """
    x = np.asarray(profiles, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"profiles must be (n_subjects, n_layers); got shape {x.shape}")
    keep = np.isfinite(x).any(axis=1)
    x = x[keep]
    n, n_layers = x.shape
    if n == 0:
        return BestLayerConsistency(-1, np.zeros(n_layers, int), 0, np.nan, np.nan, np.nan)
    own = _argmax(x, axis=1)
    counts = np.bincount(own[own >= 0], minlength=n_layers)
    best = int(_argmax(_nanmean0(x, axis=0)[None, :])[0])
    rng = np.random.default_rng(random_state)
    idx = rng.integers(0, n, size=(int(n_bootstrap), n))
    boot = _argmax(_nanmean0(x[idx], axis=1), axis=1)
    boot = boot[boot >= 0]
    low, high = np.percentile(boot, [2.5, 97.5]) if boot.size else (np.nan, np.nan)
    share = float(np.mean(boot == best)) if boot.size else np.nan
    return BestLayerConsistency(best, counts, n, float(low), float(high), share)


def peak_depth(depth, profile) -> tuple[np.ndarray, np.ndarray]:
    """Peak of layer profiles on the relative-depth axis, refined between layers.

    Parameters
    ----------
    depth : array-like, shape (n_layers,)
        Relative depth of each layer (0 = input, 1 = last layer), increasing.
    profile : array-like, shape (..., n_layers)
        Scores per layer (e.g. group-mean r).

    Returns
    -------
    depth_peak : ndarray, shape (...)
        Depth of the vertex of the parabola through the best layer and its two neighbours
        (kept within the neighbours); the best layer's own depth at either end of the profile,
        for a single layer, or when the three points are not concave. NaN where every score is
        NaN.
    best : ndarray of int, shape (...)
        Position of the best layer (-1 where every score is NaN).
    """
    d = np.asarray(depth, dtype=float)
    y = np.asarray(profile, dtype=float)
    if y.shape[-1] != d.size:
        raise ValueError(f"profile has {y.shape[-1]} layers but depth has {d.size}")
    best = _argmax(y, axis=-1)
    flat_y = y.reshape(-1, d.size)
    flat_b = best.reshape(-1)
    out = np.full(flat_b.shape, np.nan)
    for i, b in enumerate(flat_b):
        if b < 0:
            continue
        out[i] = d[b]
        if 0 < b < d.size - 1:
            x0, x1, x2 = d[b - 1 : b + 2]
            y0, y1, y2 = flat_y[i, b - 1 : b + 2]
            if not np.all(np.isfinite([y0, y1, y2])):
                continue
            # vertex of the parabola through three points with arbitrary spacing
            den = (x0 - x1) * (x0 - x2) * (x1 - x2)
            a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
            bb = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / den
            if a < 0:
                out[i] = float(np.clip(-bb / (2 * a), x0, x2))
    return out.reshape(best.shape), best


def loso_selected(values) -> tuple[np.ndarray, np.ndarray]:
    """Each subject's value at the layer that is best on the other subjects.

    Parameters
    ----------
    values : array-like, shape (n_subjects, n_layers)
        Per-subject layer profiles.

    Returns
    -------
    selected : ndarray, shape (n_subjects,)
        ``values[s, argmax(mean over subjects != s)]``; with a single subject, its own maximum.
        NaN for a subject without finite values.
    layer : ndarray of int, shape (n_subjects,)
        The layer chosen for each subject (-1 where none).

    Notes
    -----
    Choosing the best layer on the same subjects whose scores are then compared inflates them
    (the maximum of noisy layers), more for models with more layers. Leaving the subject out of
    the choice removes that bias, so models of different depth compare fairly.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"values must be (n_subjects, n_layers); got shape {x.shape}")
    n = x.shape[0]
    finite = np.isfinite(x)
    total = np.where(finite, x, 0.0).sum(axis=0)
    count = finite.sum(axis=0)
    selected = np.full(n, np.nan)
    layer = np.full(n, -1)
    for s in range(n):
        if not finite[s].any():
            continue
        if n == 1:
            b = int(_argmax(x[s][None, :])[0])
        else:
            rest_n = count - finite[s]
            with np.errstate(invalid="ignore", divide="ignore"):
                rest = np.where(
                    rest_n > 0, (total - np.where(finite[s], x[s], 0.0)) / rest_n, np.nan
                )
            b = int(_argmax(rest[None, :])[0])
            if b < 0:
                b = int(_argmax(x[s][None, :])[0])
        layer[s] = b
        selected[s] = x[s, b]
    return selected, layer


def simes(p, axis: int = -1) -> np.ndarray:
    """Simes' combination of p-values: ``min_i m p_(i) / i`` over the finite p along ``axis``.

    A valid p-value for the global null "no test is non-null" under independence or positive
    dependence (e.g. the voxels of one ROI); NaN where no p is finite.
    """
    p = np.moveaxis(np.asarray(p, dtype=float), axis, -1)
    finite = np.isfinite(p)
    m = finite.sum(axis=-1, keepdims=True)
    ranked = np.sort(np.where(finite, p, np.inf), axis=-1)
    i = np.arange(1, p.shape[-1] + 1)
    with np.errstate(invalid="ignore"):
        combined = np.min(np.where(np.isfinite(ranked), ranked * m / i, np.inf), axis=-1)
    return np.where(m[..., 0] > 0, np.minimum(combined, 1.0), np.nan)
