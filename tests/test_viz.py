"""Brain maps and layer profiles on a small synthetic Scores object with planted best layers."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from alignment import dims
from alignment.io import InputError
from alignment.viz import (
    best_layer_values,
    figure_to_base64_png,
    plot_layer_profiles,
    plot_surface_map,
    roi_layer_profile,
)

PLANTED = {"early": 1, "mid": 2, "late": 3}  # ROI -> layer index of the planted peak
N_LAYERS = 4
N_VERTICES = 10242  # per hemisphere of fsaverage5


def make_scores(n_per_roi: int = 60, n_none: int = 40, untrained: int = 0, seed: int = 0):
    """Scores over fsaverage5 vertices of both hemispheres, 3 ROIs, 4 layers.

    In each ROI r peaks at the planted layer; the first 10 voxels of each ROI are not
    significant in any layer (q = 0.5), the others are (q = 0.001 where r > 0.1).
    """
    rng = np.random.default_rng(seed)
    n = n_per_roi * len(PLANTED) + n_none
    hemi = np.where(np.arange(n) % 2 == 0, "left", "right")
    vertex = np.empty(n, int)
    for h in ("left", "right"):
        m = hemi == h
        vertex[m] = rng.choice(N_VERTICES, m.sum(), replace=False)
    roi = np.array([name for name in PLANTED for _ in range(n_per_roi)] + ["none"] * n_none)
    layers = np.arange(N_LAYERS)
    r = rng.uniform(0.0, 0.03, (N_LAYERS, n))
    q = np.full((N_LAYERS, n), 0.5)
    for name, best in PLANTED.items():
        idx = np.flatnonzero(roi == name)
        peak = rng.uniform(0.2, 0.5, idx.size)
        r[:, idx] += peak * np.exp(-((layers[:, None] - best) ** 2))
        sig = idx[10:]
        q[:, sig] = np.where(r[:, sig] > 0.1, 0.001, 0.5)
    ceiling = rng.uniform(0.2, 0.6, n)
    early = np.flatnonzero(roi == "early")
    ceiling[early[:3]] = 0.0  # no explainable variance: left out of ratios
    data = {
        dims.R: ((dims.LAYER, dims.VOXEL), r),
        dims.R2: ((dims.LAYER, dims.VOXEL), r**2),
        dims.P: ((dims.LAYER, dims.VOXEL), q),
        dims.Q: ((dims.LAYER, dims.VOXEL), q),
        dims.R_NULL_MEAN: ((dims.LAYER, dims.VOXEL), np.zeros((N_LAYERS, n))),
        dims.R_NULL_P95: ((dims.LAYER, dims.VOXEL), np.full((N_LAYERS, n), 0.05)),
        dims.ALPHA: ((dims.LAYER, dims.VOXEL), np.full((N_LAYERS, n), 10.0)),
        dims.CEILING: ((dims.VOXEL,), ceiling),
    }
    coords = {
        dims.LAYER: [f"layer_{i:02d}" for i in layers],
        "layer_index": (dims.LAYER, layers),
        dims.ROI: (dims.VOXEL, roi),
        dims.HEMI: (dims.VOXEL, hemi),
        dims.VERTEX: (dims.VOXEL, vertex),
    }
    attrs = {
        "dataset": "images",
        "subject": "01",
        "space": "fsaverage5",
        "kind": "images",
        "model": "tiny-vit",
        "model_source": "local",
        "model_revision": "r1",
        "untrained": untrained,
        "encoder": "ridge",
        "ceiling_method": "ncsnr",
        "n_permutations": 100,
        "fdr_alpha": 0.05,
        "null_kind": "permuted stimulus labels",
        "scoring": "pooled out-of-fold",
        "package_version": "0.1.0",
        "config_hash": "abc",
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


@pytest.fixture(scope="module")
def scores():
    return make_scores()


def test_best_layer_values_recovers_planted_layer(scores):
    best = best_layer_values(scores)
    assert best.dims == (dims.VOXEL,)
    roi = scores[dims.ROI].values
    for name, layer in PLANTED.items():
        values = best.values[roi == name]
        assert np.isnan(values[:10]).all()  # not significant in any layer
        np.testing.assert_array_equal(values[10:], layer)
    assert np.isnan(best.values[roi == "none"]).all()
    assert best.attrs["layer_names"] == [f"layer_{i:02d}" for i in range(N_LAYERS)]
    np.testing.assert_array_equal(best[dims.VERTEX].values, scores[dims.VERTEX].values)


def test_best_layer_values_alpha_and_layer_order(scores):
    assert np.isnan(best_layer_values(scores, alpha=1e-4).values).all()
    shuffled = scores.isel({dims.LAYER: [2, 0, 3, 1]})
    np.testing.assert_array_equal(
        best_layer_values(shuffled).values, best_layer_values(scores).values
    )


def test_missing_variables_raise_clear_error(scores):
    with pytest.raises(InputError, match=r"model=tiny-vit.*variable\(s\) \[.q.\]"):
        best_layer_values(scores.drop_vars(dims.Q))
    with pytest.raises(InputError, match="r_null_p95"):
        roi_layer_profile(scores.drop_vars(dims.R_NULL_P95))
    with pytest.raises(InputError, match="dims"):
        best_layer_values(scores.isel({dims.LAYER: 0}))


def test_plot_surface_map_continuous(scores):
    r = scores[dims.R].values[1]
    fig = plot_surface_map(
        r, scores[dims.HEMI].values, scores[dims.VERTEX].values, title="r", cmap="inferno"
    )
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6  # 4 hemisphere views + ventral + colour bar
    assert fig._suptitle.get_text() == "r"


def test_plot_surface_map_categorical(scores):
    best = best_layer_values(scores)
    labels = best.attrs["layer_names"]
    fig = plot_surface_map(
        best.values,
        scores[dims.HEMI].values,
        scores[dims.VERTEX].values,
        categorical_labels=labels,
    )
    assert len(fig.axes) == 5  # a legend, not a colour bar
    assert [t.get_text() for t in fig.legends[0].get_texts()] == labels
    many = {i: f"L{i}" for i in range(20)}
    fig = plot_surface_map(
        np.arange(best.size) % 20,
        scores[dims.HEMI].values,
        scores[dims.VERTEX].values,
        categorical_labels=many,
        views=("left lateral", "right lateral"),
    )
    assert len(fig.axes) == 3  # two views and a discrete colour bar


def test_plot_surface_map_validates_input(scores):
    hemi = scores[dims.HEMI].values
    vertex = scores[dims.VERTEX].values
    values = np.zeros(hemi.size)
    with pytest.raises(ValueError, match="one entry per voxel"):
        plot_surface_map(values[:-1], hemi, vertex)
    with pytest.raises(ValueError, match="hemi"):
        plot_surface_map(values, np.full(hemi.size, "lh"), vertex)
    with pytest.raises(ValueError, match="out of range"):
        plot_surface_map(values, hemi, vertex + N_VERTICES)
    with pytest.raises(ValueError, match="fsaverage5"):
        plot_surface_map(values, hemi, vertex, space="MNI152")
    with pytest.raises(ValueError, match="categorical_labels"):
        plot_surface_map(values + 7, hemi, vertex, categorical_labels=["a", "b"])


def test_all_nan_map_still_draws(scores):
    hemi = scores[dims.HEMI].values
    fig = plot_surface_map(np.full(hemi.size, np.nan), hemi, scores[dims.VERTEX].values)
    assert any("no vertex" in t.get_text() for t in fig.texts)


def test_figure_to_base64_png(scores):
    fig = plot_layer_profiles(scores)
    png = base64.b64decode(figure_to_base64_png(fig, dpi=30))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_roi_layer_profile_matches_hand_computation(scores):
    prof = roi_layer_profile(scores)
    assert list(dict.fromkeys(prof["roi"])) == list(PLANTED)  # "none" left out, order kept
    assert len(prof) == len(PLANTED) * N_LAYERS
    r = scores[dims.R].values
    c = scores[dims.CEILING].values
    roi = scores[dims.ROI].values
    row = prof[(prof["roi"] == "early") & (prof["layer"] == "layer_02")].iloc[0]
    m = roi == "early"
    assert row["layer_index"] == 2
    assert row["n_voxels"] == m.sum()
    assert row["n_with_ceiling"] == m.sum() - 3
    np.testing.assert_allclose(row["r"], r[2, m].mean())
    keep = m & (c > 0)
    np.testing.assert_allclose(row["r_over_ceiling"], np.mean(r[2, keep] / np.sqrt(c[keep])))
    np.testing.assert_allclose(row["r_null_p95"], 0.05)
    np.testing.assert_allclose(row["r_sem"], r[2, m].std(ddof=1) / np.sqrt(m.sum()))
    for name, layer in PLANTED.items():
        sub = prof[prof["roi"] == name]
        assert sub.loc[sub["r"].idxmax(), "layer_index"] == layer


def test_profile_without_rois_uses_all_voxels(scores):
    unlabelled = scores.assign_coords({dims.ROI: (dims.VOXEL, ["none"] * scores.sizes["voxel"])})
    prof = roi_layer_profile(unlabelled)
    assert set(prof["roi"]) == {"all"}
    assert (prof["n_voxels"] == scores.sizes["voxel"]).all()


@pytest.mark.parametrize("untrained", [0, 1])
def test_plot_layer_profiles(untrained):
    scores = make_scores(untrained=untrained)
    fig = plot_layer_profiles(scores)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * len(PLANTED)
    title = fig._suptitle.get_text()
    assert ("UNTRAINED" in title) == bool(untrained)
    assert "early" in fig.axes[0].get_title(loc="left")
    assert "best layer_01" in fig.axes[0].get_title(loc="left")


def test_surface_map_render_cache_on_disk(scores, tmp_path, monkeypatch):
    """A map drawn from the disk cache (a later job) is pixel-identical to a fresh render, and a
    damaged cache entry is rendered again rather than failing."""
    from alignment.viz import brainmaps

    def raw(values):
        fig = plot_surface_map(
            values, scores[dims.HEMI].values, scores[dims.VERTEX].values, views=("ventral",)
        )
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba()).copy()

    monkeypatch.setenv("ALIGNMENT_CACHE_DIR", str(tmp_path))
    brainmaps._view_render.cache_clear()
    r = scores[dims.R].values[1]
    fresh = raw(r)
    (entry,) = (tmp_path / "brainmaps").glob("fsaverage5-ventral-*.npz")
    brainmaps._view_render.cache_clear()  # a new process: only the disk cache remains
    np.testing.assert_array_equal(raw(r), fresh)
    entry.write_bytes(b"not an npz")
    brainmaps._view_render.cache_clear()
    np.testing.assert_array_equal(raw(r), fresh)
    monkeypatch.setenv("ALIGNMENT_CACHE_DIR", "")  # empty: no disk cache at all
    brainmaps._view_render.cache_clear()
    np.testing.assert_array_equal(raw(r), fresh)
    brainmaps._view_render.cache_clear()
