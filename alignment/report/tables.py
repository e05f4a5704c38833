"""ROI tables and terminal summaries of Scores objects.

Per ROI the table reports, at the ROI's best layer (the layer with the highest mean r over the
ROI's voxels), raw r, the null's 95th percentile, r/ceiling and (r/ceiling)² side by side
(DESIGN.md section 5). The ceiling is a fraction of variance (R² scale), so

- ``r_over_ceiling`` = mean over voxels with ceiling > 0 of ``r / sqrt(ceiling)``;
- ``r2_over_ceiling`` = mean over voxels with ceiling > 0 of ``max(r, 0)² / ceiling``, the
  fraction of explainable variance explained (negative r explains nothing, as in Algonauts; it
  is not clipped at 1, values above 1 are flagged instead);
- ``n_above_ceiling`` counts voxels with ceiling > 0 and ``r > sqrt(ceiling)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import pandas as pd
import xarray as xr

from alignment import dims
from alignment.io import read_netcdf
from alignment.viz.brainmaps import (
    _fdr_alpha,
    _sorted_by_layer,
    baseline_label,
    check_scores,
    is_untrained,
    roi_groups,
)
from alignment.viz.profiles import _nanmean, _ratio_to_ceiling

__all__ = ["TABLE_COLUMNS", "TABLE_VARIABLES", "load_scores", "roi_table", "summary_lines"]

#: Variables that an ROI table needs.
TABLE_VARIABLES = (dims.R, dims.Q, dims.CEILING, dims.R_NULL_P95)

#: Columns of :func:`roi_table`, in order.
TABLE_COLUMNS = (
    "roi",
    "n_voxels",
    "best_layer",
    "best_layer_index",
    "r",
    "r_null_p95",
    "ceiling",
    "r_over_ceiling",
    "r2_over_ceiling",
    "frac_significant",
    "n_significant",
    "n_above_ceiling",
    "n_without_ceiling",
    "r_ci_low",
    "r_ci_high",
)


def load_scores(scores: xr.Dataset | str | os.PathLike) -> xr.Dataset:
    """A Scores dataset, read from netCDF when given a path."""
    if isinstance(scores, xr.Dataset):
        return scores
    return read_netcdf(scores)


def roi_table(scores: xr.Dataset, alpha: float | None = None) -> pd.DataFrame:
    """One row per ROI: best layer, r against its null, ceiling-normalised r, significance.

    Parameters
    ----------
    scores : xarray.Dataset
        Scores with ``r``, ``q``, ``r_null_p95`` (layer, voxel) and ``ceiling`` (voxel).
    alpha : float, optional
        FDR level; defaults to the attr ``fdr_alpha`` (0.05 when absent).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`TABLE_COLUMNS`; ROIs in order of first appearance, ``none`` left out (a
        single ``all`` row when no voxel has an ROI). At the best layer (highest mean r over the
        ROI's voxels; ``best_layer`` None and ``best_layer_index`` <NA> when every r is NaN):
        ``r`` is the mean r, ``r_null_p95`` the mean of the null's 95th percentile,
        ``r_over_ceiling`` and ``r2_over_ceiling`` as in the module docstring,
        ``frac_significant`` / ``n_significant`` the share / count of the ROI's voxels with
        ``q < alpha``, ``n_above_ceiling`` the voxels whose r exceeds sqrt(ceiling). ``ceiling``
        is the mean noise ceiling (R² scale) over the ROI's voxels with a finite ceiling;
        ``n_without_ceiling`` counts voxels with ceiling <= 0 or NaN, which the ratios leave
        out. ``r_ci_low`` / ``r_ci_high``: the bootstrap confidence interval of the mean r at
        the best layer (NaN when the Scores have none). ``df.attrs`` holds the Scores' attrs
        and ``fdr_alpha``.
    """
    check_scores(scores, TABLE_VARIABLES, what="roi_table")
    scores = _sorted_by_layer(scores)
    level = _fdr_alpha(scores, alpha)
    r = scores[dims.R].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
    q = scores[dims.Q].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
    p95 = scores[dims.R_NULL_P95].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
    ceiling = scores[dims.CEILING].values.astype(float)
    names = [str(x) for x in scores[dims.LAYER].values]
    if "layer_index" in scores.coords:
        index = np.asarray(scores["layer_index"].values).astype(int)
    else:
        index = np.arange(len(names))

    rows = []
    for roi, mask in roi_groups(scores).items():
        c = ceiling[mask]
        has_ceiling = np.isfinite(c) & (c > 0)
        row = {
            "roi": roi,
            "n_voxels": int(mask.sum()),
            "ceiling": float(np.nanmean(c)) if np.isfinite(c).any() else np.nan,
            "n_without_ceiling": int((~has_ceiling).sum()),
        }
        means = _nanmean(r[:, mask], axis=1)
        if not np.isfinite(means).any():
            row.update(
                best_layer=None,
                best_layer_index=None,
                r=np.nan,
                r_null_p95=np.nan,
                r_over_ceiling=np.nan,
                r2_over_ceiling=np.nan,
                frac_significant=0.0,
                n_significant=0,
                n_above_ceiling=0,
            )
            rows.append(row)
            continue
        b = int(np.nanargmax(means))
        rb = r[b, mask]
        ratio = _ratio_to_ceiling(rb, c)
        with np.errstate(invalid="ignore", divide="ignore"):
            explained = np.where(
                has_ceiling, np.maximum(rb, 0.0) ** 2 / np.where(has_ceiling, c, 1), np.nan
            )
        significant = q[b, mask] < level
        for col, var in (("r_ci_low", dims.R_ROI_CI_LOW), ("r_ci_high", dims.R_ROI_CI_HIGH)):
            if var in scores:  # bootstrap interval of the ROI mean r (same on all its voxels)
                values = scores[var].transpose(dims.LAYER, dims.VOXEL).values[b, mask]
                row[col] = float(_nanmean(values.astype(float), axis=0))
        row.update(
            best_layer=names[b],
            best_layer_index=int(index[b]),
            r=float(means[b]),
            r_null_p95=float(_nanmean(p95[b, mask], axis=0)),
            r_over_ceiling=float(_nanmean(ratio, axis=0)),
            r2_over_ceiling=float(_nanmean(explained, axis=0)),
            frac_significant=float(significant.mean()) if mask.any() else 0.0,
            n_significant=int(significant.sum()),
            n_above_ceiling=int((has_ceiling & (np.nan_to_num(ratio, nan=0.0) > 1.0)).sum()),
        )
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    table["best_layer"] = (
        table["best_layer"].astype(object).where(table["best_layer"].notna(), None)
    )
    table["best_layer_index"] = table["best_layer_index"].astype("Int64")
    table.attrs = {**dict(scores.attrs), "fdr_alpha": level}
    return table


def summary_lines(scores_list: Iterable[xr.Dataset | str | os.PathLike]) -> list[str]:
    """Short terminal summary: one line per (dataset, model, encoder, ROI).

    Each line reads ``dataset | model [UNTRAINED] | encoder | roi: best <layer> r=0.412
    (null95 0.031) r/ceil=0.634 sig=87%``, with a warning when voxels exceed the ceiling.
    """
    lines = []
    for item in scores_list:
        scores = load_scores(item)
        table = roi_table(scores)
        a = scores.attrs
        model = str(a.get("model", "?"))
        if is_untrained(scores):
            model += f" [{baseline_label(scores)}]"
        subject = f"sub-{a['subject']} | " if "subject" in a else ""
        head = f"{subject}{a.get('dataset', '?')} | {model} | {a.get('encoder', '?')}"
        for row in table.itertuples(index=False):
            if pd.isna(row.best_layer):
                lines.append(f"{head} | {row.roi}: no finite r")
                continue
            line = (
                f"{head} | {row.roi}: best {row.best_layer} r={row.r:.3f} "
                f"(null95 {row.r_null_p95:.3f}) r/ceil={_fmt(row.r_over_ceiling)} "
                f"sig={100 * row.frac_significant:.0f}%"
            )
            if row.n_above_ceiling:
                line += f" WARNING: {row.n_above_ceiling} voxel(s) above ceiling"
            lines.append(line)
    return lines


def _fmt(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"
