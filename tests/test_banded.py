"""Banded ridge: planted per-space R² recovered, agreement with himalaya, low-level features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from PIL import Image

from alignment import dims, folds, timeseries
from alignment.config import check_config
from alignment.data.responses import make_responses
from alignment.encoders.banded import BandedRidgeEncoder, space_layers
from alignment.evaluation import image_design, score_layers
from alignment.features import extract_features
from alignment.features.lowlevel import band_names, image_descriptors
from alignment.io import InputError, write_zarr_layers

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
ALPHAS = [0.1, 1.0, 10.0, 100.0, 1000.0]
SPEC = {"kind": "banded", "alphas": ALPHAS, "n_iter": 8}
CV = {"n_folds": 5, "inner_folds": 3, "random_state": 0}
STATS = {"n_permutations": 20, "n_bootstrap": 0}
# per voxel group: variance of the part driven by space A, by space B, and of the noise
PLANTED = {"A": (1.0, 0.0, 1.0), "B": (0.0, 1.0, 1.0), "mix": (0.4, 0.2, 0.4)}


def _planted(n=240, k=12, seed=0):
    """Images with two independent feature spaces (A: 10, B: 6 units) driving voxel groups with
    known shares of variance: the true per-space R² of a group is its part's variance over the
    total (A: 0.5 / 0; B: 0 / 0.5; mix: 0.4 / 0.2)."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"s{i:03d}" for i in range(n)])
    A = rng.standard_normal((n, 10)).astype(np.float32)
    B = rng.standard_normal((n, 6)).astype(np.float32)

    def part(F, var):
        s = F @ rng.standard_normal((F.shape[1], k))
        return s / s.std(0) * np.sqrt(var)

    cols, roi = [], []
    for group, (va, vb, vn) in PLANTED.items():
        cols.append(part(A, va) + part(B, vb) + rng.standard_normal((n, k)) * np.sqrt(vn))
        roi += [group] * k
    zeros = np.zeros(n)
    resp = make_responses(
        np.concatenate(cols, 1),
        kind="images",
        stimulus_id=ids,
        repetition=zeros,
        session=zeros,
        roi=np.array(roi),
    )

    def da(F, store):
        return xr.DataArray(
            F,
            dims=(dims.STIMULUS, dims.UNIT),
            coords={dims.STIMULUS_ID: (dims.STIMULUS, ids)},
            attrs={"store": store},
        )

    return resp, {"A + B": {"A": da(A, "a.zarr"), "B": da(B, "b.zarr")}}


@pytest.fixture(scope="module")
def planted_scores():
    resp, layers = _planted()
    scores = score_layers(resp, layers, encoder_spec=SPEC, cv=CV, stats_spec=STATS)
    return resp, layers, scores


def test_planted_per_space_r2_is_recovered(planted_scores):
    _, _, scores = planted_scores
    assert scores[dims.R2_SPLIT].dims == (dims.LAYER, dims.SPACE, dims.VOXEL)
    assert list(scores[dims.SPACE].values) == ["A", "B"]
    assert scores.attrs["encoder_kind"] == "banded"
    split = scores[dims.R2_SPLIT].values[0]
    unique = scores[dims.R2_UNIQUE].values[0]
    roi = scores[dims.ROI].values
    for group, (va, vb, vn) in PLANTED.items():
        truth = np.array([va, vb]) / (va + vb + vn)
        got = split[:, roi == group].mean(1)
        # 12 voxels of 240 images: sampling error of a group mean ~0.01; a ridge fit of 16
        # features on 192 images loses about p/n * (1 - R²) ~ 0.03 of held-out R²
        assert np.abs(got - truth).max() < 0.07, (group, got, truth)
        # independent spaces: the unique variance equals the split share
        assert np.abs(unique[:, roi == group].mean(1) - truth).max() < 0.07, group
    # the right space wins in every voxel of the single-space groups, A over B in the mixture
    assert (split[0, roi == "A"] > split[1, roi == "A"]).all()
    assert (split[1, roi == "B"] > split[0, roi == "B"]).all()
    assert (split[0, roi == "mix"] > split[1, roi == "mix"]).mean() >= 0.9
    # the shares add up to the joint R² of the fold-centred prediction, which differs from the
    # pooled r2 only by each fold's intercept miss and its mean's share of the total variance
    joint = scores[dims.R2].values[0]
    assert np.abs(split.sum(0) - joint).max() < 0.05


