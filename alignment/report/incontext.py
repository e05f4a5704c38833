"""Report section of the in-context encoder: test-time scaling against ridge, and decoding.

Reads the tidy tables of ``alignment fewshot`` (EV against the number of context images, for
the in-context encoder and ridge fitted on the same images) and ``alignment decode`` (top-1 /
top-5 retrieval against the number of voxels), and renders one HTML section with figures.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from alignment.viz.brainmaps import figure_to_base64_png

__all__ = ["attention_html", "incontext_section", "plot_decoding", "plot_scaling", "read_tables"]


def read_tables(paths: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the given TSVs into the scaling table (has ``ev_mean``) and the decoding table
    (attention tables, with an ``attention`` column, are read by :func:`attention_html`)."""
    scaling, decoding = [], []
    for p in paths:
        t = pd.read_csv(p, sep="\t")
        if "attention" in t.columns:
            continue
        (scaling if "ev_mean" in t.columns else decoding).append(t)
    cat = lambda ts: pd.concat(ts, ignore_index=True) if ts else pd.DataFrame()  # noqa: E731
    return cat(scaling), cat(decoding)


def plot_scaling(table: pd.DataFrame, roi: str = "all ROIs"):
    """Mean EV against N (log axis): in-context vs ridge on the same N images, one panel per
    (model, layer)."""
    if roi not in set(table["roi"]):
        roi = "all"
    sub = table[table["roi"] == roi]
    groups = list(sub.groupby(["model", "layer"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.4), squeeze=False)
    for ax, ((model, layer), g) in zip(axes[0], groups, strict=True):
        for enc, colour in (("incontext", "#b2182b"), ("ridge", "#2166ac")):
            e = g[g["encoder"] == enc].sort_values("n_context")
            label = "in-context (no gradient step)" if enc == "incontext" else "ridge (same N)"
            ax.plot(e["n_context"], e["ev_mean"], "o-", color=colour, label=label)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("context images N")
        ax.set_ylabel(f"mean explained variance ({roi})")
        ax.set_title(f"{model} · {layer}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_decoding(table: pd.DataFrame):
    """Top-1 retrieval against the number of voxels, at the largest context, with chance."""
    n_ctx = table["n_context"].max()
    sub = table[table["n_context"] == n_ctx]
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    styles = {"incontext": ("#b2182b", "in-context decoder"), "analytic": ("#2166ac", "analytic")}
    for method, g in sub.groupby("method", sort=False):
        colour, label = styles.get(method, ("k", method))
        g = g.sort_values("n_voxels")
        ax.plot(g["n_voxels"], g["top1"], "o-", color=colour, label=f"{label} top-1")
        ax.plot(g["n_voxels"], g["top5"], "s--", color=colour, alpha=0.6, label=f"{label} top-5")
    ax.axhline(sub["chance_top1"].mean(), color="grey", ls=":", label="chance top-1")
    ax.axhline(sub["chance_top5"].mean(), color="grey", ls="-.", label="chance top-5")
    ax.set_xscale("log")
    ax.set_xlabel("voxels")
    ax.set_ylabel("retrieval accuracy")
    ax.set_title(f"decoding from {n_ctx} context images", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _table_html(df: pd.DataFrame, columns, caption: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    rows = []
    for _, row in df.iterrows():
        cells = []
        for c in columns:
            v = row[c]
            text = f"{v:.3f}" if isinstance(v, float) else str(v)
            cells.append(f'<td class="num">{html.escape(text)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )


def _thumbnail(path, size: int = 56) -> str:
    """An <img> of a stimulus image, shrunk and inlined; empty when it cannot be read."""
    import base64
    import io

    from PIL import Image

    try:
        with Image.open(str(path)) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, ValueError):
        return ""
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="" width="{size}" src="data:image/png;base64,{data}">'


def attention_html(table: pd.DataFrame, per_roi: int = 3) -> str:
    """The context images that token 0 of a few voxels per ROI attends to most.

    ``table`` is ``alignment fewshot --attention-out``; the voxels shown are the ``per_roi``
    best predicted (in-context EV, whole training fold as context) of each ROI.
    """
    if table.empty:
        return ""
    rows = []
    for (model, roi), g in table.groupby(["model", "roi"], sort=True):
        best = g.drop_duplicates("voxel").sort_values("ev", ascending=False)["voxel"].head(per_roi)
        for vox in best:
            v = g[g["voxel"] == vox].sort_values("rank")
            where = f"{v['hemi'].iloc[0]} {v['vertex'].iloc[0]}" if "hemi" in v else str(vox)
            cells = []
            for _, r in v.iterrows():
                label = html.escape(str(r.get("category", r["stimulus_id"])))
                ratio = r["attention"] / r["uniform"] if r["uniform"] else float("nan")
                thumb = _thumbnail(r["path"]) if "path" in v and isinstance(r["path"], str) else ""
                cells.append(
                    f"<td>{thumb}<br><small>{html.escape(str(r['stimulus_id']))} {label}"
                    f"<br>{ratio:.1f}&times; uniform</small></td>"
                )
            rows.append(
                f"<tr><td>{html.escape(str(model))}</td><td>{html.escape(str(roi))}</td>"
                f'<td>{html.escape(where)}</td><td class="num">{v["ev"].iloc[0]:.3f}</td>'
                + "".join(cells)
                + "</tr>"
            )
    k = int(table["rank"].max()) + 1
    head = "<th>model</th><th>ROI</th><th>voxel</th><th>EV</th>" + "".join(
        f"<th>#{i + 1}</th>" for i in range(k)
    )
    return (
        '<p class="note">Interpretation: the context images that token 0 of each voxel attends '
        "to most in the last block (averaged over heads; the whole training set of the first "
        "fold as context), for the best-predicted voxels of each ROI; the weight is given as a "
        "multiple of uniform attention.</p><table><caption>Most attended context images"
        f"</caption><tr>{head}</tr>" + "".join(rows) + "</table>"
    )


def _img(fig, alt: str, dpi: int) -> str:
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,'
        f'{figure_to_base64_png(fig, dpi=dpi)}"><figcaption>{html.escape(alt)}</figcaption>'
        "</figure>"
    )


def incontext_section(paths: Iterable[str | os.PathLike], dpi: int = 100) -> str:
    """HTML section: scaling curve (in-context vs ridge on the same N images) and decoding."""
    paths = list(paths)
    if not paths:
        return ""
    scaling, decoding = read_tables(paths)
    out = ['<h2 id="incontext">In-context encoder (BraInCoRL) and decoding (BrainCoDec)</h2>']
    if not scaling.empty:
        desc = scaling["checkpoint_model"].iloc[0] if "checkpoint_model" in scaling else ""
        out.append(
            '<p class="note">A hypernetwork meta-trained on the <b>other</b> subjects of the '
            "dataset (leave-one-subject-out) reads N (image embedding, response) pairs of each "
            "voxel of this subject and emits its linear encoder in one forward pass, with no "
            "gradient step; ridge is fitted on the same N images. Both are scored on the same "
            "held-out images of each outer fold (explained variance, pooled over folds). "
            f"<b>The model is small</b> ({html.escape(str(desc))}): the paper's model has 20 "
            "blocks of width 560-1200 meta-trained on NSD, so these numbers show the "
            "mechanics, not its accuracy.</p>"
        )
        out.append(
            _img(plot_scaling(scaling), "Mean explained variance against context size N.", dpi)
        )
        keep = scaling[scaling["roi"].isin(["all ROIs", "all"])]
        cols = ["model", "layer", "roi", "encoder", "n_context", "ev_mean", "r_mean"]
        out.append(_table_html(keep[cols], cols, "Explained variance against N"))
    if not decoding.empty:
        out.append(
            '<p class="note">Decoding: the in-context encoders (w, b) of the best-predicted '
            "voxels (chosen on the context images) and the responses to a held-out image give "
            "its embedding, by the analytic inversion normalise((WᵀW + λI)⁻¹Wᵀ(β − b)) or by "
            "the in-context decoder (a second transformer over voxel tokens [w, b, beta] that "
            "adds a learned correction to that inversion); the image is retrieved among the "
            "fold's held-out images.</p>"
        )
        out.append(_img(plot_decoding(decoding), "Retrieval accuracy against voxels.", dpi))
        cols = ["method", "n_context", "n_voxels", "top1", "top5", "chance_top1", "n_candidates"]
        out.append(_table_html(decoding[cols], cols, "Retrieval accuracy"))
    attention = [t for t in (pd.read_csv(p, sep="\t") for p in paths) if "attention" in t]
    if attention:
        out.append(attention_html(pd.concat(attention, ignore_index=True)))
    return "\n".join(out)
