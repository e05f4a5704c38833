"""RSA figures from the output of :func:`alignment.metrics.rsa.rsa_scores` (``rsa.nc``).

- :func:`rsa_table`: per ROI, the best layer's RDM correlation, p, null and ceilings;
- :func:`plot_rsa_profiles`: RDM correlation against layer per ROI, with the subject-based
  noise-ceiling band (lower to upper) and the label-permutation null's 95th percentile;
- :func:`plot_best_rdms`: per ROI, the ROI's RDM above the best layer's RDM (percentiles of
  the dissimilarities, so that both share one colour scale).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure
from scipy import stats

from alignment import dims
from alignment.io import InputError

__all__ = ["RSA_VARIABLES", "check_rsa", "plot_best_rdms", "plot_rsa_profiles", "rsa_table"]

#: Variables an RSA result must hold for the figures.
RSA_VARIABLES = ("rdm_r", "p", "null_p95", "ceiling_lower", "ceiling_upper", "roi_rdm", "layer_rdm")


def check_rsa(ds: xr.Dataset, what: str = "RSA figures") -> None:
    """Raise :class:`InputError` when an RSA result lacks a variable the figures need."""
    missing = [v for v in RSA_VARIABLES if v not in ds]
    if missing:
        src = ds.encoding.get("source", "RSA result")
        raise InputError(f"{src}: {what} need variable(s) {missing} (from `alignment rsa`)")


def _title(ds: xr.Dataset) -> str:
    a = ds.attrs
    return (
        f"{a.get('dataset', '?')} · {a.get('model', '?')} · {a.get('encoder', 'rsa')} "
        f"({a.get('method', '?')}, {a.get('distance', 'correlation')} distance)"
    )


def rsa_table(ds: xr.Dataset) -> pd.DataFrame:
    """Per ROI: best layer (highest RDM correlation), its r, p and null, and the ceilings.

    Returns
    -------
    pandas.DataFrame
        Columns ``roi``, ``best_layer``, ``rdm_r``, ``p``, ``null_p95``, ``ceiling_lower``,
        ``ceiling_upper`` and ``r_over_lower`` (``rdm_r / ceiling_lower``; NaN where the lower
        ceiling is not positive). ``best_layer`` is None where every r is NaN.
    """
    check_rsa(ds, "the RSA table")
    layers = [str(x) for x in ds[dims.LAYER].values]
    rows = []
    for roi in ds["roi_name"].values:
        r = ds["rdm_r"].sel(roi_name=roi).values.astype(float)
        lower = float(ds["ceiling_lower"].sel(roi_name=roi))
        upper = float(ds["ceiling_upper"].sel(roi_name=roi))
        row = {"roi": str(roi), "ceiling_lower": lower, "ceiling_upper": upper}
        if np.isfinite(r).any():
            b = int(np.nanargmax(r))
            row.update(
                best_layer=layers[b],
                rdm_r=r[b],
                p=float(ds["p"].sel(roi_name=roi).values[b]),
                null_p95=float(ds["null_p95"].sel(roi_name=roi).values[b]),
            )
        else:
            row.update(best_layer=None, rdm_r=np.nan, p=np.nan, null_p95=np.nan)
        row["r_over_lower"] = row["rdm_r"] / lower if lower > 0 else np.nan
        rows.append(row)
    cols = ["roi", "best_layer", "rdm_r", "p", "null_p95", "ceiling_lower", "ceiling_upper",
            "r_over_lower"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def plot_rsa_profiles(ds: xr.Dataset) -> Figure:
    """RDM correlation of every layer with every ROI's RDM, against the ceiling and the null.

    Parameters
    ----------
    ds : xarray.Dataset
        An RSA result (:func:`alignment.metrics.rsa.rsa_scores`).

    Returns
    -------
    matplotlib.figure.Figure
        One axis per ROI: the RDM correlation per layer (line), the noise-ceiling band from
        the lower to the upper bound (shaded), the null's 95th percentile (dashed) and the best
        layer (star).
    """
    check_rsa(ds)
    table = rsa_table(ds)
    layers = [str(x) for x in ds[dims.LAYER].values]
    x = np.arange(len(layers))
    rois = [str(r) for r in ds["roi_name"].values]
    ncol = min(len(rois), 2)
    nrow = int(np.ceil(len(rois) / ncol))
    fig = Figure(figsize=(4.6 * ncol + 0.6, 2.3 * nrow + 0.8))
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False, sharex=True).ravel())
    for ax, roi, (_, row) in zip(axes, rois, table.iterrows(), strict=False):
        r = ds["rdm_r"].sel(roi_name=roi).values.astype(float)
        p95 = ds["null_p95"].sel(roi_name=roi).values.astype(float)
        lo, hi = row["ceiling_lower"], row["ceiling_upper"]
        if np.isfinite(lo) and np.isfinite(hi):
            ax.axhspan(lo, hi, color="#fee090", alpha=0.7, lw=0, label="noise ceiling")
        ax.plot(x, p95, ls="--", color="0.45", lw=1.0, label="null 95th pct.")
        ax.plot(x, r, marker="o", ms=3, color="#2166ac", lw=1.5, label="RDM correlation")
        ax.axhline(0, color="0.6", lw=0.6)
        if row["best_layer"] is not None:
            b = layers.index(row["best_layer"])
            ax.plot([b], [r[b]], marker="*", ms=11, color="#e08214", zorder=5)
            ax.set_title(
                f"{roi}: best {row['best_layer']}, r = {row['rdm_r']:.3f} (p = {row['p']:.3g})",
                fontsize=9,
                loc="left",
            )
        else:
            ax.set_title(f"{roi}: no finite RDM correlation", fontsize=9, loc="left")
        ax.set_ylabel(f"RDM {ds.attrs.get('method', 'r')}", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", color="0.92", lw=0.6)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_xticks(x[:: max(1, int(np.ceil(len(x) / 10)))])
        ax.set_xticklabels(
            [layers[i] for i in x[:: max(1, int(np.ceil(len(x) / 10)))]], rotation=45, ha="right"
        )
    for ax in axes[len(rois) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, frameon=False, loc="best")
    fig.suptitle(f"RSA layer profiles: {_title(ds)}", fontsize=10)
    fig.set_layout_engine("constrained")
    return fig


def _percentiles(m: np.ndarray) -> np.ndarray:
    """An RDM with its off-diagonal dissimilarities replaced by their percentiles (0-100)."""
    out = np.zeros_like(m, dtype=float)
    iu = np.triu_indices(m.shape[0], 1)
    v = m[iu]
    ok = np.isfinite(v)
    ranks = np.full(v.shape, np.nan)
    if ok.sum() > 1:
        ranks[ok] = (stats.rankdata(v[ok]) - 1) / (ok.sum() - 1) * 100
    out[iu] = ranks
    return out + out.T


def plot_best_rdms(ds: xr.Dataset) -> Figure:
    """Per ROI, the ROI's RDM (top) and the RDM of its best layer (bottom).

    Dissimilarities are shown as percentiles so that data and model share one colour scale
    (RSA compares ranks). Stimuli keep the order of the responses.
    """
    check_rsa(ds)
    table = rsa_table(ds)
    n = len(table)
    fig = Figure(figsize=(2.3 * n + 0.9, 5.0))
    axes = fig.subplots(2, n, squeeze=False)
    image = None
    for j, (_, row) in enumerate(table.iterrows()):
        top, bottom = axes[0, j], axes[1, j]
        image = top.imshow(_percentiles(ds["roi_rdm"].sel(roi_name=row["roi"]).values),
                           cmap="viridis", vmin=0, vmax=100, interpolation="nearest")  # fmt: skip
        top.set_title(f"{row['roi']} (sub-{ds.attrs.get('subject', '?')})", fontsize=9)
        if row["best_layer"] is not None:
            layer = ds["layer_rdm"].sel(layer=row["best_layer"]).values
            bottom.imshow(_percentiles(layer), cmap="viridis", vmin=0, vmax=100,
                          interpolation="nearest")  # fmt: skip
            bottom.set_title(f"{row['best_layer']} (r = {row['rdm_r']:.2f})", fontsize=9)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("ROI RDM", fontsize=9)
    axes[1, 0].set_ylabel("best layer RDM", fontsize=9)
    if image is not None:
        cbar = fig.colorbar(image, ax=axes, shrink=0.6, pad=0.02)
        cbar.set_label("dissimilarity (percentile)", fontsize=8)
        cbar.ax.tick_params(labelsize=7)
    fig.suptitle(f"RDMs: {_title(ds)}", fontsize=10)
    fig.set_layout_engine("constrained")
    return fig
