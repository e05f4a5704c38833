"""Layer profiles: how well each layer predicts each ROI, against the null and the ceiling.

Definitions (shared with :func:`alignment.report.tables.roi_table`):

- ``r``: mean over the ROI's voxels of the cross-validated Pearson r (NaN voxels ignored);
- ``r_over_ceiling``: mean over the ROI's voxels with ``ceiling > 0`` of ``r / sqrt(ceiling)``,
  the noise ceiling being a fraction of variance (R² scale), so this is r relative to the best
  r that the noise allows;
- ``r_null_p95`` / ``r_null_mean``: mean over the ROI's voxels of the null distribution's 95th
  percentile / mean for that layer;
- ``r_ci_low`` / ``r_ci_high``: the bootstrap confidence interval of the ROI-mean r (Scores
  variables ``r_roi_ci_low/high``, the same on every voxel of an ROI), NaN when absent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from alignment import dims
from alignment.viz.brainmaps import (
    _sorted_by_layer,
    check_scores,
    is_untrained,
    roi_groups,
    scores_title,
)

__all__ = ["PROFILE_VARIABLES", "plot_layer_profiles", "roi_layer_profile"]

#: Variables that a layer profile needs.
PROFILE_VARIABLES = (dims.R, dims.CEILING, dims.R_NULL_P95)


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN; NaN (without a warning) where a slice has no finite value."""
    finite = np.isfinite(a)
    count = finite.sum(axis=axis)
    total = np.where(finite, a, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _ratio_to_ceiling(r: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
    """r / sqrt(ceiling) where ceiling > 0, NaN elsewhere; ``r`` (..., voxel)."""
    ok = np.isfinite(ceiling) & (ceiling > 0)
    root = np.sqrt(np.where(ok, ceiling, 1.0))
    return np.where(ok, r / root, np.nan)


def roi_layer_profile(scores: xr.Dataset) -> pd.DataFrame:
    """Tidy per-ROI, per-layer means of r, r/ceiling and the null.

    Parameters
    ----------
    scores : xarray.Dataset
        Scores with ``r``, ``r_null_p95`` (layer, voxel) and ``ceiling`` (voxel); ``r_null_mean``
        is used when present.

    Returns
    -------
    pandas.DataFrame
        One row per (ROI, layer), ROIs in order of first appearance (``none`` left out; a single
        ``all`` group when no voxel has an ROI), layers in model order. Columns: ``roi``,
        ``layer``, ``layer_index``, ``r`` (mean), ``r_sem`` (standard error over voxels),
        ``r_over_ceiling`` (mean over voxels with ceiling > 0 of r / sqrt(ceiling)),
        ``r_null_mean``, ``r_null_p95`` (means), ``r_ci_low``, ``r_ci_high`` (bootstrap
        interval of the ROI-mean r; NaN without ``r_roi_ci_low/high``), ``n_voxels``,
        ``n_with_ceiling``.
    """
    check_scores(scores, PROFILE_VARIABLES, what="roi_layer_profile")
    scores = _sorted_by_layer(scores)
    r = scores[dims.R].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
    p95 = scores[dims.R_NULL_P95].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
    if dims.R_NULL_MEAN in scores:
        null_mean = scores[dims.R_NULL_MEAN].transpose(dims.LAYER, dims.VOXEL).values
        null_mean = null_mean.astype(float)
    else:
        null_mean = np.full_like(r, np.nan)
    ci = {}
    for col, var in (("r_ci_low", dims.R_ROI_CI_LOW), ("r_ci_high", dims.R_ROI_CI_HIGH)):
        ci[col] = (
            scores[var].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
            if var in scores
            else np.full_like(r, np.nan)
        )
    ceiling = scores[dims.CEILING].values.astype(float)
    ratio = _ratio_to_ceiling(r, ceiling[None, :])
    names = [str(x) for x in scores[dims.LAYER].values]
    if "layer_index" in scores.coords:
        index = np.asarray(scores["layer_index"].values).astype(int)
    else:
        index = np.arange(len(names))

    rows = []
    for roi, mask in roi_groups(scores).items():
        rr = r[:, mask]
        n_finite = np.isfinite(rr).sum(axis=1)
        mean = _nanmean(rr, axis=1)
        dev = np.where(np.isfinite(rr), rr - mean[:, None], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            sd = np.sqrt((dev**2).sum(axis=1) / np.maximum(n_finite - 1, 1))
            sem = np.where(n_finite > 1, sd / np.sqrt(n_finite), np.nan)
        n_ceiling = int((np.isfinite(ceiling[mask]) & (ceiling[mask] > 0)).sum())
        ratio_mean = _nanmean(ratio[:, mask], axis=1)
        p95_mean = _nanmean(p95[:, mask], axis=1)
        null_mean_mean = _nanmean(null_mean[:, mask], axis=1)
        ci_means = {col: _nanmean(v[:, mask], axis=1) for col, v in ci.items()}
        for j, name in enumerate(names):
            rows.append(
                {
                    "roi": roi,
                    "layer": name,
                    "layer_index": int(index[j]),
                    "r": mean[j],
                    "r_sem": sem[j],
                    "r_over_ceiling": ratio_mean[j],
                    "r_null_mean": null_mean_mean[j],
                    "r_null_p95": p95_mean[j],
                    "r_ci_low": ci_means["r_ci_low"][j],
                    "r_ci_high": ci_means["r_ci_high"][j],
                    "n_voxels": int(mask.sum()),
                    "n_with_ceiling": n_ceiling,
                }
            )
    return pd.DataFrame(rows)


def _best_row(profile: pd.DataFrame) -> pd.Series | None:
    """Row of the layer with the highest mean r (None when every mean is NaN)."""
    finite = profile["r"].notna()
    if not finite.any():
        return None
    return profile.loc[profile.loc[finite, "r"].idxmax()]


def plot_layer_profiles(scores: xr.Dataset, profile: pd.DataFrame | None = None) -> Figure:
    """Per ROI, mean r and r/ceiling against layer depth, with the null and the best layer.

    Parameters
    ----------
    scores : xarray.Dataset
        Scores (see :func:`roi_layer_profile`).
    profile : pandas.DataFrame, optional
        The output of :func:`roi_layer_profile`, when already computed.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes per ROI (one row each): left, mean r ± SEM over voxels with the null's mean
        and 95th percentile (grey band and dashed line) and, when the Scores hold them, the
        bootstrap confidence interval of the ROI-mean r as error bars; right, mean
        r / sqrt(ceiling). The
        layer with the highest mean r is marked in both. Untrained models say so in the title.
    """
    if profile is None:
        profile = roi_layer_profile(scores)
    rois = list(dict.fromkeys(profile["roi"]))
    names = list(dict.fromkeys(profile["layer"]))
    n_layers = len(names)
    x = np.arange(n_layers)
    untrained = is_untrained(scores)
    colour = "#b2182b" if untrained else "#2166ac"

    n = len(rois)
    fig = Figure(figsize=(9.5, 1.75 * n + 0.9))
    axes = fig.subplots(n, 2, squeeze=False, sharex=True)
    step = max(1, int(np.ceil(n_layers / 12)))
    short = max((len(s) for s in names), default=0) <= 10

    for i, roi in enumerate(rois):
        prof = profile[profile["roi"] == roi].reset_index(drop=True)
        ax_r, ax_c = axes[i]
        r = prof["r"].to_numpy(float)
        sem = prof["r_sem"].to_numpy(float)
        p95 = prof["r_null_p95"].to_numpy(float)
        nmean = prof["r_null_mean"].to_numpy(float)
        ratio = prof["r_over_ceiling"].to_numpy(float)

        low = np.where(np.isfinite(nmean), nmean, np.minimum(p95, 0.0))
        ax_r.fill_between(x, low, p95, color="0.85", lw=0, label="null mean to 95th pct.")
        ax_r.plot(x, p95, ls="--", color="0.45", lw=1.0, label="null 95th pct.")
        ax_r.fill_between(x, r - sem, r + sem, color=colour, alpha=0.2, lw=0)
        ax_r.plot(x, r, marker="o", ms=3, color=colour, lw=1.5, label="mean r ± SEM")
        ci_low = prof["r_ci_low"].to_numpy(float)
        ci_high = prof["r_ci_high"].to_numpy(float)
        has_ci = np.isfinite(ci_low) & np.isfinite(ci_high)
        if has_ci.any():
            level = float(scores.attrs.get("ci_level", 0.95))
            ax_r.errorbar(
                x[has_ci],
                r[has_ci],
                yerr=np.abs(np.vstack([r - ci_low, ci_high - r])[:, has_ci]),
                fmt="none",
                ecolor="black",
                elinewidth=0.9,
                capsize=2.5,
                label=f"{level:.0%} bootstrap CI",
            )
        ax_r.axhline(0, color="0.6", lw=0.6)
        ax_c.plot(x, ratio, marker="o", ms=3, color="#1b7837", lw=1.5)
        ax_c.axhline(0, color="0.6", lw=0.6)
        if np.nanmax(np.r_[ratio, 0.0]) > 0.8:
            ax_c.axhline(1.0, color="#d6604d", lw=0.8, ls=":")
            ax_c.text(0, 1.0, "ceiling", color="#d6604d", fontsize=7, va="bottom")

        best = _best_row(prof)
        n_vox = int(prof["n_voxels"].iloc[0]) if len(prof) else 0
        n_ceil = int(prof["n_with_ceiling"].iloc[0]) if len(prof) else 0
        if best is not None:
            b = int(best.name)
            for ax, values in ((ax_r, r), (ax_c, ratio)):
                ax.axvline(b, color="0.3", lw=0.8, ls=":")
                if np.isfinite(values[b]):
                    ax.plot([b], [values[b]], marker="*", ms=11, color="#e08214", zorder=5)
            ax_r.set_title(
                f"{roi} (n={n_vox}): best {best['layer']}, r = {best['r']:.3f}",
                fontsize=9,
                loc="left",
            )
            with_ceiling = f" ({n_ceil}/{n_vox} with ceiling > 0)" if n_ceil < n_vox else ""
            ax_c.set_title(
                f"{roi}: r/√ceiling = {best['r_over_ceiling']:.3f} at best{with_ceiling}",
                fontsize=9,
                loc="left",
            )
        else:
            ax_r.set_title(f"{roi} (n={n_vox}): no finite r", fontsize=9, loc="left")
            ax_c.set_title(f"{roi}: no finite r/√ceiling", fontsize=9, loc="left")
        ax_r.set_ylabel("r", fontsize=9)
        ax_c.set_ylabel("r / √ceiling", fontsize=9)
        for ax in (ax_r, ax_c):
            ax.tick_params(labelsize=8)
            ax.grid(axis="y", color="0.92", lw=0.6)
            ax.spines[["top", "right"]].set_visible(False)
        if i == 0:
            ax_r.legend(fontsize=7, frameon=False, loc="best")

    for ax in axes[-1]:
        ax.set_xticks(x[::step])
        if short:
            ax.set_xticklabels(names[::step], rotation=45 if n_layers > 6 else 0, ha="right"
                               if n_layers > 6 else "center")  # fmt: skip
            ax.set_xlabel("layer", fontsize=9)
        else:
            ax.set_xlabel("layer index (0 = first extracted layer)", fontsize=9)
        ax.set_xlim(-0.3, n_layers - 0.7)
    title = f"Layer profiles: {scores_title(scores)}"
    fig.suptitle(title, fontsize=10.5, color="#b2182b" if untrained else "black")
    fig.set_layout_engine("constrained")
    return fig