def test_banded_agrees_with_himalaya_called_directly(planted_scores):
    from himalaya.backend import set_backend
    from himalaya.ridge import BandedRidgeCV
    from himalaya.scoring import r2_score_split

    set_backend("numpy")
    resp, layers, scores = planted_scores
    design, _ = image_design(resp, CV)
    Xs = [layers["A + B"][s].values for s in ("A", "B")]
    pred = np.zeros((2, *design.Y.shape))
    for train, test in design.folds:
        inner = folds.inner_folds(
            train, groups=design.groups, n_folds=3, kind="grouped", random_state=0
        )
        X = np.concatenate(Xs, 1)
        mean, sd = X[train].mean(0), X[train].std(0)
        Z = (X - mean) / sd
        model = BandedRidgeCV(
            groups="input",
            solver_params={
                "alphas": np.asarray(ALPHAS, dtype=np.float32),
                "n_iter": 8,
                "concentration": [0.1, 1.0],
                "progress_bar": False,
            },
            cv=inner,
            random_state=0,
        )
        y_mean = design.Y[train].mean(0)
        model.fit([Z[train][:, :10], Z[train][:, 10:]], design.Y[train] - y_mean)
        pred[:, test] = model.predict([Z[test][:, :10], Z[test][:, 10:]], split=True)
        pred[0, test] += y_mean  # the intercept, to compare the joint prediction
    joint = pred.sum(0)
    centred_y, centred = design.Y.copy(), pred.copy()
    for _, test in design.folds:
        centred_y[test] -= centred_y[test].mean(0)
        centred[:, test] -= centred[:, test].mean(1, keepdims=True)
        joint[test] -= joint[test].mean(0)
    r = (centred_y * joint).sum(0) / np.sqrt((centred_y**2).sum(0) * (joint**2).sum(0))
    np.testing.assert_allclose(scores[dims.R].values[0], r, atol=2e-4)
    np.testing.assert_allclose(
        scores[dims.R2_SPLIT].values[0], r2_score_split(centred_y, centred), atol=2e-4
    )


def test_primal_and_dual_forms_agree():
    resp, layers = _planted(n=120, k=4)
    design, _ = image_design(resp, CV)
    X = np.concatenate([a.values for a in layers["A + B"].values()], 1)
    preds = []
    for solver in ("primal", "dual"):
        enc = BandedRidgeEncoder(
            space_sizes=[10, 6], alphas=ALPHAS, n_iter=5, cv=3, solver=solver
        ).fit(X[:100], design.Y[:100])
        assert enc.solver_ == solver
        preds.append((enc.predict(X[100:]), enc.predict_split(X[100:])))
    np.testing.assert_allclose(preds[0][0], preds[1][0], atol=1e-3)
    np.testing.assert_allclose(preds[0][1]["split"], preds[1][1]["split"], atol=1e-3)
    np.testing.assert_allclose(preds[0][1]["without"], preds[1][1]["without"], atol=1e-3)
    # the split parts add up to the joint prediction less the intercept
    np.testing.assert_allclose(preds[0][1]["split"].sum(0) + enc.intercept_, preds[0][0], atol=1e-4)


def test_mismatched_stimuli_between_spaces_fail_clearly():
    resp, layers = _planted(n=60, k=2)
    spaces = layers["A + B"]
    spaces["B"] = spaces["B"].assign_coords(
        {dims.STIMULUS_ID: (dims.STIMULUS, [f"x{i}" for i in range(60)])}
    )
    with pytest.raises(InputError, match=r"b.zarr: feature space 'B' holds other stimuli"):
        score_layers(resp, layers, encoder_spec=SPEC, cv=CV, stats_spec=STATS)


