import numpy as np
import pytest

from alignment.folds import blocked_folds, grouped_folds, inner_folds


def _check_partition(folds, n):
    tested = np.concatenate([te for _, te in folds])
    np.testing.assert_array_equal(np.sort(tested), np.arange(n))  # every sample tested once
    for tr, te in folds:
        assert tr.dtype == np.int64 and te.dtype == np.int64
        assert np.intersect1d(tr, te).size == 0
        assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)


def _min_distance(train, test):
    return np.min(np.abs(train[:, None] - test[None, :]))


def test_grouped_folds_keep_groups_together():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, size=120)  # repeats of 40 images, in random order
    folds = grouped_folds(groups, n_folds=5, random_state=1)
    assert len(folds) == 5
    _check_partition(folds, groups.size)
    for tr, te in folds:
        assert np.intersect1d(groups[tr], groups[te]).size == 0
    n_groups = [np.unique(groups[te]).size for _, te in folds]
    assert max(n_groups) - min(n_groups) <= 1


def test_grouped_folds_are_shuffled_and_seeded():
    groups = np.repeat(np.arange(50), 2)
    a = grouped_folds(groups, 5, random_state=0)
    b = grouped_folds(groups, 5, random_state=0)
    c = grouped_folds(groups, 5, random_state=1)
    for (_, ta), (_, tb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ta, tb)
    assert any(not np.array_equal(ta, tc) for (_, ta), (_, tc) in zip(a, c, strict=True))
    # not the contiguous split that an unshuffled K-fold would give
    assert not np.array_equal(a[0][1], np.arange(20))


def test_grouped_folds_string_groups_and_errors():
    folds = grouped_folds(["a", "b", "a", "c", "b", "c"], n_folds=3)
    _check_partition(folds, 6)
    with pytest.raises(ValueError, match="too few"):
        grouped_folds([0, 0, 1, 1], n_folds=3)
    with pytest.raises(ValueError, match="n_folds"):
        grouped_folds([0, 1, 2], n_folds=1)
    with pytest.raises(ValueError, match="NaN"):
        grouped_folds([0.0, np.nan, 1.0])


@pytest.mark.parametrize("gap", [0, 3])
def test_blocked_folds_contiguous_with_gap(gap):
    n = 103
    folds = blocked_folds(n, n_folds=5, gap=gap)
    _check_partition(folds, n)
    starts = [te[0] for _, te in folds]
    assert starts == sorted(starts)  # in time order
    for tr, te in folds:
        np.testing.assert_array_equal(te, np.arange(te[0], te[-1] + 1))  # contiguous
        assert _min_distance(tr, te) > gap
        # exactly the complement of the test block widened by the gap
        expected = np.setdiff1d(np.arange(n), np.arange(te[0] - gap, te[-1] + gap + 1))
        np.testing.assert_array_equal(tr, expected)
    assert {te.size for _, te in folds} <= {20, 21}


def test_blocked_folds_whole_runs():
    runs = np.repeat([0, 1, 2, 3, 4, 5], [30, 50, 40, 40, 20, 60])
    folds = blocked_folds(runs.size, n_folds=3, gap=2, runs=runs)
    _check_partition(folds, runs.size)
    for tr, te in folds:
        np.testing.assert_array_equal(te, np.arange(te[0], te[-1] + 1))
        # no run is split between test and train
        for r in np.unique(runs[te]):
            assert np.all(np.isin(np.flatnonzero(runs == r), te))
        assert _min_distance(tr, te) > 2
    sizes = [te.size for _, te in folds]
    assert max(sizes) - min(sizes) <= 60  # balanced as well as whole runs allow
    with pytest.raises(ValueError, match="too few"):
        blocked_folds(runs.size, n_folds=7, runs=runs)


def test_leave_one_run_out():
    runs = np.repeat(["r1", "r2", "r3"], [10, 12, 8])
    folds = blocked_folds(30, n_folds="runs", gap=1, runs=runs)
    assert [te.size for _, te in folds] == [10, 12, 8]
    _check_partition(folds, 30)
    for tr, te in folds:
        assert np.unique(runs[te]).size == 1
        assert _min_distance(tr, te) > 1
    with pytest.raises(ValueError, match="needs runs"):
        blocked_folds(30, n_folds="runs")
    with pytest.raises(ValueError, match="contiguous"):
        blocked_folds(4, n_folds="runs", runs=[0, 1, 0, 1])


def test_blocked_folds_errors():
    with pytest.raises(ValueError, match="too few"):
        blocked_folds(3, n_folds=5)
    with pytest.raises(ValueError, match="gap"):
        blocked_folds(20, n_folds=2, gap=-1)
    with pytest.raises(ValueError, match="no training"):
        blocked_folds(10, n_folds=2, gap=10)


def test_inner_folds_grouped_relative():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(60), 3)
    outer = grouped_folds(groups, 5, random_state=0)
    train_idx = outer[0][0]
    inner = inner_folds(train_idx, groups=groups, n_folds=4, kind="grouped", random_state=rng)
    _check_partition(inner, train_idx.size)
    sub_groups = groups[train_idx]
    for tr, te in inner:
        assert np.intersect1d(sub_groups[tr], sub_groups[te]).size == 0
    with pytest.raises(ValueError, match="every sample"):
        inner_folds(train_idx, groups=groups[:10])


def test_inner_folds_blocked_gap_in_time():
    n, gap = 200, 3
    outer = blocked_folds(n, n_folds=5, gap=gap)
    train_idx = outer[2][0]  # a hole in the middle of the series
    inner = inner_folds(train_idx, n_folds=4, gap=gap, kind="blocked")
    _check_partition(inner, train_idx.size)
    for tr, te in inner:
        assert _min_distance(train_idx[tr], train_idx[te]) > gap
        # the only samples dropped are those within the gap in time
        dropped = np.setdiff1d(np.arange(train_idx.size), np.concatenate([tr, te]))
        assert np.all([_min_distance(train_idx[[d]], train_idx[te]) <= gap for d in dropped])
    # the hole is not mistaken for adjacency: a block ending right before the hole keeps
    # the samples right after it
    hole_end = np.flatnonzero(np.diff(train_idx) > 1)[0]
    for tr, te in inner:
        if te[-1] == hole_end:
            assert hole_end + 1 in tr


def test_inner_folds_blocked_runs_and_sklearn():
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import cross_val_score

    runs = np.repeat(np.arange(6), 20)
    outer = blocked_folds(runs.size, n_folds="runs", gap=2, runs=runs)
    train_idx = outer[0][0]
    inner = inner_folds(train_idx, n_folds="runs", gap=2, kind="blocked", runs=runs)
    assert len(inner) == 5
    _check_partition(inner, train_idx.size)
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((runs.size, 3)), rng.standard_normal(runs.size)
    scores = cross_val_score(Ridge(), X[train_idx], y[train_idx], cv=inner)
    assert scores.shape == (5,)
    with pytest.raises(ValueError, match="increasing"):
        inner_folds(train_idx[::-1], kind="blocked")
    with pytest.raises(ValueError, match="kind"):
        inner_folds(train_idx, kind="random")


def test_fold_argument_errors_are_clear():
    with pytest.raises(ValueError, match="n_folds must be an integer"):
        grouped_folds(np.arange(10), n_folds="runs")
    with pytest.raises(ValueError, match="integer or 'runs'"):
        blocked_folds(10, n_folds="run")
    with pytest.raises(ValueError, match="gap"):
        blocked_folds(10, n_folds=2, gap=1.5)
    with pytest.raises(ValueError, match="n_samples"):
        blocked_folds(10.0, n_folds=2)
