"""Cross-validation folds shared by every encoder (DESIGN.md section 5).

Folds are lists of ``(train_idx, test_idx)`` pairs of sorted integer arrays, the form that
scikit-learn and himalaya accept as ``cv=``. Two kinds:

- :func:`grouped_folds` for images: every row of a group (e.g. the repeats of one image) falls on
  the same side; groups are shuffled with a seed.
- :func:`blocked_folds` for time series: contiguous, never shuffled test blocks, with a ``gap``
  of samples dropped from the training set on each side of a test block so that temporal
  autocorrelation (and the haemodynamic lag) does not leak test information into training.

:func:`inner_folds` builds the folds of a hyper-parameter search inside one outer training set.
"""

from __future__ import annotations

import numpy as np

from alignment.timeseries import run_segments

__all__ = ["blocked_folds", "grouped_folds", "inner_folds"]

Folds = list[tuple[np.ndarray, np.ndarray]]


def _is_int(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _check_n_folds(n_folds) -> int:
    if not _is_int(n_folds) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2; got {n_folds!r}")
    return int(n_folds)


def _check_gap(gap) -> int:
    if not _is_int(gap) or gap < 0:
        raise ValueError(f"gap must be a non-negative integer; got {gap!r}")
    return int(gap)


def grouped_folds(groups, n_folds: int = 5, random_state=0) -> Folds:
    """K-fold split that keeps every group on one side, with shuffled groups.

    Unlike scikit-learn's ``GroupKFold`` (deterministic, size-balanced), the unique groups are
    shuffled with ``random_state`` and dealt into ``n_folds`` folds of (nearly) equal numbers of
    groups.

    Parameters
    ----------
    groups : array-like of shape (n_samples,)
        Group label per sample (e.g. ``stimulus_id``, so that the repeats of an image are never
        split between train and test).
    n_folds : int, default=5
        Number of folds.
    random_state : int, numpy Generator or None, default=0
        Seed of the shuffle (``None``: not reproducible).

    Returns
    -------
    list of (train_idx, test_idx)
        ``n_folds`` pairs of sorted int64 index arrays; every sample is in exactly one test set.
    """
    n_folds = _check_n_folds(n_folds)
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be 1-D; got shape {groups.shape}")
    if groups.dtype.kind == "f" and np.isnan(groups).any():
        raise ValueError("groups contains NaN")
    uniq, inverse = np.unique(groups, return_inverse=True)
    if uniq.size < n_folds:
        raise ValueError(f"{uniq.size} groups are too few for {n_folds} folds")
    order = np.random.default_rng(random_state).permutation(uniq.size)
    fold_of_group = np.empty(uniq.size, dtype=np.int64)
    for k, chunk in enumerate(np.array_split(order, n_folds)):
        fold_of_group[chunk] = k
    fold = fold_of_group[inverse.ravel()]
    return [
        (np.flatnonzero(fold != k).astype(np.int64), np.flatnonzero(fold == k).astype(np.int64))
        for k in range(n_folds)
    ]


def _balanced_cuts(sizes: np.ndarray, n_folds: int) -> list[int]:
    """Cut a sequence of segments into ``n_folds`` consecutive groups of similar total size."""
    ends = np.cumsum(sizes)
    total = ends[-1]
    n_seg = sizes.size
    cuts = [0]  # cut k: groups k covers segments [cuts[k], cuts[k+1])
    for k in range(1, n_folds):
        lo = cuts[-1] + 1
        hi = n_seg - (n_folds - k)  # leave at least one segment per remaining group
        candidates = np.arange(lo, hi + 1)
        target = total * k / n_folds
        cuts.append(int(candidates[np.argmin(np.abs(ends[candidates - 1] - target))]))
    cuts.append(n_seg)
    return cuts


def _folds_from_blocks(blocks: list[np.ndarray], position_index: np.ndarray, gap: int) -> Folds:
    """Train/test pairs from test blocks of positions; the gap is measured on ``position_index``.

    ``position_index[p]`` is the sample index (time) of position ``p``, so that gaps are taken in
    time even when the positions are a subset of the series (inner folds).
    """
    n = position_index.size
    folds = []
    for test in blocks:
        test_time = position_index[test]
        # distance from every position to its nearest test sample, in samples of the series
        j = np.searchsorted(test_time, position_index)
        left = test_time[np.clip(j - 1, 0, test_time.size - 1)]
        right = test_time[np.clip(j, 0, test_time.size - 1)]
        dist = np.minimum(np.abs(position_index - left), np.abs(position_index - right))
        keep = dist > gap
        train = np.flatnonzero(keep)
        if train.size == 0:
            raise ValueError(f"gap={gap} leaves no training samples for a fold of {n} samples")
        folds.append((train.astype(np.int64), np.asarray(test, dtype=np.int64)))
    return folds


def _blocks(n_samples: int, n_folds, runs) -> list[np.ndarray]:
    if isinstance(n_folds, str):
        if n_folds != "runs":
            raise ValueError(f"n_folds must be an integer or 'runs'; got {n_folds!r}")
        if runs is None:
            raise ValueError("n_folds='runs' (leave-one-run-out) needs runs")
        segs = run_segments(runs, n_samples)
        if len(segs) < 2:
            raise ValueError("leave-one-run-out needs at least 2 runs")
        return [np.arange(s.start, s.stop) for s in segs]
    n_folds = _check_n_folds(n_folds)
    if runs is None:
        if n_samples < n_folds:
            raise ValueError(f"{n_samples} samples are too few for {n_folds} folds")
        return np.array_split(np.arange(n_samples), n_folds)
    segs = run_segments(runs, n_samples)
    if len(segs) < n_folds:
        raise ValueError(
            f"{len(segs)} runs are too few for {n_folds} folds of whole runs; use fewer folds, "
            "n_folds='runs', or runs=None for blocks that may cut through runs"
        )
    sizes = np.array([s.stop - s.start for s in segs])
    cuts = _balanced_cuts(sizes, n_folds)
    return [np.arange(segs[cuts[k]].start, segs[cuts[k + 1] - 1].stop) for k in range(n_folds)]


def blocked_folds(n_samples: int, n_folds=5, gap: int = 0, runs=None) -> Folds:
    """Contiguous (never shuffled) folds for time series, with a gap around each test block.

    Parameters
    ----------
    n_samples : int
        Length of the (concatenated) series.
    n_folds : int or "runs", default=5
        ``"runs"``: leave-one-run-out (needs ``runs``). An integer without ``runs``: the series
        is cut into ``n_folds`` contiguous blocks of (nearly) equal length. An integer with
        ``runs``: consecutive *whole* runs are grouped into ``n_folds`` contiguous blocks of
        similar length, so a test block never cuts through a run (needs at least ``n_folds``
        runs).
    gap : int, default=0
        Samples dropped from the training set on each side of each test block: no training
        index lies within ``gap`` of a test index. The gap is measured on the concatenated
        series, across run boundaries too (conservative, and harmless when runs are separate
        scans).
    runs : array-like of shape (n_samples,), optional
        Run label per sample; each run must be one contiguous stretch.

    Returns
    -------
    list of (train_idx, test_idx)
        Pairs of sorted int64 arrays, in time order; each test set is one contiguous range and
        every sample is tested exactly once.
    """
    if not _is_int(n_samples) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2; got {n_samples!r}")
    n_samples = int(n_samples)
    gap = _check_gap(gap)
    blocks = _blocks(n_samples, n_folds, runs)
    return _folds_from_blocks(blocks, np.arange(n_samples), gap)


def inner_folds(
    train_idx,
    groups=None,
    n_folds=5,
    gap: int = 0,
    kind: str = "grouped",
    random_state=0,
    runs=None,
) -> Folds:
    """Folds of a hyper-parameter search inside one outer training set.

    Parameters
    ----------
    train_idx : array-like of int, shape (n_train,)
        Outer training indices into the full data set.
    groups : array-like of shape (n_samples,), optional
        ``kind="grouped"``: group label of *every* sample of the full data set (indexed by
        ``train_idx``). ``None``: every sample is its own group.
    n_folds : int or "runs", default=5
        Number of inner folds (``"runs"`` for inner leave-one-run-out, blocked only).
    gap : int, default=0
        ``kind="blocked"``: gap in samples of the full series (it uses the absolute indices, so
        the hole that the outer test block left is not mistaken for adjacency).
    kind : {"grouped", "blocked"}, default="grouped"
        :func:`grouped_folds` or :func:`blocked_folds` logic.
    random_state : int, numpy Generator or None, default=0
        Seed for ``kind="grouped"``.
    runs : array-like of shape (n_samples,), optional
        ``kind="blocked"``: run label of every sample of the full data set; inner test blocks
        are then whole runs (see :func:`blocked_folds`).

    Returns
    -------
    list of (train, test)
        Index arrays RELATIVE to ``train_idx`` (positions ``0 .. n_train - 1``), ready for
        ``cv=`` of an estimator fitted on ``X[train_idx]``.
    """
    train_idx = np.asarray(train_idx)
    if train_idx.ndim != 1 or train_idx.size < 2:
        raise ValueError("train_idx must be a 1-D array of at least 2 indices")
    if not np.issubdtype(train_idx.dtype, np.integer):
        raise ValueError(f"train_idx must hold integers; got dtype {train_idx.dtype}")
    if np.unique(train_idx).size != train_idx.size:
        raise ValueError("train_idx contains duplicates")
    if kind == "grouped":
        if groups is None:
            labels = np.arange(train_idx.size)
        else:
            groups = np.asarray(groups)
            if groups.ndim != 1 or groups.shape[0] <= train_idx.max():
                raise ValueError(
                    "groups must be 1-D with a label for every sample of the full data set "
                    f"(at least {train_idx.max() + 1}); got shape {groups.shape}"
                )
            labels = groups[train_idx]
        return grouped_folds(labels, n_folds=_check_n_folds(n_folds), random_state=random_state)
    if kind != "blocked":
        raise ValueError(f"kind must be 'grouped' or 'blocked'; got {kind!r}")
    if np.any(np.diff(train_idx) <= 0):
        raise ValueError("kind='blocked' needs train_idx in increasing (time) order")
    gap = _check_gap(gap)
    sub_runs = None
    if runs is not None:
        runs = np.asarray(runs)
        if runs.ndim != 1 or runs.shape[0] <= train_idx.max():
            raise ValueError(
                "runs must be 1-D with a label for every sample of the full data set "
                f"(at least {train_idx.max() + 1}); got shape {runs.shape}"
            )
        sub_runs = runs[train_idx]
    blocks = _blocks(train_idx.size, n_folds, sub_runs)
    return _folds_from_blocks(blocks, train_idx.astype(np.int64), gap)