def test_unknown_space_model_or_layer_names_the_config_key(tmp_path):
    ids = np.array(["a", "b"])
    arr = xr.DataArray(
        np.ones((2, 3), np.float32),
        dims=(dims.STIMULUS, dims.UNIT),
        coords={dims.STIMULUS_ID: (dims.STIMULUS, ids)},
    )
    write_zarr_layers({"layer_01": arr}, tmp_path / "m.zarr", {"model": "m"})
    spec = {"kind": "banded", "spaces": [{"model": "m", "layer": "layer_01"}]}
    with pytest.raises(InputError, match="at least 2 feature spaces"):
        space_layers(spec, {"m": tmp_path / "m.zarr"}, encoder="bd")
    spec["spaces"].append({"model": "lowlevel", "layer": "luminance"})
    with pytest.raises(InputError, match=r"encoders.bd.spaces\[1\].model: 'lowlevel'"):
        space_layers(spec, {"m": tmp_path / "m.zarr"}, encoder="bd")
    spec["spaces"][1] = {"model": "m", "layer": "layer_09"}
    with pytest.raises(InputError, match=r"encoders.bd.spaces\[1\].layer: .* no layer 'layer_09'"):
        space_layers(spec, {"m": tmp_path / "m.zarr"}, encoder="bd")
    spec["spaces"][1] = {"model": "m", "layer": [0, "layer_01"], "name": "twice"}
    joint = space_layers(spec, {"m": tmp_path / "m.zarr"}, encoder="bd")
    assert list(joint) == ["m:layer_01 + twice"]
    assert joint["m:layer_01 + twice"]["twice"].shape == (2, 6)  # two layers side by side
    config = {
        "datasets": {
            "d": {
                "kind": "images",
                "responses": "r{subject}.nc",
                "stimuli": "s.tsv",
                "subjects": ["01"],
                "models": ["m"],
            }
        },
        "models": {"m": {"kind": "random", "modality": "image"}},
        "encoders": {"bd": {**spec, "spaces": [*spec["spaces"][:1], {"model": "mm", "layer": 0}]}},
    }
    with pytest.raises(InputError, match=r"encoders.bd.spaces\[1\].model: 'mm' is not defined"):
        check_config(config, SCHEMA)


# ---------------------------------------------------------------------------------- lowlevel


def test_image_descriptors_of_constructed_images():
    grey = image_descriptors(np.full((32, 32, 3), 128, np.uint8))
    assert grey["luminance"][0] == pytest.approx(128 / 255, abs=1e-6)
    assert grey["contrast"][0] == pytest.approx(0.0, abs=1e-9)
    assert np.allclose(grey["spatial_frequency"], 0.0)
    # a one-pixel black/white checkerboard: mean 0.5, RMS contrast 0.5, all of its energy at
    # Nyquist, the top band; the bands sum to the variance (contrast squared)
    checker = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)
    d = image_descriptors(checker, n_bands=4)
    assert d["luminance"][0] == pytest.approx(0.5)
    assert d["contrast"][0] == pytest.approx(0.5)
    assert d["spatial_frequency"][-1] == pytest.approx(0.25)
    assert np.allclose(d["spatial_frequency"][:-1], 0.0)
    # a grating of 2 cycles per 64 px (0.03 cycles/pixel) lies in the lowest band
    x = np.arange(64)
    grating = 0.5 + 0.25 * np.sin(2 * np.pi * 2 * x / 64)[None, :].repeat(64, 0)
    g = image_descriptors(grating, n_bands=4)
    assert g["spatial_frequency"][0] == pytest.approx(g["contrast"][0] ** 2, rel=1e-6)
    assert np.allclose(g["spatial_frequency"][1:], 0.0, atol=1e-12)
    assert band_names(2) == ["sf_0-0.25cpp", "sf_0.25-0.5cpp"]


def test_lowlevel_image_store_through_the_features_path(tmp_path):
    paths = []
    for i, value in enumerate((0, 255)):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path)
        paths.append(str(path))
    stimuli = pd.DataFrame({"stimulus_id": ["black", "white"], "path": paths})
    layers, attrs = extract_features(
        {"kind": "lowlevel", "modality": "image", "n_bands": 3}, stimuli, name="ll"
    )
    assert list(layers) == ["luminance", "contrast", "spatial_frequency"]
    np.testing.assert_allclose(layers["luminance"].values[:, 0], [0.0, 1.0], atol=1e-6)
    assert list(layers["spatial_frequency"]["unit_name"].values) == band_names(3)
    assert (
        attrs["cache_key"]
        != extract_features(
            {"kind": "lowlevel", "modality": "image", "n_bands": 4}, stimuli, name="ll"
        )[1]["cache_key"]
    )


TEXTGRID = """File type = "ooTextFile"
Object class = "TextGrid"

0
3
<exists>
2
"IntervalTier"
"words"
0
3
4
0
0.5
""
0.5
1.2
"hello"
1.2
1.5
"sp"
1.5
3
"world"
"IntervalTier"
"phones"
0
3
8
0
0.5
"sil"
0.5
0.7
"HH"
0.7
0.9
"AH0"
0.9
1.05
"L"
1.05
1.2
"OW1"
1.2
1.5
"sp"
1.5
2.2
"W"
2.2
3
"ER1"
"""


