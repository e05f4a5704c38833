"""Variance partitioning of a banded ridge fit: per-space R² table, bars and brain maps.

Scores of a banded encoder carry ``r2_split`` (each space's share of the joint R², himalaya's
product measure) and, when it refitted without each space, ``r2_unique`` (joint R² minus the
R² without the space), both (layer, space, voxel). This module turns them into the subject
report's "variance partitioning" block, shown under the encoder's own section.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import xarray as xr

from alignment import dims
from alignment.viz.brainmaps import (
    _fdr_alpha,
    figure_to_base64_png,
    map_kind,
    plot_brain_map,
    roi_groups,
)

__all__ = ["banded_section", "plot_space_r2", "space_table"]


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def space_table(scores: xr.Dataset, layer: int = 0) -> pd.DataFrame:
    """Per ROI: joint R² and, per space, mean split R², unique R² and the share of vertices
    (significant in the joint fit) where the space has the largest split R²."""
    alpha = _fdr_alpha(scores, None)
    spaces = [str(s) for s in scores[dims.SPACE].values]
    r2 = scores[dims.R2].values[layer].astype(float)
    q = scores[dims.Q].values[layer].astype(float)
    split = scores[dims.R2_SPLIT].values[layer].astype(float)
    unique = (
        scores[dims.R2_UNIQUE].values[layer].astype(float) if dims.R2_UNIQUE in scores else None
    )
    winner = np.argmax(np.nan_to_num(split, nan=-np.inf), axis=0)
    rows = []
    for roi, mask in roi_groups(scores).items():
        sig = mask & (q < alpha)
        row = {"roi": roi, "n_voxels": int(mask.sum()), "n_significant": int(sig.sum())}
        row["r2_joint"] = float(np.nanmean(r2[mask]))
        for i, space in enumerate(spaces):
            row[f"r2_split[{space}]"] = float(np.nanmean(split[i, mask]))
            if unique is not None:
                row[f"r2_unique[{space}]"] = float(np.nanmean(unique[i, mask]))
            row[f"wins[{space}]"] = float((winner[sig] == i).mean()) if sig.any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def plot_space_r2(scores: xr.Dataset, table: pd.DataFrame | None = None):
    """Bars per ROI: each space's split R² (stacked: they add up to the joint R²) and, beside
    them, its unique R²."""
    import matplotlib.pyplot as plt

    table = space_table(scores) if table is None else table
    spaces = [str(s) for s in scores[dims.SPACE].values]
    has_unique = dims.R2_UNIQUE in scores
    fig, axes = plt.subplots(
        1, 2 if has_unique else 1, figsize=(5 + 4 * has_unique, 3.2), squeeze=False
    )
    x = np.arange(len(table))
    colours = plt.get_cmap("tab10").colors
    bottom_pos, bottom_neg = np.zeros(len(table)), np.zeros(len(table))
    ax = axes[0, 0]
    for i, space in enumerate(spaces):
        v = table[f"r2_split[{space}]"].to_numpy(float)
        base = np.where(v >= 0, bottom_pos, bottom_neg)
        ax.bar(x, v, bottom=base, color=colours[i % 10], label=space)
        bottom_pos += np.clip(v, 0, None)
        bottom_neg += np.clip(v, None, 0)
    ax.plot(x, table["r2_joint"], "k_", markersize=18, label="joint R²")
    ax.set_title("split R² (product measure)")
    ax.set_ylabel("mean R² over the ROI")
    if has_unique:
        ax2 = axes[0, 1]
        width = 0.8 / len(spaces)
        for i, space in enumerate(spaces):
            ax2.bar(
                x + (i - (len(spaces) - 1) / 2) * width,
                table[f"r2_unique[{space}]"].to_numpy(float),
                width,
                color=colours[i % 10],
                label=space,
            )
        ax2.set_title("unique R² (joint minus without the space)")
    for a in axes.ravel():
        a.axhline(0, color="grey", lw=0.8)
        a.set_xticks(x, table["roi"], rotation=30, ha="right")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def banded_section(scores: xr.Dataset, dpi: int = 100) -> str:
    """HTML block of a banded fit's per-space R²; empty for Scores without ``r2_split``."""
    if dims.R2_SPLIT not in scores or dims.SPACE not in scores.coords:
        return ""
    alpha = _fdr_alpha(scores, None)
    spaces = [str(s) for s in scores[dims.SPACE].values]
    table = space_table(scores)
    out = ['<div class="banded">', "<h4>Variance partitioning (banded ridge)</h4>"]
    out.append(
        '<p class="note">Split R²: each feature space\'s share of the held-out joint R² '
        "(himalaya's r2_score_split, the product measure; the shares add up to the joint R² of "
        "the fold-centred prediction and can be negative). Unique R²: joint R² minus the R² of "
        "the model refitted without the space, i.e. what only that space explains. "
        f"'wins': share of the ROI's vertices significant in the joint fit (q &lt; {alpha:g}) "
        "where the space has the largest split R².</p>"
    )
    head = ["ROI", "vertices", "joint R²"]
    for space in spaces:
        head += [f"split R² {space}"]
        if dims.R2_UNIQUE in scores:
            head += [f"unique R² {space}"]
        head += [f"wins {space}"]
    out.append("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>")
    for _, row in table.iterrows():
        cells = [_e(row["roi"]), str(row["n_voxels"]), f"{row['r2_joint']:.3f}"]
        for space in spaces:
            cells.append(f"{row[f'r2_split[{space}]']:.3f}")
            if dims.R2_UNIQUE in scores:
                cells.append(f"{row[f'r2_unique[{space}]']:.3f}")
            wins = row[f"wins[{space}]"]
            cells.append("n/a" if not np.isfinite(wins) else f"{wins:.0%}")
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    figures = []
    fig = plot_space_r2(scores, table)
    figures.append((figure_to_base64_png(fig, dpi=dpi), "Per-space R² by ROI."))
    if map_kind(scores) is not None:
        q = scores[dims.Q].values[0].astype(float)
        split = scores[dims.R2_SPLIT].values[0].astype(float)
        sig = q < alpha
        top = np.nanpercentile(np.where(sig, split, np.nan), 99) if sig.any() else 0.1
        for i, space in enumerate(spaces):
            shown = np.where(sig, split[i], np.nan)
            fig = plot_brain_map(
                shown,
                scores,
                title=f"split R² of {space}, q < {alpha:g}",
                cmap="inferno",
                vmin=0.0,
                vmax=max(float(top), 1e-3),
                colorbar_label="split R²",
            )
            figures.append(
                (
                    figure_to_base64_png(fig, dpi=dpi),
                    f"Split R² of {space} where the joint fit is significant "
                    f"({int(sig.sum())} of {sig.size} vertices).",
                )
            )
    out.append('<div class="maps">')
    for b64, caption in figures:
        out.append(
            f'<figure><img src="data:image/png;base64,{b64}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    out.append("</div></div>")
    return "\n".join(out)
