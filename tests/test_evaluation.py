"""The shared CV loop and statistics: grouping of repeats, blocked folds, nulls, ceilings."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from alignment import dims
from alignment.data.responses import make_responses
from alignment.evaluation import image_design, noise_ceiling, score_layers
from alignment.io import InputError

FAST = {"alphas": [0.1, 10.0, 1000.0], "kind": "ridge"}


def _image_experiment(n_img=90, n_rep=3, n_feat=12, n_signal=20, n_noise=60, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.array([f"s{i:03d}" for i in range(n_img)])
    F = rng.standard_normal((n_img, n_feat)).astype(np.float32)
    signal = F @ rng.standard_normal((n_feat, n_signal))
    signal /= signal.std(0)
    rows, trial_ids, reps = [], [], []
    for rep in range(n_rep):
        order = rng.permutation(n_img)
        data = np.zeros((n_img, n_signal + n_noise))
        data[:, :n_signal] = signal[order]
        rows.append(data + rng.standard_normal(data.shape))
        trial_ids.append(ids[order])
        reps.append(np.full(n_img, rep))
    reps = np.concatenate(reps)
    roi = np.array(["signal"] * n_signal + ["none"] * n_noise)
    resp = make_responses(
        np.concatenate(rows),
        kind="images",
        stimulus_id=np.concatenate(trial_ids),
        repetition=reps,
        session=reps,
        roi=roi,
    )
    feats = {
        "good": xr.DataArray(
            F, dims=(dims.STIMULUS, dims.UNIT), coords={dims.STIMULUS_ID: (dims.STIMULUS, ids)}
        ),
        "random": xr.DataArray(
            rng.standard_normal((n_img, n_feat)).astype(np.float32),
            dims=(dims.STIMULUS, dims.UNIT),
            coords={dims.STIMULUS_ID: (dims.STIMULUS, ids)},
        ),
    }
    return resp, feats


@pytest.mark.parametrize("train_on", ["mean", "trials"])
def test_image_folds_never_split_an_image(train_on):
    resp, _ = _image_experiment()
    design, ids = image_design(resp, {"n_folds": 5, "train_on": train_on})
    tested = np.concatenate([test for _, test in design.folds])
    assert sorted(tested) == list(range(len(ids)))  # each image tested exactly once
    for train, test in design.folds:
        assert not set(train) & set(test)


@pytest.mark.parametrize("train_on", ["mean", "trials"])
def test_image_scores_find_the_planted_layer_and_null_is_calibrated(train_on):
    resp, feats = _image_experiment()
    scores = score_layers(
        resp,
        feats,
        encoder_spec=FAST,
        cv={"n_folds": 5, "inner_folds": 3, "train_on": train_on},
        stats_spec={"n_permutations": 200},
    )
    assert scores[dims.R].dims == (dims.LAYER, dims.VOXEL)
    sig = scores.roi.values == "signal"
    good, rand = scores[dims.R].sel(layer="good").values, scores[dims.R].sel(layer="random").values
    assert good[sig].mean() > 0.6 and abs(rand[sig].mean()) < 0.15
    assert (scores[dims.Q].sel(layer="good").values[sig] < 0.05).all()
    assert scores.attrs["null_kind"] == "permuted stimulus labels"


def test_image_null_is_not_anticonservative():
    """Under the null, p < alpha no more often than alpha (up to sampling error).

    Pooled cross-validated r under the null is wider than the within-fold permutation null
    (folds share training data), with a slight negative shift; the resulting p-values are
    valid (not anti-conservative) at small alpha but not exactly uniform.
    """
    fractions = []
    for seed in range(2):
        resp, feats = _image_experiment(n_signal=0, n_noise=300, seed=seed)
        scores = score_layers(
            resp,
            feats,
            encoder_spec=FAST,
            cv={"n_folds": 5, "inner_folds": 3},
            stats_spec={"n_permutations": 200},
        )
        fractions.append((scores[dims.P].values < 0.05).mean())
    assert np.mean(fractions) < 0.07
    assert scores.attrs["null_kind"] == "permuted stimulus labels"


def test_mismatched_stimulus_ids_fail_clearly():
    resp, feats = _image_experiment()
    wrong = feats["good"].assign_coords(
        {dims.STIMULUS_ID: (dims.STIMULUS, [f"x{i}" for i in range(90)])}
    )
    with pytest.raises(InputError, match=r"stimulus ids do not match.*features\.zarr"):
        score_layers(
            resp,
            {"l": wrong},
            encoder_spec=FAST,
            cv={},
            stats_spec={"n_permutations": 10},
            features_source="features.zarr",
            responses_source="sub-01.nc",
        )


def _narrative(n_sub=3, n_tr=300, seed=0):
    """Word features with a planted layer; responses through a smooth kernel plus drift."""
    rng = np.random.default_rng(seed)
    n_words = n_tr * 2
    onsets = np.sort(rng.uniform(0, n_tr * 2.0 - 4, n_words))
    runs = np.where(onsets < n_tr, "r1", "r2")
    # each run starts at t=0: shift the second run's onsets
    onsets = np.where(runs == "r2", onsets - n_tr, onsets)
    order = np.lexsort((onsets, runs))
    onsets, runs = onsets[order], runs[order]
    F = rng.standard_normal((n_words, 8)).astype(np.float32)
    coords = {
        dims.RUN: (dims.WORD, runs),
        dims.ONSET: (dims.WORD, onsets),
        dims.STIMULUS_ID: (dims.WORD, np.arange(n_words).astype(str)),
    }
    good = xr.DataArray(F, dims=(dims.WORD, dims.UNIT), coords=coords)
    bad = xr.DataArray(
        rng.standard_normal(F.shape).astype(np.float32), dims=(dims.WORD, dims.UNIT), coords=coords
    )
    from alignment.evaluation import narrative_features_matrix

    tr_runs = np.repeat(["r1", "r2"], n_tr // 2)
    template = make_responses(np.zeros((n_tr, 1)), kind="narrative", run=tr_runs, attrs={"tr": 2.0})
    X = narrative_features_matrix(good, template, {}, "good")
    signal = X @ rng.standard_normal((X.shape[1], 10))
    signal = (signal - signal.mean(0)) / signal.std(0)
    subjects = []
    t = np.arange(n_tr)[:, None]
    for _ in range(n_sub):
        data = np.zeros((n_tr, 30))
        data[:, :10] = signal
        data += rng.standard_normal(data.shape) + 0.5 * np.cos(
            2 * np.pi * t / 250 + rng.uniform(0, 6, 30)
        )
        roi = ["signal"] * 10 + ["none"] * 20
        subjects.append(
            make_responses(data, kind="narrative", run=tr_runs, roi=roi, attrs={"tr": 2.0})
        )
    return subjects, {"good": good, "random": bad}


def test_narrative_scores_within_folds_with_circular_null():
    subjects, feats = _narrative()
    scores = score_layers(
        subjects[0],
        feats,
        encoder_spec=FAST,
        cv={"n_folds": 5, "inner_folds": 3, "gap_trs": 3},
        stats_spec={"n_permutations": 200},
    )
    sig = scores.roi.values == "signal"
    assert scores[dims.R].sel(layer="good").values[sig].mean() > 0.4
    assert abs(scores[dims.R].sel(layer="random").values.mean()) < 0.1
    assert scores.attrs["scoring"] == "within each test fold"
    assert scores.attrs["null_kind"] == "circular shift"
    null_p = scores[dims.P].sel(layer="random").values
    assert (null_p < 0.05).mean() < 0.2
    assert (scores[dims.P].sel(layer="good").values[sig] < 0.05).all()


def test_narrative_without_words_for_a_run_fails_clearly():
    subjects, feats = _narrative()
    only_r1 = feats["good"].isel({dims.WORD: feats["good"][dims.RUN].values == "r1"})
    with pytest.raises(InputError, match=r"runs \['r2'\].*no words in words.zarr"):
        score_layers(
            subjects[0],
            {"l": only_r1},
            encoder_spec=FAST,
            cv={},
            stats_spec={"n_permutations": 5},
            features_source="words.zarr",
        )


def test_ceilings_from_repeats_and_from_other_subjects():
    resp, _ = _image_experiment()
    c = noise_ceiling([resp], 0)
    sig = c.roi.values == "signal"
    # signal variance 1, noise variance 1 per trial, 3 repeats: NC = 1 / (1 + 1/3) = 0.75
    assert abs(float(c[dims.CEILING].values[sig].mean()) - 0.75) < 0.05
    # noise voxels: clipped at 0, so about half are exactly 0
    assert float(np.median(c[dims.CEILING].values[~sig])) < 0.02
    subjects, _ = _narrative()
    isc = noise_ceiling(subjects, 1)
    assert "inter-subject" in isc.attrs["method"]
    assert isc[dims.CEILING].values[:10].mean() > 3 * isc[dims.CEILING].values[10:].mean()
    with pytest.raises(InputError, match="at least 2 subjects"):
        noise_ceiling(subjects[:1], 0)


def _sentence_responses(n_passages=12, per_passage=4, n_voxels=5, seed=0):
    rng = np.random.default_rng(seed)
    n = n_passages * per_passage
    ds = make_responses(
        rng.standard_normal((n, n_voxels)),
        kind="images",
        stimulus_id=[f"s{i:03d}" for i in range(n)],
    )
    return ds.assign_coords(
        passage=("stimulus", np.repeat([f"p{i}" for i in range(n_passages)], per_passage)),
        split=("stimulus", np.where(np.arange(n) < 8, "test", "train")),
    )


def test_sentence_folds_keep_each_passage_on_one_side_inner_folds_too():
    from alignment.evaluation import CV_DEFAULTS, _fold_training_set

    ds = _sentence_responses()
    design, ids = image_design(ds, {"n_folds": 4, "inner_folds": 3})
    passage = dict(zip(ds["stimulus_id"].values, ds["passage"].values, strict=True))
    row_passage = np.array([passage[i] for i in ids])
    X = np.zeros((len(ids), 2), dtype=np.float32)
    for train, test in design.folds:
        assert not set(row_passage[train]) & set(row_passage[test])
        _, _, inner = _fold_training_set(X, design, train, {**CV_DEFAULTS, "inner_folds": 3})
        for itrain, itest in inner:
            assert not set(row_passage[train][itrain]) & set(row_passage[train][itest])


def test_split_folds_use_the_datasets_own_test_set():
    ds = _sentence_responses()
    design, ids = image_design(ds, {"n_folds": "split"})
    assert len(design.folds) == 1
    train, test = design.folds[0]
    assert sorted(ids[test]) == [f"s{i:03d}" for i in range(8)]
    assert len(train) == len(ids) - 8
    with pytest.raises(ValueError, match="'split' coordinate"):
        image_design(ds.drop_vars("split"), {"n_folds": "split"})