def test_word_and_phoneme_rate_from_a_textgrid(tmp_path):
    from alignment.stimuli.narrative import read_word_table

    grid = tmp_path / "story.TextGrid"
    grid.write_text(TEXTGRID)
    words = read_word_table(grid)
    spec = {"kind": "lowlevel", "modality": "text", "phones": str(tmp_path / "{run}.TextGrid")}
    layers, attrs = extract_features(spec, words, name="ll")
    assert list(layers) == ["word_rate", "phoneme_rate"]
    np.testing.assert_array_equal(layers["word_rate"].values[:, 0], [1, 1])
    np.testing.assert_array_equal(layers["phoneme_rate"].values[:, 0], [4, 2])  # HH AH0 L OW1
    assert attrs["phoneme_source"].startswith("phone tier")
    # without a phone tier: the letters of each word, said so in the attrs
    _, proxy = extract_features({"kind": "lowlevel", "modality": "text"}, words, name="ll")
    assert proxy["phoneme_source"].startswith("letters")


def test_word_rate_resampled_to_trs_counts_words_per_tr():
    # 2 words/s for 60 s, then 1 word/s for 60 s: at a TR of 2 s, the Lanczos path gives about
    # 4 and 2 words per TR away from the edges
    onsets = np.concatenate([np.arange(0, 60, 0.5), np.arange(60, 120, 1.0)])
    words = pd.DataFrame({"word": "la", "onset": onsets, "offset": onsets + 0.2, "run": "r1"})
    layers, _ = extract_features({"kind": "lowlevel", "modality": "text"}, words, name="ll")
    rate = timeseries.lanczos_resample(
        layers["word_rate"].values, onsets, timeseries.tr_times(60, 2.0, 0.0)
    )[:, 0]
    assert rate[5:25].mean() == pytest.approx(4.0, rel=0.05)
    assert rate[35:55].mean() == pytest.approx(2.0, rel=0.05)


def test_report_shows_per_space_r2(planted_scores):
    from alignment.report.banded import banded_section, space_table

    _, _, scores = planted_scores
    table = space_table(scores)
    row = table.set_index("roi").loc["B"]
    assert row["r2_split[B]"] > 0.4 and row["wins[B]"] == 1.0 and row["wins[A]"] == 0.0
    html = banded_section(scores, dpi=40)
    assert "Variance partitioning" in html and "unique R² A" in html
    assert html.count("data:image/png;base64,") == 1  # the bars (no surface: no maps)
    assert banded_section(scores.drop_vars([dims.R2_SPLIT, dims.R2_UNIQUE, dims.R2_WITHOUT])) == ""


def test_config_example_of_a_banded_encoder_is_valid():
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["models"]["lowlevel-image"] = {"kind": "lowlevel", "modality": "image", "n_bands": 4}
    config["encoders"]["banded"] = {
        "kind": "banded",
        "spaces": [
            {"model": "vit-tiny-untrained", "layer": "layer_05"},
            {"model": "lowlevel-image", "layer": ["luminance", "contrast"], "name": "low-level"},
        ],
        "n_iter": 10,
    }
    check_config(config, SCHEMA)
    config["models"]["lowlevel-text"] = {"kind": "lowlevel", "modality": "text"}
    config["encoders"]["banded"]["spaces"][1]["model"] = "lowlevel-text"
    with pytest.raises(InputError, match="mix modalities"):
        check_config(config, SCHEMA)
    config["encoders"]["banded"]["spaces"] = config["encoders"]["banded"]["spaces"][:1]
    with pytest.raises(InputError, match=r"encoders\.banded"):
        check_config(config, SCHEMA)


def test_sharded_banded_scores_equal_unsharded():
    from alignment.evaluation import merge_shards

    resp, layers = _planted(n=120, k=3)
    kw = {"encoder_spec": {**SPEC, "n_iter": 4}, "cv": CV, "stats_spec": STATS}
    whole = score_layers(resp, layers, **kw)
    shards = [score_layers(resp, layers, voxel_shard=(i, 2), **kw) for i in range(2)]
    merged = merge_shards(shards)
    for var in (dims.R, dims.R2_SPLIT, dims.R2_UNIQUE):
        np.testing.assert_allclose(merged[var].values, whole[var].values, atol=1e-6)


