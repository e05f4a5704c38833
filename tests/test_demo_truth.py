"""The built-in demo recovers its planted ground truth (DESIGN.md section 5, issue 2).

Runs the library end to end on the full demo for one subject: features of the demo models,
ceilings, ridge encoders per layer, and compares with truth.json / sub-XX_truth.nc.
"""

from __future__ import annotations

import numpy as np
import pytest

from alignment import dims
from alignment.data.responses import load_responses
from alignment.evaluation import noise_ceiling, score_layers
from alignment.features import extract_features
from alignment.io import read_json, read_netcdf
from alignment.stimuli.images import read_image_table
from alignment.stimuli.narrative import read_word_table

ENCODER = {"kind": "ridge", "alphas": [0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6]}
CV = {"n_folds": 5, "inner_folds": 3, "gap_trs": 3}
STATS = {"n_permutations": 100}
TS = {"detrend": "savgol", "savgol_window_s": 120.0}


def _roi_profile(scores):
    return scores[dims.R].to_pandas().T.groupby(scores[dims.ROI].values).mean()


def _r_over_ceiling(scores, roi, layer):
    sel = (scores[dims.ROI].values == roi) & (scores[dims.CEILING].values > 0)
    r = scores[dims.R].sel(layer=layer).values[sel]
    return float(np.mean(r / np.sqrt(scores[dims.CEILING].values[sel])))


def _score_experiment(demo_root, experiment, stimuli, model_spec, random_spec, ts=None):
    """Ceiling, model and random-control scores of sub-01, with the planted ceiling."""
    model, _ = extract_features(model_spec, stimuli)
    rand, _ = extract_features(random_spec, stimuli)
    folder = demo_root / experiment
    responses = [load_responses(folder / f"sub-0{i}_responses.nc") for i in (1, 2, 3)]
    ceiling = noise_ceiling(responses, 0, ts)
    kw = {
        "encoder_spec": ENCODER,
        "cv": CV,
        "stats_spec": STATS,
        "timeseries_spec": ts,
        "ceiling": ceiling[dims.CEILING].values,
    }
    return {
        "model": score_layers(responses[0], model, **kw),
        "random": score_layers(responses[0], rand, **kw),
        "ceiling": ceiling,
        "true_ceiling": read_netcdf(folder / "sub-01_truth.nc"),
    }


@pytest.fixture(scope="module")
def image_results(demo_root):
    return _score_experiment(
        demo_root,
        "images",
        read_image_table(demo_root / "images" / "stimuli.tsv"),
        {"source": str(demo_root / "models" / "vit-tiny-untrained"), "modality": "image"},
        {"kind": "random", "modality": "image", "n_units": 96},
    )


@pytest.fixture(scope="module")
def narrative_results(demo_root):
    return _score_experiment(
        demo_root,
        "narrative",
        read_word_table(demo_root / "narrative" / "words.tsv"),
        {
            "source": str(demo_root / "models" / "all-MiniLM-L6-v2"),
            "modality": "text",
            "context_words": 20,
        },
        {"kind": "random", "modality": "text", "n_units": 384},
        TS,
    )


def test_image_rois_peak_at_the_planted_layer(image_results, demo_root):
    truth = read_json(demo_root / "truth.json")["demo-images"]["rois"]
    profile = _roi_profile(image_results["model"])
    for roi in ("early", "late"):
        assert profile.loc[roi].idxmax() == truth[roi]["layer"], profile.loc[roi].round(3).to_dict()


def test_narrative_rois_peak_within_the_top_two_layers(narrative_results, demo_root):
    truth = read_json(demo_root / "truth.json")["demo-narrative"]["rois"]
    profile = _roi_profile(narrative_results["model"])
    for roi, spec in truth.items():
        top_two = profile.loc[roi].sort_values(ascending=False).index[:2]
        assert spec["layer"] in top_two, profile.loc[roi].round(3).to_dict()


@pytest.mark.parametrize("experiment", ["image", "narrative"])
def test_estimated_ceiling_is_within_0_05_of_the_planted_one(
    experiment, image_results, narrative_results
):
    res = image_results if experiment == "image" else narrative_results
    est, true = res["ceiling"][dims.CEILING].values, res["true_ceiling"][dims.CEILING].values
    rois = res["ceiling"][dims.ROI].values
    for roi in set(rois) - {dims.NO_ROI}:
        assert abs(est[rois == roi].mean() - true[rois == roi].mean()) < 0.05, roi
    if experiment == "image":  # repeats give a per-voxel estimate too
        assert np.abs(est - true).mean() < 0.05


@pytest.mark.parametrize("experiment", ["image", "narrative"])
def test_planted_rois_beat_the_random_feature_control(
    experiment, image_results, narrative_results, demo_root
):
    res = image_results if experiment == "image" else narrative_results
    key = "demo-images" if experiment == "image" else "demo-narrative"
    truth = read_json(demo_root / "truth.json")[key]["rois"]
    for roi, spec in truth.items():
        if spec["layer"] is None:
            continue
        model = _r_over_ceiling(res["model"], roi, spec["layer"])
        control = max(
            _r_over_ceiling(res["random"], roi, layer) for layer in res["random"][dims.LAYER].values
        )
        assert model > control + 0.2, (roi, model, control)
        # and the control is where chance puts it: its null rejects rarely
        assert (res["random"][dims.Q].values < 0.05).mean() < 0.05
