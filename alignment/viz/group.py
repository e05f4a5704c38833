"""Figures of the group and comparison reports, drawn from the tables of
:mod:`alignment.report.study` (plain matplotlib, no pyplot)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = [
    "plot_best_layer_counts",
    "plot_depth_profiles",
    "plot_group_profiles",
    "plot_paired_differences",
    "plot_peak_scatter",
    "plot_region_chart",
]

_BASELINE_COLOUR = "#b2182b"
_MODEL_COLOUR = "#2166ac"


def _grid(n: int, n_cols: int = 3, w: float = 3.6, h: float = 2.5):
    cols = min(n_cols, max(n, 1))
    rows = int(np.ceil(max(n, 1) / cols))
    fig = Figure(figsize=(w * cols + 0.4, h * rows + 0.8))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _style(ax) -> None:
    ax.tick_params(labelsize=7.5)
    ax.grid(axis="y", color="0.92", lw=0.6)
    ax.spines[["top", "right"]].set_visible(False)


def plot_group_profiles(
    stats: pd.DataFrame,
    table: pd.DataFrame,
    best: pd.DataFrame,
    title: str = "",
    planted: Mapping[str, str] | None = None,
    alpha: float = 0.05,
) -> Figure:
    """Layer profiles of one fit per ROI: group mean, 95% CI, subjects, null and ceiling.

    Parameters
    ----------
    stats : pandas.DataFrame
        :func:`~alignment.report.study.group_layer_stats` rows of one fit.
    table : pandas.DataFrame
        :func:`~alignment.report.study.study_table` rows of the same fit (subject lines).
    best : pandas.DataFrame
        :func:`~alignment.report.study.best_layer_stats` rows of the same fit.
    title : str
        Figure title.
    planted : mapping, optional
        ROI -> planted layer name (simulations), marked by a green line.
    alpha : float
        FDR level: layers with q < alpha are filled dots, the others open.
    """
    rois = list(dict.fromkeys(stats["roi"]))
    fig, axes = _grid(len(rois))
    baseline = str(stats["baseline"].iloc[0]) if len(stats) else ""
    colour = _BASELINE_COLOUR if baseline else _MODEL_COLOUR
    for ax, roi in zip(axes, rois, strict=False):
        s = stats[stats["roi"] == roi].sort_values("layer_index")
        names = s["layer"].tolist()
        x = np.arange(len(names))
        ax.fill_between(
            x,
            s["r_ceiling_low"],
            s["r_ceiling_high"],
            color="#fee0b6",
            lw=0,
            label="noise ceiling (√NC, range)",
        )
        ax.plot(x, s["r_ceiling"], color="#e08214", lw=0.8, ls="-.")
        ax.plot(x, s["r_null_p95"], color="0.45", lw=1.0, ls="--", label="null 95th pct.")
        sub = table[table["roi"] == roi]
        for _subject, frame in sub.groupby("subject", sort=False):
            frame = frame.set_index("layer").reindex(names)
            ax.plot(x, frame["r"], color=colour, lw=0.7, alpha=0.22)
        ax.fill_between(
            x, s["r_ci_low"], s["r_ci_high"], color=colour, alpha=0.2, lw=0, label="95% CI"
        )
        ax.plot(x, s["r"], color=colour, lw=1.8, label="mean r")
        sig = s["significant"].to_numpy(bool)
        ax.scatter(
            x[sig], s["r"].to_numpy()[sig], s=18, color=colour, zorder=4, label=f"q < {alpha:g}"
        )
        ax.scatter(
            x[~sig],
            s["r"].to_numpy()[~sig],
            s=18,
            facecolor="white",
            edgecolor=colour,
            zorder=4,
            label="n.s.",
        )
        b = best[best["roi"] == roi]
        if len(b) and b["best_index"].iloc[0] >= 0:
            bi = int(b["best_index"].iloc[0])
            ax.plot([bi], [s["r"].to_numpy()[bi]], marker="*", ms=12, color="#e08214", zorder=5)
            head = (
                f"{roi}: best {names[bi]} in {int(b['n_best'].iloc[0])}/"
                f"{int(b['n_subjects'].iloc[0])}"
            )
        else:
            head = f"{roi}: no finite r"
        if planted and roi in planted and planted[roi] in names:
            ax.axvline(names.index(planted[roi]), color="#1b7837", lw=1.0, ls=":")
            head += f" (planted {planted[roi]})"
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_title(head, fontsize=8.5, loc="left")
        step = max(1, int(np.ceil(len(names) / 8)))
        ax.set_xticks(x[::step])
        ax.set_xticklabels(names[::step], rotation=40, ha="right", fontsize=7)
        ax.set_ylabel("r", fontsize=8)
        _style(ax)
    if rois:
        axes[0].legend(fontsize=6.5, frameon=False, loc="upper left", ncol=2)
    fig.suptitle(title, fontsize=10, color=colour if baseline else "black")
    fig.set_layout_engine("constrained")
    return fig


def plot_best_layer_counts(best: pd.DataFrame, title: str = "") -> Figure:
    """Per ROI (rows) and layer (columns): subjects whose best layer it is, with the
    bootstrap 95% interval of the group's best layer drawn as a bar and the best layer starred.
    """
    rois = best["roi"].tolist()
    layers = list(best["layers"].iloc[0]) if len(best) else []
    counts = np.array([c for c in best["counts"]], dtype=float).reshape(len(rois), len(layers))
    fig = Figure(figsize=(max(4.0, 0.55 * len(layers) + 2.2), 0.5 * len(rois) + 1.4))
    ax = fig.subplots()
    n = max(1, int(best["n_subjects"].max())) if len(best) else 1
    image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=n, aspect="auto")
    for i in range(len(rois)):
        for j in range(len(layers)):
            value = int(counts[i, j])
            ax.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                fontsize=7.5,
                color="white" if value > n / 2 else "0.2",
            )
        row = best.iloc[i]
        if np.isfinite(row["ci_low_index"]):
            ax.plot(
                [row["ci_low_index"] - 0.4, row["ci_high_index"] + 0.4],
                [i + 0.38, i + 0.38],
                color="#e08214",
                lw=2.5,
                solid_capstyle="butt",
            )
        if row["best_index"] >= 0:
            ax.plot([row["best_index"]], [i - 0.3], marker="*", ms=8, color="#e08214")
    ax.set_yticks(range(len(rois)))
    ax.set_yticklabels(rois, fontsize=8)
    step = max(1, int(np.ceil(len(layers) / 12)))
    ax.set_xticks(range(0, len(layers), step))
    ax.set_xticklabels(layers[::step], rotation=40, ha="right", fontsize=7)
    cb = fig.colorbar(image, ax=ax, shrink=0.8)
    cb.set_label("subjects with this best layer", fontsize=7.5)
    cb.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9, loc="left")
    fig.set_layout_engine("constrained")
    return fig


def plot_region_chart(selected: pd.DataFrame, title: str = "", alpha: float = 0.05) -> Figure:
    """Per ROI, one bar per fit: mean over subjects of delta (r minus null mean) at the layer
    chosen on the other subjects, its 95% CI and each subject as a dot.

    ``selected`` has columns roi, fit, baseline, mean, ci_low, ci_high, significant, values.
    """
    rois = list(dict.fromkeys(selected["roi"]))
    fits = list(dict.fromkeys(selected["fit"]))
    width = 0.8 / max(len(fits), 1)
    fig = Figure(figsize=(max(5.0, 1.1 * len(rois) * max(1, len(fits) / 2) + 2), 3.4))
    ax = fig.subplots()
    palette = ["#2166ac", "#4393c3", "#1b7837", "#762a83", "#8c510a", "#01665e"]
    k_model = 0
    for k, fit in enumerate(fits):
        rows = selected[selected["fit"] == fit].set_index("roi").reindex(rois)
        kind = rows["baseline"].dropna()
        if len(kind) and kind.iloc[0] == "control":
            colour = _BASELINE_COLOUR
        else:
            colour = palette[k_model % len(palette)]
            k_model += 1
        x = np.arange(len(rois)) + (k - (len(fits) - 1) / 2) * width
        mean = rows["mean"].to_numpy(float)
        err = np.vstack(
            [mean - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - mean]
        )
        ax.bar(x, mean, width * 0.9, color=colour, alpha=0.75, label=fit)
        ax.errorbar(x, mean, yerr=np.nan_to_num(err), fmt="none", ecolor="0.2", lw=0.9, capsize=2)
        for xi, values, sig in zip(x, rows["values"], rows["significant"], strict=True):
            if isinstance(values, list | np.ndarray):
                v = np.asarray(values, dtype=float)
                ax.scatter(np.full(v.size, xi), v, s=6, color="0.15", zorder=4)
            if sig is True:
                top = np.nanmax([*np.atleast_1d(values), 0.0]) if values is not None else 0.0
                ax.text(xi, top, "*", ha="center", va="bottom", fontsize=11)
    ax.axhline(0, color="0.5", lw=0.7)
    ax.set_xticks(range(len(rois)))
    ax.set_xticklabels(rois, fontsize=8)
    ax.set_ylabel("r − null mean", fontsize=8)
    ax.legend(fontsize=7, frameon=False, ncol=2)
    ax.set_title(title, fontsize=9, loc="left")
    _style(ax)
    fig.set_layout_engine("constrained")
    return fig


def plot_paired_differences(diffs: pd.DataFrame, title: str = "") -> Figure:
    """One panel per (model a, model b, encoder): per ROI the mean paired difference with its
    95% CI, each subject as a dot, and a star where q < alpha."""
    keys = list(
        dict.fromkeys(zip(diffs["model_a"], diffs["model_b"], diffs["encoder"], strict=True))
    )
    fig, axes = _grid(len(keys), n_cols=2, w=4.4, h=2.6)
    for ax, (a, b, enc) in zip(axes, keys, strict=False):
        d = diffs[(diffs.model_a == a) & (diffs.model_b == b) & (diffs.encoder == enc)]
        x = np.arange(len(d))
        mean = d["diff"].to_numpy(float)
        err = np.vstack([mean - d["ci_low"].to_numpy(float), d["ci_high"].to_numpy(float) - mean])
        colours = ["#1b7837" if s else "0.6" for s in d["significant"]]
        ax.bar(x, mean, 0.6, color=colours, alpha=0.8)
        ax.errorbar(x, mean, yerr=np.nan_to_num(err), fmt="none", ecolor="0.2", lw=0.9, capsize=2)
        for xi, values, sig in zip(x, d["subject_diffs"], d["significant"], strict=True):
            v = np.asarray(values, dtype=float)
            ax.scatter(np.full(v.size, xi), v, s=6, color="0.15", zorder=4)
            if sig:
                ax.text(xi, np.nanmax([*v, 0.0]), "*", ha="center", va="bottom", fontsize=11)
        ax.axhline(0, color="0.5", lw=0.7)
        ax.set_xticks(x)
        ax.set_xticklabels(d["roi"], fontsize=7.5, rotation=20)
        ax.set_ylabel("Δ(r − null)", fontsize=8)
        ax.set_title(f"{a} − {b} · {enc}", fontsize=8.5, loc="left")
        _style(ax)
    fig.suptitle(title, fontsize=10)
    fig.set_layout_engine("constrained")
    return fig


def plot_depth_profiles(stats: pd.DataFrame, peaks: pd.DataFrame, title: str = "") -> Figure:
    """Per ROI, every fit's group-mean r against relative depth (0 = input, 1 = last layer),
    its peak (refined between layers) marked; single-layer baselines as horizontal lines."""
    rois = list(dict.fromkeys(stats["roi"]))
    fig, axes = _grid(len(rois), n_cols=2, w=4.6, h=2.9)
    fits = list(dict.fromkeys(zip(stats["model"], stats["encoder"], strict=True)))
    palette = ["#2166ac", "#1b7837", "#762a83", "#8c510a", "#01665e", "#c51b7d", "#4393c3"]
    colours = {}
    k = 0
    for fit in fits:
        base = stats[(stats.model == fit[0]) & (stats.encoder == fit[1])]["baseline"].iloc[0]
        if base:
            colours[fit] = _BASELINE_COLOUR
        else:
            colours[fit] = palette[k % len(palette)]
            k += 1
    for ax, roi in zip(axes, rois, strict=False):
        for fit in fits:
            s = stats[(stats.roi == roi) & (stats.model == fit[0]) & (stats.encoder == fit[1])]
            s = s.sort_values("relative_depth")
            if not len(s):
                continue
            label = f"{fit[0]} · {fit[1]}"
            colour = colours[fit]
            dashed = "--" if colour == _BASELINE_COLOUR else "-"
            if len(s) == 1:
                ax.axhline(s["r"].iloc[0], color=colour, ls=":", lw=1.2, label=label)
                continue
            x = s["relative_depth"].to_numpy(float)
            ax.fill_between(x, s["r_ci_low"], s["r_ci_high"], color=colour, alpha=0.12, lw=0)
            ax.plot(x, s["r"], color=colour, ls=dashed, lw=1.6, marker="o", ms=2.5, label=label)
            p = peaks[(peaks.roi == roi) & (peaks.model == fit[0]) & (peaks.encoder == fit[1])]
            if len(p) and np.isfinite(p["peak_depth"].iloc[0]):
                d = float(p["peak_depth"].iloc[0])
                ax.plot(
                    [d],
                    [np.interp(d, x, s["r"].to_numpy(float))],
                    marker="v",
                    ms=8,
                    color=colour,
                    zorder=5,
                )
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_xlim(-0.03, 1.03)
        ax.set_xlabel("relative depth (0 = input, 1 = last layer)", fontsize=7.5)
        ax.set_ylabel("mean r", fontsize=8)
        ax.set_title(roi, fontsize=9, loc="left")
        _style(ax)
    if rois:
        axes[0].legend(fontsize=6.5, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.set_layout_engine("constrained")
    return fig


def plot_peak_scatter(peaks: pd.DataFrame, title: str = "") -> Figure:
    """Per ROI: peak r and peak relative depth of every fit against a model property.

    The x axis is the parameter count (log scale) when the model spec gives ``params`` for at
    least two models, else the number of scored layers. Colour is the family; open markers are
    instruction-tuned models; a line links each base model to its instruction-tuned twin (same
    family and parameter count); red squares are baselines.
    """
    rois = list(dict.fromkeys(peaks["roi"]))
    use_params = peaks.drop_duplicates("model")["params"].notna().sum() >= 2
    xcol = "params" if use_params else "n_layers"
    fig = Figure(figsize=(8.4, 2.5 * len(rois) + 0.9))
    axes = fig.subplots(max(len(rois), 1), 2, squeeze=False)
    families = [f for f in dict.fromkeys(peaks["family"].fillna("?"))]
    palette = ["#2166ac", "#1b7837", "#762a83", "#8c510a", "#01665e", "#c51b7d", "#4393c3"]
    fam_colour = {f: palette[i % len(palette)] for i, f in enumerate(families)}
    for (ax_r, ax_d), roi in zip(axes, rois, strict=False):
        p = peaks[peaks["roi"] == roi]
        for ax, ycol, ylabel in (
            (ax_r, "r", "peak mean r"),
            (ax_d, "peak_depth", "peak relative depth"),
        ):
            for row in p.itertuples(index=False):
                x = getattr(row, xcol)
                if x is None or not np.isfinite(float(x)):
                    continue
                y = getattr(row, ycol)
                if row.baseline:
                    ax.scatter([x], [y], marker="s", s=28, color=_BASELINE_COLOUR, zorder=4)
                else:
                    colour = fam_colour[row.family if isinstance(row.family, str) else "?"]
                    face = "white" if row.instruction_tuned is True else colour
                    ax.scatter([x], [y], s=32, facecolor=face, edgecolor=colour, lw=1.4, zorder=4)
                ax.annotate(
                    row.model, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
            for base, tuned in instruct_pairs(p):
                xs = [float(base[xcol]), float(tuned[xcol])]
                ys = [float(base[ycol]), float(tuned[ycol])]
                ax.plot(xs, ys, color="0.4", lw=0.9, zorder=3)
            if ycol == "peak_depth":
                ax.errorbar(
                    p[xcol].astype(float),
                    p["peak_depth"],
                    yerr=np.nan_to_num(
                        np.vstack(
                            [
                                p["peak_depth"] - p["peak_depth_ci_low"],
                                p["peak_depth_ci_high"] - p["peak_depth"],
                            ]
                        )
                    ),
                    fmt="none",
                    ecolor="0.6",
                    lw=0.7,
                )
                ax.set_ylim(-0.05, 1.05)
            if use_params:
                ax.set_xscale("log")
            ax.set_xlabel("parameters" if use_params else "layers scored", fontsize=7.5)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_title(roi, fontsize=8.5, loc="left")
            _style(ax)
    fig.suptitle(title, fontsize=10)
    fig.set_layout_engine("constrained")
    return fig


def instruct_pairs(peaks: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """(base, instruction-tuned) rows of the same family, parameter count and encoder."""
    out = []
    rows = [r for _, r in peaks.iterrows() if isinstance(r.get("family"), str)]

    def same(a, b) -> bool:
        return (pd.isna(a) and pd.isna(b)) or a == b

    for base in rows:
        if base.get("instruction_tuned") is True:
            continue
        for tuned in rows:
            if (
                tuned.get("instruction_tuned") is True
                and tuned["family"] == base["family"]
                and tuned["encoder"] == base["encoder"]
                and tuned["roi"] == base["roi"]
                and same(tuned.get("params"), base.get("params"))
            ):
                out.append((base, tuned))
    return out