def test_narrative_spaces_get_the_responses_filter_and_delays():
    # two runs of word-level spaces; voxel group A follows space A two TRs later, group B
    # space B, on top of a slow drift: each space is resampled, detrended and delayed like
    # ridge's features, and the right space wins its group
    rng = np.random.default_rng(1)
    tr, n_tr = 2.0, 150
    rows, runs = [], []
    for run in ("r1", "r2"):
        onsets = np.sort(rng.uniform(0, n_tr * tr - 4, 500))
        rows.append(pd.DataFrame({"onset": onsets, "offset": onsets + 0.2, "run": run}))
        runs.append(np.full(n_tr, run))
    words = pd.concat(rows, ignore_index=True)
    ids = [f"{r}:{i:05d}" for i, r in enumerate(words["run"])]
    coords = {
        dims.STIMULUS_ID: (dims.WORD, ids),
        dims.RUN: (dims.WORD, words["run"].to_numpy()),
        dims.ONSET: (dims.WORD, words["onset"].to_numpy()),
        dims.OFFSET: (dims.WORD, words["offset"].to_numpy()),
    }
    A = rng.standard_normal((len(words), 3)).astype(np.float32)
    B = rng.standard_normal((len(words), 2)).astype(np.float32)
    times = timeseries.tr_times(n_tr, tr, 0.0)
    parts = []
    for run in ("r1", "r2"):
        sel = (words["run"] == run).to_numpy()
        at = [timeseries.lanczos_resample(F[sel], words["onset"][sel], times) for F in (A, B)]
        parts.append([np.roll(x, 2, axis=0) for x in at])  # a 2-TR lag
    signal_a = np.concatenate([p[0] for p in parts]) @ rng.standard_normal((3, 8))
    signal_b = np.concatenate([p[1] for p in parts]) @ rng.standard_normal((2, 8))
    drift = np.linspace(-3, 3, 2 * n_tr)[:, None]
    data = np.concatenate([signal_a, signal_b], 1)
    data = data / data.std(0) + drift + rng.standard_normal(data.shape)
    resp = make_responses(
        data,
        kind="narrative",
        run=np.concatenate(runs),
        roi=np.array(["A"] * 8 + ["B"] * 8),
        attrs={"tr": tr},
    )
    spaces = {
        name: xr.DataArray(F, dims=(dims.WORD, dims.UNIT), coords=coords)
        for name, F in (("A", A), ("B", B))
    }
    scores = score_layers(
        resp,
        {"A + B": spaces},
        encoder_spec={**SPEC, "n_iter": 4, "unique_variance": False},
        cv={"n_folds": 4, "inner_folds": 3, "gap_trs": 3},
        stats_spec=STATS,
        timeseries_spec={"delays": [1, 2, 3], "savgol_window_s": 60.0},
    )
    split = scores[dims.R2_SPLIT].values[0]
    roi = scores[dims.ROI].values
    assert dims.R2_UNIQUE not in scores
    assert (split[0, roi == "A"] > 0.2).all() and (split[1, roi == "B"] > 0.2).all()
    assert (split[0, roi == "A"] > split[1, roi == "A"]).all()
    assert (split[1, roi == "B"] > split[0, roi == "B"]).all()


def test_a_banded_encoder_that_would_run_nowhere_is_an_error():
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["models"]["lowlevel-image"] = {"kind": "lowlevel", "modality": "image"}
    config["encoders"]["banded"] = {
        "kind": "banded",
        "spaces": [
            {"model": "lowlevel-image", "layer": "luminance"},
            {"model": "vit-tiny-untrained", "layer": "layer_05"},
        ],
    }
    with pytest.raises(InputError, match=r"spaces\[0\].model: 'lowlevel-image' is in no dataset"):
        check_config(config, SCHEMA)


def test_encode_verb_reads_the_spaces_from_several_stores(tmp_path):
    from alignment.cli import main
    from alignment.io import read_netcdf, write_netcdf

    resp, layers = _planted(n=80, k=2)
    write_netcdf(resp, tmp_path / "resp.nc")
    for name, arr in layers["A + B"].items():
        store = {"layer_00": arr.assign_coords(layer_index=0)}
        write_zarr_layers(store, tmp_path / f"{name}.zarr", {"model": name})
    spec = '{"kind": "banded", "n_iter": 3, "spaces": [{"model": "A", "layer": "layer_00"}, '
    args = ["encode", "--responses", str(tmp_path / "resp.nc"), "--features"]
    args += [str(tmp_path / "A.zarr"), "--encoder", "bd", "--stats", '{"n_permutations": 10}']
    args += ["--cv", '{"n_folds": 4, "inner_folds": 3}', "--out", str(tmp_path / "s.nc")]
    ok = spec + '{"model": "B", "layer": 0}]}'
    assert main([*args, "--encoder-spec", ok, "--encoder-input", f"B={tmp_path / 'B.zarr'}"]) == 0
    scores = read_netcdf(tmp_path / "s.nc")
    assert list(scores[dims.SPACE].values) == ["A:layer_00", "B:layer_00"]
    assert scores.attrs["model"] == "A" and scores.attrs["encoder_kind"] == "banded"
    # a space whose model has no store: exit status 2 naming the config key
    bad = spec + '{"model": "C", "layer": 0}]}'
    assert main([*args, "--encoder-spec", bad]) == 2
