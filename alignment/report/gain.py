"""Gain of one encoder over a baseline encoder (ridge) fitted on features of the same model.

Both encoders are read at each ROI's best layer (the layer with the highest mean r over the
ROI's voxels, as in :func:`alignment.report.tables.roi_table`); vertices in no ROI use each
encoder's best layer over all ROI voxels. The gain is the difference of r and of r/√ceiling.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from alignment import dims
from alignment.report.tables import roi_table
from alignment.viz.brainmaps import _sorted_by_layer, roi_groups
from alignment.viz.profiles import _nanmean, _ratio_to_ceiling

__all__ = [
    "GAIN_COLUMNS",
    "find_baseline",
    "gain_over_ceiling",
    "gain_table",
    "roi_best_r",
    "significant_in_either",
]

GAIN_COLUMNS = (
    "roi",
    "n_voxels",
    "layer",
    "baseline_layer",
    "r",
    "baseline_r",
    "r_over_ceiling",
    "baseline_r_over_ceiling",
    "gain_r",
    "gain_r_over_ceiling",
)


def find_baseline(scores: xr.Dataset, candidates, kind: str = "ridge") -> xr.Dataset | None:
    """The ``kind`` Scores among ``candidates`` fitted on the same model source and dataset.

    None when ``scores`` is itself of that kind or no candidate matches (e.g. the random
    control, whose model source differs).
    """
    a = scores.attrs
    if str(a.get("encoder_kind", "")) == kind:
        return None
    for other in candidates:
        b = other.attrs
        if (
            str(b.get("encoder_kind", "")) == kind
            and str(b.get("model_source", "")) == str(a.get("model_source", ""))
            and str(b.get("dataset", "")) == str(a.get("dataset", ""))
            and other.sizes[dims.VOXEL] == scores.sizes[dims.VOXEL]
        ):
            return other
    return None


def roi_best_r(scores: xr.Dataset, variable: str = dims.R) -> tuple[np.ndarray, dict[str, str]]:
    """Per vertex, ``variable`` (r, or q...) at the best layer of its ROI (highest mean r);
    and the layer chosen per ROI."""
    scores = _sorted_by_layer(scores)
    r = scores[dims.R].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
    values = scores[variable].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
    names = [str(x) for x in scores[dims.LAYER].values]
    groups = roi_groups(scores)
    in_roi = np.zeros(r.shape[1], bool)
    out = np.full(r.shape[1], np.nan)
    chosen = {}
    for roi, mask in groups.items():
        means = _nanmean(r[:, mask], axis=1)
        b = int(np.nanargmax(means)) if np.isfinite(means).any() else 0
        out[mask] = values[b, mask]
        chosen[roi] = names[b]
        in_roi |= mask
    if (~in_roi).any():
        means = _nanmean(r[:, in_roi], axis=1) if in_roi.any() else _nanmean(r, axis=1)
        b = int(np.nanargmax(means)) if np.isfinite(means).any() else 0
        out[~in_roi] = values[b, ~in_roi]
        chosen[dims.NO_ROI] = names[b]
    return out, chosen


def significant_in_either(scores: xr.Dataset, baseline: xr.Dataset, alpha: float) -> np.ndarray:
    """Vertices where either encoder is significant (q < alpha) at the layer the gain uses."""
    q_enc, _ = roi_best_r(scores, dims.Q)
    q_base, _ = roi_best_r(baseline, dims.Q)
    return (q_enc < alpha) | (q_base < alpha)


def gain_table(scores: xr.Dataset, baseline: xr.Dataset) -> tuple[pd.DataFrame, np.ndarray]:
    """Per ROI gain of ``scores`` over ``baseline``, and the per-vertex gain in r.

    Returns
    -------
    table : DataFrame
        Columns :data:`GAIN_COLUMNS`: each encoder's best layer, mean r and mean r/√ceiling
        (from :func:`~alignment.report.tables.roi_table`) and their differences.
    gain : ndarray (n_voxels,)
        r of ``scores`` minus r of ``baseline``, each at the best layer of the vertex's ROI.
    """
    t, b = roi_table(scores), roi_table(baseline)
    rows = []
    base = {row["roi"]: row for _, row in b.iterrows()}
    for _, row in t.iterrows():
        other = base.get(row["roi"])
        if other is None:
            continue
        rows.append(
            {
                "roi": row["roi"],
                "n_voxels": int(row["n_voxels"]),
                "layer": row["best_layer"],
                "baseline_layer": other["best_layer"],
                "r": row["r"],
                "baseline_r": other["r"],
                "r_over_ceiling": row["r_over_ceiling"],
                "baseline_r_over_ceiling": other["r_over_ceiling"],
                "gain_r": row["r"] - other["r"],
                "gain_r_over_ceiling": row["r_over_ceiling"] - other["r_over_ceiling"],
            }
        )
    r_enc, _ = roi_best_r(scores)
    r_base, _ = roi_best_r(baseline)
    return pd.DataFrame(rows, columns=list(GAIN_COLUMNS)), r_enc - r_base


def gain_over_ceiling(scores: xr.Dataset, baseline: xr.Dataset) -> np.ndarray:
    """Per-vertex gain in r/√ceiling (NaN where the ceiling is not positive)."""
    if dims.CEILING not in scores:
        return np.full(scores.sizes[dims.VOXEL], np.nan)
    ceiling = scores[dims.CEILING].values.astype(float)
    r_enc, _ = roi_best_r(scores)
    r_base, _ = roi_best_r(baseline)
    return _ratio_to_ceiling(r_enc, ceiling) - _ratio_to_ceiling(r_base, ceiling)
