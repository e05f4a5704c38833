"""One self-contained HTML report per subject: layer profiles, brain maps and ROI tables.

The page has no external resource: CSS is inline and every figure is a base64 PNG, so it can be
mailed or archived as one file. Every piece of text that comes from data, config or provenance
goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import importlib.metadata
import json
import os
import platform
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from alignment import dims
from alignment.io import write_text
from alignment.report.banded import banded_section
from alignment.report.tables import load_scores, roi_table
from alignment.viz.brainmaps import (
    SURFACE_SPACES,
    _fdr_alpha,
    _sorted_by_layer,
    baseline_label,
    best_layer_values,
    check_scores,
    figure_to_base64_png,
    is_untrained,
    map_kind,
    plot_brain_map,
    roi_groups,
    scores_title,
)
from alignment.viz.profiles import (
    PROFILE_VARIABLES,
    _nanmean,
    _ratio_to_ceiling,
    plot_layer_profiles,
    roi_layer_profile,
)

__all__ = ["PACKAGES", "package_versions", "render_subject_report", "write_subject_report"]

#: Distributions whose versions the provenance section lists.
PACKAGES = ("alignment", "numpy", "torch", "himalaya", "nilearn", "xarray", "transformers")

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1240px; margin: 0 auto; padding: 0 24px 60px; line-height: 1.45; }
h1 { font-size: 1.7em; margin: 28px 0 4px; }
h2 { font-size: 1.35em; margin-top: 40px; padding-bottom: 4px; border-bottom: 2px solid #ccc; }
h3 { font-size: 1.12em; margin: 0 0 6px; }
.sub { color: #666; margin: 0 0 18px; }
.howto { background: #f4f7fb; border-left: 4px solid #2166ac; padding: 10px 16px;
         font-size: 0.93em; }
.howto dt { font-weight: 600; margin-top: 6px; }
.howto dd { margin-left: 16px; }
.toc { font-size: 0.92em; margin-top: 18px; }
.model { border: 1px solid #ddd; border-radius: 6px; padding: 14px 18px; margin: 22px 0; }
.model.untrained { border: 2px solid #b2182b; background: #fff8f7; }
.badge { display: inline-block; font-size: 0.72em; font-weight: 700; padding: 2px 8px;
         border-radius: 10px; vertical-align: middle; margin-left: 8px; }
.badge.untrained { background: #b2182b; color: white; }
.meta { font-size: 0.88em; color: #444; margin: 4px 0 10px; }
.meta span { margin-right: 16px; white-space: nowrap; }
.warn { color: #b2182b; font-weight: 600; }
figure { margin: 10px 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 0.85em; color: #555; margin-top: 2px; }
.maps { display: flex; flex-wrap: wrap; gap: 12px; }
.maps figure { flex: 1 1 560px; max-width: 610px; margin: 0; }
table { border-collapse: collapse; font-size: 0.86em; margin: 8px 0 4px; }
th, td { border: 1px solid #d4d4d4; padding: 3px 8px; }
th { background: #f0f0f0; font-weight: 600; text-align: center; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.flag { background: #fddbc7; color: #67001f; font-weight: 600; }
td.low { color: #999; }
td.ok { background: #d9f0d3; }
td.bad { background: #fddbc7; }
caption { caption-side: top; text-align: left; font-size: 0.9em; color: #444; padding: 2px 0; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 10px; font-size: 0.82em;
      overflow-x: auto; }
.note { font-size: 0.85em; color: #555; }
"""

_HOW_TO_READ = """
<p>Each model's layers were turned into features, an encoder was fitted from the features of
one layer to every cortical vertex, and its predictions were scored on held-out data. The
question is which layer predicts which region, and how close it comes to what the noise in the
data allows.</p>
<dl>
<dt>r</dt><dd>Cross-validated Pearson correlation between predicted and measured responses.</dd>
<dt>Null</dt><dd>The same encoder scored after breaking the stimulus-response pairing (see
each model's &ldquo;null&rdquo;). A layer is only informative where its r clears the null's 95th
percentile (grey band and dashed line in the profiles; &ldquo;null 95th&rdquo; in the tables).
</dd>
<dt>Significance</dt><dd>Per-vertex permutation p-values, corrected over vertices with
Benjamini&ndash;Hochberg FDR; maps show only vertices with q below the FDR level.</dd>
<dt>Noise ceiling</dt><dd>The fraction of response variance that is repeatable (R&sup2; scale).
r/&radic;ceiling is r relative to the best r the noise allows; (r/ceiling)&sup2; =
r&sup2;/ceiling is the fraction of explainable variance explained. Values above 1 mean the
model beats the ceiling estimate; they are flagged in red and usually point to a noisy
ceiling.</dd>
<dt>Best layer</dt><dd>Per ROI, the layer with the highest mean r over the ROI's vertices
(star in the profiles); per vertex, the layer with the highest r (best-layer map). Early layers
peaking in early visual or auditory cortex and deeper layers in higher areas is the usual
pattern.</dd>
<dt>Untrained models</dt><dd>Marked with a red <span class="badge untrained">UNTRAINED</span>
badge: the same architecture with random weights, a baseline for how much of the fit comes
from the architecture and the statistics of the input rather than from learning.</dd>
</dl>
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _slug(*parts: str) -> str:
    text = "-".join(str(p) for p in parts).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "section"


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    try:
        value = float(x)
    except (TypeError, ValueError):
        return _e(x)
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"


def _img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{_e(alt)}">'


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (read from metadata, nothing imported) and Python's."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
            if name == "alignment":  # running from a source tree without pip install
                from alignment import __version__

                out[name] = f"{__version__} (source tree)"
    out["python"] = platform.python_version()
    return out


# --------------------------------------------------------------------------------------------
# per-model pieces


def _truth_for(truth: Mapping | None, scores: xr.Dataset) -> dict | None:
    """The planted ROI -> spec mapping that applies to these Scores, if any."""
    if not truth:
        return None
    entry = truth.get(str(scores.attrs.get("dataset", "")))
    if not isinstance(entry, Mapping):
        return None
    model = entry.get("model")
    if model is not None and str(model) != str(scores.attrs.get("model", "")):
        return None
    rois = entry.get("rois")
    return dict(rois) if isinstance(rois, Mapping) else None


def _planted_layer(spec) -> str | None:
    value = spec.get("layer") if isinstance(spec, Mapping) else spec
    return None if value is None else str(value)


def _planted_text(spec) -> str:
    """What was planted in one ROI: the layer, or what drives it when no layer does."""
    planted = _planted_layer(spec)
    if planted is not None:
        return planted
    driver = spec.get("driver") if isinstance(spec, Mapping) else None
    return f"no layer ({driver})" if driver else "no layer"


def _truth_cells(row, spec) -> str:
    """Cells 'planted layer' and 'recovered' for one ROI row."""
    if spec is None:
        return '<td class="low">not planted</td><td class="low"></td>'
    planted = _planted_layer(spec)
    if planted is None:  # driven by something other than a model layer: nothing to recover
        return f'<td>{_e(_planted_text(spec))}</td><td class="low">n/a</td>'
    ok = pd.notna(row["best_layer"]) and str(row["best_layer"]) == planted
    return f'<td>{_e(planted)}</td><td class="{"ok" if ok else "bad"}">{"yes" if ok else "no"}</td>'


def _roi_table_html(scores: xr.Dataset, table: pd.DataFrame, truth_rois: dict | None) -> str:
    alpha = float(table.attrs.get("fdr_alpha", 0.05))
    heads = ["ROI", "vertices", "best layer"]
    if truth_rois is not None:
        heads += ["planted layer", "recovered"]
    has_ci = bool(table["r_ci_low"].notna().any()) if "r_ci_low" in table else False
    level = float(scores.attrs.get("ci_level", 0.95))
    heads += ["mean r"] + ([f"{100 * level:g}% CI (bootstrap)"] if has_ci else [])
    heads += [
        "null 95th pct.",
        "mean ceiling (R²)",
        "r/√ceiling",
        "(r/ceiling)²",
        f"significant (q&lt;{_num(alpha, 3)})",
        "above ceiling",
    ]
    out = ["<table>"]
    caption = "ROI summary at each ROI's best layer (highest mean r)."
    if is_untrained(scores):
        caption = f"{baseline_label(scores)}, a baseline. " + caption
    out.append(f"<caption>{_e(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{h if 'q&lt;' in h else _e(h)}</th>" for h in heads))
    for _, row in table.iterrows():
        cells = [f"<td>{_e(row['roi'])}</td>", f'<td class="num">{int(row["n_voxels"])}</td>']
        cells.append(f"<td>{_e(row['best_layer']) if pd.notna(row['best_layer']) else 'n/a'}</td>")
        if truth_rois is not None:
            cells.append(_truth_cells(row, truth_rois.get(row["roi"])))
        below_null = np.isfinite(row["r"]) and row["r"] <= row["r_null_p95"]
        r_class = "num low" if below_null else "num"
        r_title = ' title="not above the null 95th percentile"' if below_null else ""
        cells.append(f'<td class="{r_class}"{r_title}>{_num(row["r"])}</td>')
        if has_ci:
            cells.append(
                f'<td class="num">[{_num(row["r_ci_low"])}, {_num(row["r_ci_high"])}]</td>'
            )
        cells.append(f'<td class="num">{_num(row["r_null_p95"])}</td>')
        cells.append(f'<td class="num">{_num(row["ceiling"])}</td>')
        over = np.isfinite(row["r_over_ceiling"]) and row["r_over_ceiling"] > 1
        cls = "num flag" if over else "num"
        cells.append(f'<td class="{cls}">{_num(row["r_over_ceiling"])}</td>')
        over2 = np.isfinite(row["r2_over_ceiling"]) and row["r2_over_ceiling"] > 1
        cls = "num flag" if over2 else "num"
        cells.append(f'<td class="{cls}">{_num(row["r2_over_ceiling"])}</td>')
        cells.append(
            f'<td class="num">{100 * row["frac_significant"]:.1f}% '
            f'<span class="note">({int(row["n_significant"])})</span></td>'
        )
        n_above = int(row["n_above_ceiling"])
        cls = "num flag" if n_above else "num"
        text = f"{n_above} ⚠" if n_above else "0"
        cells.append(f'<td class="{cls}">{text}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    n_without = int(table["n_without_ceiling"].sum())
    if n_without:
        out.append(
            f'<p class="note">{n_without} vertex(es) in these ROIs have no positive ceiling '
            "and are left out of the ceiling ratios.</p>"
        )
    return "\n".join(out)


def _best_layer_overall(scores: xr.Dataset) -> tuple[int, str, float]:
    """Position, name and mean r of the layer with the highest mean r over ROI voxels."""
    scores = _sorted_by_layer(scores)
    mask = np.zeros(scores.sizes[dims.VOXEL], bool)
    for m in roi_groups(scores).values():
        mask |= m
    r = scores[dims.R].transpose(dims.LAYER, dims.VOXEL).values[:, mask].astype(float)
    means = _nanmean(r, axis=1)
    if not np.isfinite(means).any():
        return 0, str(scores[dims.LAYER].values[0]), float("nan")
    b = int(np.nanargmax(means))
    return b, str(scores[dims.LAYER].values[b]), float(means[b])


def _maps_html(scores: xr.Dataset, dpi: int) -> str:
    space = str(scores.attrs.get("space", "fsaverage5"))
    if map_kind(scores) is None:
        return (
            '<p class="note">No brain maps: they are drawn on surfaces '
            f"({_e(', '.join(SURFACE_SPACES))}; other than fsaverage5 with a mesh), volumes with"
            " i/j/k and an affine, or as a chart"
            f" of ROI-level data; these Scores are in space {_e(space)} without those.</p>"
        )
    scores = _sorted_by_layer(scores)
    alpha = _fdr_alpha(scores, None)
    label = scores_title(scores)
    figures = []

    best = best_layer_values(scores)
    names = best.attrs["layer_names"]
    if "layer_index" in scores.coords:
        codes = [int(i) for i in scores["layer_index"].values]
    else:
        codes = list(range(len(names)))
    n_sig = int(np.isfinite(best.values).sum())
    fig = plot_brain_map(
        best.values,
        scores,
        title=f"Best layer per vertex (q < {alpha:g} in some layer)\n{label}",
        cmap="viridis",
        categorical_labels=dict(zip(codes, names, strict=True)),
        colorbar_label="layer with the highest r",
    )
    figures.append(
        (
            figure_to_base64_png(fig, dpi=dpi),
            f"Best layer per vertex: the layer with the highest r, shown where the vertex is "
            f"significant (FDR q < {alpha:g}) in at least one layer; {n_sig} of "
            f"{best.size} vertices.",
        )
    )

    b, name, mean_r = _best_layer_overall(scores)
    r = scores[dims.R].values[b].astype(float)
    q = scores[dims.Q].values[b].astype(float)
    sig = q < alpha
    r_shown = np.where(sig, r, np.nan)
    top = np.nanpercentile(r_shown, 99) if sig.any() else 1.0
    fig = plot_brain_map(
        r_shown,
        scores,
        title=f"r at {name} (best layer overall, mean r = {mean_r:.3f}), q < {alpha:g}\n{label}",
        cmap="inferno",
        vmin=0.0,
        vmax=max(float(top), 1e-3),
        colorbar_label="cross-validated r",
    )
    figures.append(
        (
            figure_to_base64_png(fig, dpi=dpi),
            f"r of layer {name} (best layer overall: the highest mean r over all ROI "
            f"vertices); "
            f"vertices significant at FDR q < {alpha:g} ({int(sig.sum())} of {sig.size}).",
        )
    )

    if dims.CEILING in scores:
        ratio = _ratio_to_ceiling(r, scores[dims.CEILING].values.astype(float))
        ratio_shown = np.where(sig, ratio, np.nan)
        n_shown = int(np.isfinite(ratio_shown).sum())
        top = np.nanpercentile(ratio_shown, 99) if n_shown else 1.0
        top = float(np.clip(top, 0.05, 1.0))
        fig = plot_brain_map(
            ratio_shown,
            scores,
            title=f"r / √ceiling at {name}, q < {alpha:g}\n{label}",
            cmap="viridis",
            vmin=0.0,
            vmax=top,
            colorbar_label="r / √ceiling (1 = at the noise ceiling)",
        )
        figures.append(
            (
                figure_to_base64_png(fig, dpi=dpi),
                f"r relative to the noise ceiling at {name}, where significant and the ceiling "
                f"is positive ({n_shown} vertices); colours saturate at {top:.2f} (99th "
                "percentile, at most 1: the ceiling).",
            )
        )
    parts = ['<div class="maps">']
    for b64, caption in figures:
        parts.append(f"<figure>{_img(b64, caption)}<figcaption>{_e(caption)}</figcaption></figure>")
    parts.append("</div>")
    return "\n".join(parts)


def _model_section(scores: xr.Dataset, anchor: str, truth: Mapping | None, dpi: int) -> str:
    a = scores.attrs
    untrained = is_untrained(scores)
    badge = (
        f' <span class="badge untrained">{_e(baseline_label(scores))}</span>' if untrained else ""
    )
    null = str(a.get("null_kind", "?"))
    if "n_permutations" in a:
        null += f", {a['n_permutations']} permutations"
    meta = [
        ("encoder", a.get("encoder", "?")),
        ("ceiling", a.get("ceiling_method", "?")),
        ("null", null),
        ("scoring", a.get("scoring", "?")),
        ("FDR", f"q < {_fdr_alpha(scores, None):g}"),
        ("source", a.get("model_source", "?")),
        ("revision", a.get("model_revision", "?")),
    ]
    out = [f'<section class="model{" untrained" if untrained else ""}" id="{anchor}">']
    out.append(
        f"<h3>{_e(a.get('model', '?'))}{badge} <small>· {_e(a.get('encoder', '?'))}</small></h3>"
    )
    out.append(
        '<div class="meta">'
        + "".join(f"<span><b>{_e(k)}:</b> {_e(v)}</span>" for k, v in meta)
        + "</div>"
    )
    if untrained and baseline_label(scores).startswith("RANDOM"):
        out.append(
            '<p class="warn">This is a random-feature control (Gaussian features per stimulus): '
            "any score it reaches is what chance and the statistics let through.</p>"
        )
    elif untrained:
        out.append(
            '<p class="warn">This is an untrained network (random initial weights): a baseline, '
            "not evidence about what a trained model learns.</p>"
        )
    truth_rois = _truth_for(truth, scores)
    table = roi_table(scores)
    out.append(_roi_table_html(scores, table, truth_rois))
    profile = roi_layer_profile(scores)
    fig = plot_layer_profiles(scores, profile)
    caption = (
        "Layer profiles per ROI. Left: mean r over the ROI's vertices (± SEM) with the null's "
        "mean to 95th percentile (grey band, dashed line). Right: mean r/√ceiling over vertices "
        "with a positive ceiling. The star marks the best layer (highest mean r)."
    )
    if profile["r_ci_low"].notna().any():
        caption += (
            f" Error bars: {float(scores.attrs.get('ci_level', 0.95)):.0%} bootstrap confidence "
            "interval of the ROI-mean r (resampling stimuli, or blocks of TRs)."
        )
    out.append(
        f"<figure>{_img(figure_to_base64_png(fig, dpi=dpi), caption)}"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )
    out.append(_maps_html(scores, dpi))
    out.append("</section>")
    return "\n".join(out)


def _overview_html(items: list[tuple[xr.Dataset, str]], truth: Mapping | None) -> str:
    """One table per dataset: models in rows, ROIs in columns, best layer / r / r/√ceiling."""
    tables = [(scores, anchor, roi_table(scores)) for scores, anchor in items]
    rois = list(dict.fromkeys(roi for _, _, t in tables for roi in t["roi"]))
    out = ["<table>", "<caption>Best layer per ROI, mean r and r/√ceiling at that layer."]
    out.append(" Click a model for details.</caption>")
    out.append("<tr><th>model · encoder</th>" + "".join(f"<th>{_e(r)}</th>" for r in rois))
    out.append("</tr>")
    truth_rois = None
    for scores, anchor, table in tables:
        truth_rois = truth_rois or _truth_for(truth, scores)
        a = scores.attrs
        name = f"{a.get('model', '?')} · {a.get('encoder', '?')}"
        badge = (
            f' <span class="badge untrained">{_e(baseline_label(scores).split(" (")[0])}</span>'
            if is_untrained(scores)
            else ""
        )
        cells = [f'<td><a href="#{anchor}">{_e(name)}</a>{badge}</td>']
        by_roi = {row["roi"]: row for _, row in table.iterrows()}
        for roi in rois:
            row = by_roi.get(roi)
            if row is None or pd.isna(row["best_layer"]):
                cells.append('<td class="low">n/a</td>')
                continue
            cls = "low" if row["r"] <= row["r_null_p95"] else ""
            n_above = int(row["n_above_ceiling"])
            warn = (
                f' <span class="warn" title="{n_above} vertex(es) above the noise ceiling">⚠</span>'
                if n_above
                else ""
            )
            cells.append(
                f'<td class="{cls}">{_e(row["best_layer"])}{warn}<br><span class="note">r '
                f"{_num(row['r'])} · {_num(row['r_over_ceiling'])} of ceiling</span></td>"
            )
        out.append("<tr>" + "".join(cells) + "</tr>")
    if truth_rois:
        cells = ["<td><b>planted (demo ground truth)</b></td>"]
        for roi in rois:
            text = _planted_text(truth_rois[roi]) if roi in truth_rois else "—"
            cells.append(f"<td><b>{_e(text)}</b></td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _provenance_html(items: list[xr.Dataset], config: Mapping, provenance: Mapping) -> str:
    out = ['<h2 id="provenance">Provenance</h2>']
    hashes = {str(s.attrs["config_hash"]) for s in items if "config_hash" in s.attrs}
    config_hash = provenance.get("config_hash")
    if config_hash is None and len(hashes) == 1:
        config_hash = next(iter(hashes))
    out.append(f"<p><b>config hash:</b> <code>{_e(config_hash or 'n/a')}</code></p>")
    if config_hash is not None and hashes - {str(config_hash)}:
        out.append(
            f'<p class="warn">Scores were computed under other config hash(es): '
            f"{_e(', '.join(sorted(hashes - {str(config_hash)})))}.</p>"
        )
    # models
    keys = ("dataset", "model", "model_source", "model_revision", "untrained", "encoder",
            "package_version", "config_hash")  # fmt: skip
    out.append("<h3>Models</h3><table><tr>" + "".join(f"<th>{_e(k)}</th>" for k in keys))
    out.append("</tr>")
    for s in items:
        row = []
        for k in keys:
            v = s.attrs.get(k, "")
            if k == "untrained":
                v = baseline_label(s) if is_untrained(s) else "no"
                row.append(f'<td class="{"flag" if is_untrained(s) else ""}">{_e(v)}</td>')
            else:
                row.append(f"<td>{_e(v)}</td>")
        out.append("<tr>" + "".join(row) + "</tr>")
    out.append("</table>")
    # packages
    versions = package_versions()
    given = provenance.get("packages") or provenance.get("package_versions")
    if isinstance(given, Mapping):
        versions = {**versions, **{str(k): str(v) for k, v in given.items()}}
    out.append("<h3>Software</h3><table><tr><th>package</th><th>version</th></tr>")
    out.extend(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in versions.items())
    out.append("</table>")
    # other provenance
    rest = {
        k: v
        for k, v in provenance.items()
        if k not in {"packages", "package_versions", "config_hash"}
    }
    if rest:
        out.append("<h3>Run</h3><table>")
        for k, v in rest.items():
            text = v if isinstance(v, str) else json.dumps(v, indent=1, default=str)
            out.append(f"<tr><th>{_e(k)}</th><td><code>{_e(text)}</code></td></tr>")
        out.append("</table>")
    out.append("<h3>Configuration</h3>")
    out.append(f"<pre>{_e(_dump_config(config))}</pre>")
    return "\n".join(out)


def _dump_config(config: Mapping) -> str:
    try:
        import yaml

        return yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)
    except Exception:  # a config that YAML cannot represent is still shown
        return json.dumps(config, indent=2, default=str)


def _plain(obj):
    """Convert numpy scalars, tuples and paths so that yaml.safe_dump accepts them."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _rsa_html(results: list[xr.Dataset], dpi: int) -> str:
    """Representational similarity: per RSA result, a table, layer profiles and RDMs."""
    from alignment.viz.rsa import plot_best_rdms, plot_rsa_profiles, rsa_table

    out = ['<h2 id="rsa">Representational similarity</h2>']
    out.append(
        '<p class="note">RSA compares representational geometries instead of predicting '
        "voxels: per ROI, the correlation-distance RDM of the subject's trial-averaged patterns "
        "is compared with each layer's RDM (rank correlation unless the config says otherwise). "
        "The noise ceiling comes from the other subjects: its upper bound compares each "
        "subject's RDM with the mean of all subjects, its lower bound with the mean of the "
        "others; a model reaching the lower bound explains what the data allow. The null "
        "relabels the stimuli of the layer RDM.</p>"
    )
    for i, ds in enumerate(results):
        a = ds.attrs
        anchor = _slug("rsa", a.get("dataset", ""), a.get("model", ""), a.get("encoder", ""), i)
        out.append(f'<section class="model" id="{anchor}">')
        badge = (
            f' <span class="badge untrained">{_e(baseline_label(ds).split(" (")[0])}</span>'
            if is_untrained(ds)
            else ""
        )
        out.append(
            f"<h3>{_e(a.get('model', '?'))}{badge} <small>· {_e(a.get('encoder', 'rsa'))} · "
            f"{_e(a.get('dataset', '?'))}</small></h3>"
        )
        n_stim = ds.sizes.get("stimulus_i", 0)
        out.append(
            f'<div class="meta"><span><b>comparison:</b> {_e(a.get("method", "?"))}</span>'
            f"<span><b>distance:</b> {_e(a.get('distance', '?'))}</span>"
            f"<span><b>stimuli:</b> {n_stim}</span>"
            f"<span><b>null:</b> {_e(a.get('null_kind', '?'))}, "
            f"{_e(a.get('n_permutations', '?'))} permutations</span></div>"
        )
        table = rsa_table(ds)
        rows = ["<table><caption>Best layer per ROI (highest RDM correlation).</caption><tr>"]
        heads = ("ROI", "best layer", "RDM r", "p", "null 95th", "ceiling lower",
                 "ceiling upper", "r / lower")  # fmt: skip
        rows.append("".join(f"<th>{h}</th>" for h in heads) + "</tr>")
        for _, row in table.iterrows():
            low = "low" if not row["rdm_r"] > row["null_p95"] else ""
            rows.append(
                f"<tr><td>{_e(row['roi'])}</td><td>{_e(row['best_layer'] or 'n/a')}</td>"
                f'<td class="num {low}">{_num(row["rdm_r"])}</td>'
                f'<td class="num">{_num(row["p"], 4)}</td>'
                f'<td class="num">{_num(row["null_p95"])}</td>'
                f'<td class="num">{_num(row["ceiling_lower"])}</td>'
                f'<td class="num">{_num(row["ceiling_upper"])}</td>'
                f'<td class="num">{_num(row["r_over_lower"])}</td></tr>'
            )
        rows.append("</table>")
        out.append("\n".join(rows))
        figures = (
            (
                plot_rsa_profiles(ds),
                "RSA layer profiles per ROI: correlation between each layer's RDM and the "
                "ROI's RDM (blue), the subject-based noise ceiling from its lower to its upper "
                "bound (yellow band), and the 95th percentile of the stimulus-label "
                "permutation null (dashed). The star marks the best layer.",
            ),
            (
                plot_best_rdms(ds),
                "RDMs of each ROI (top) and of its best layer (bottom), as percentiles of the "
                "correlation distances (1 - r between the patterns of two stimuli), stimuli in "
                "the order of the responses.",
            ),
        )
        for fig, caption in figures:
            out.append(
                f"<figure>{_img(figure_to_base64_png(fig, dpi=dpi), caption)}"
                f"<figcaption>{_e(caption)}</figcaption></figure>"
            )
        out.append("</section>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# gain over ridge, attention overlays (encoders beyond ridge)


def _gain_html(scores: xr.Dataset, others: list[xr.Dataset], dpi: int) -> str:
    """Map and ROI table of an encoder's gain over ridge on the same model's features."""
    from alignment.report.gain import (
        find_baseline,
        gain_over_ceiling,
        gain_table,
        significant_in_either,
    )

    baseline = find_baseline(scores, others)
    if baseline is None:
        return ""
    a, b = scores.attrs, baseline.attrs
    name = f"{a.get('model', '?')} · {a.get('encoder', '?')}"
    base_name = f"{b.get('model', '?')} · {b.get('encoder', '?')}"
    table, gain = gain_table(scores, baseline)
    out = [f'<div class="model"><h3>Gain of {_e(name)} over {_e(base_name)}</h3>']
    heads = ["ROI", "vertices", "layer", "ridge layer", "r", "ridge r", "r/√ceiling",
             "ridge r/√ceiling", "gain in r", "gain in r/√ceiling"]  # fmt: skip
    out.append(
        "<table><caption>Each encoder at each ROI's best layer (as in the ROI tables). "
        "Positive gain: the encoder explains more than ridge on the same model's features."
        "</caption><tr>" + "".join(f"<th>{_e(h)}</th>" for h in heads) + "</tr>"
    )
    for _, row in table.iterrows():
        g = row["gain_r_over_ceiling"]
        cls = "num ok" if np.isfinite(g) and g > 0.05 else ("num bad" if g < -0.05 else "num")
        cells = [
            f"<td>{_e(row['roi'])}</td>",
            f'<td class="num">{int(row["n_voxels"])}</td>',
            f"<td>{_e(row['layer'])}</td>",
            f"<td>{_e(row['baseline_layer'])}</td>",
            *(f'<td class="num">{_num(row[k])}</td>' for k in ("r", "baseline_r")),
            *(
                f'<td class="num">{_num(row[k])}</td>'
                for k in ("r_over_ceiling", "baseline_r_over_ceiling", "gain_r")
            ),
            f'<td class="{cls}">{_num(g)}</td>',
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    if map_kind(scores) is not None:
        ratio_gain = gain_over_ceiling(scores, baseline)
        values = ratio_gain if np.isfinite(ratio_gain).any() else gain
        label = "gain in r/√ceiling" if np.isfinite(ratio_gain).any() else "gain in r"
        alpha = _fdr_alpha(scores, None)
        values = np.where(significant_in_either(scores, baseline, alpha), values, np.nan)
        finite = values[np.isfinite(values)]
        top = float(np.percentile(np.abs(finite), 99)) if finite.size else 1.0
        fig = plot_brain_map(
            values,
            scores,
            title=f"{label}: {name} minus {base_name}",
            cmap="RdBu_r",
            vmin=-max(top, 1e-3),
            vmax=max(top, 1e-3),
            colorbar_label=f"{label} (red: encoder better, blue: ridge better)",
        )
        caption = (
            f"{label} per vertex, each encoder at the best layer of the vertex's ROI; shown "
            f"where either encoder is significant (FDR q < {alpha:g}) and the ceiling is "
            "positive."
        )
        out.append(
            f"<figure>{_img(figure_to_base64_png(fig, dpi=dpi), caption)}"
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    out.append("</div>")
    return "\n".join(out)


def _attention_html(
    scores: xr.Dataset, attention: list[xr.Dataset], dpi: int, n_images: int = 4
) -> str:
    """A few stimuli with the attention of each ROI's query overlaid, for encoders that
    report attention (routing)."""
    from alignment.viz.attention import (
        attention_maps,
        head_attention_maps,
        plot_attention_overlays,
    )

    keys = ("dataset", "model", "encoder", "subject")
    match = [
        ds
        for ds in attention
        if all(str(ds.attrs.get(k)) == str(scores.attrs.get(k)) for k in keys)
    ]
    if not match:
        return ""
    ds = match[0]
    layer = None
    if "layer" in ds.dims:
        r = scores[dims.R].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
        best = str(scores[dims.LAYER].values[int(np.nanargmax(_nanmean(r, axis=1)))])
        layer = best if best in [str(x) for x in ds["layer"].values] else None
    maps = attention_maps(ds, layer)
    # where attention.nc holds per-head maps, show the position-only heads: the heads that
    # say where in the image a query reads (the mean over all heads dilutes them)
    pos_maps, pos_heads = head_attention_maps(ds, layer, position=True, by_norm=True)
    if pos_maps:
        maps = pos_maps
    maps = {k: v for k, v in maps.items() if not k.endswith(" rest")}
    if not maps:
        return ""
    # one map per ROI (its first hemisphere), at most six ROIs
    per_roi = {}
    for label, values in maps.items():
        per_roi.setdefault(label.split(" ", 1)[1], (label, values))
    chosen = dict(list(per_roi.values())[:6])
    n = next(iter(chosen.values())).shape[0]
    rows = np.unique(np.linspace(0, n - 1, min(n_images, n)).round().astype(int))
    ids = (
        [str(x) for x in ds[dims.STIMULUS_ID].values[rows]]
        if dims.STIMULUS_ID in ds.coords
        else [f"image {i}" for i in rows]
    )
    images, note = _stimulus_images(str(scores.attrs.get("stimuli", "")), ids)
    fig = plot_attention_overlays(
        images, {k: v[rows] for k, v in chosen.items()}, labels=ids,
        title=f"attention of ROI queries ({layer or 'last layer'})",
    )  # fmt: skip
    caption = (
        "Cross-attention of each ROI's query over the patch tokens (mean over heads, bilinearly "
        "upsampled; brighter = more attention), for test images of the cross-validation."
    )
    if pos_maps:
        n_heads = ds.sizes.get("head", len(pos_heads))
        caption = caption.replace(
            "mean over heads",
            f"mean over the {len(pos_heads)} position-only heads {pos_heads} of {n_heads}, whose "
            "keys carry only the positional encoding (one map for the test images of a fold), "
            "each head weighted by the norm of what it adds to the query's output; every head's "
            "map, including the content heads that follow the image, is in attention.nc",
        )
    if note:
        caption += " " + note
    return (
        f'<div class="model"><h3>Where the queries look: {_e(scores.attrs.get("model", "?"))} '
        f"· {_e(scores.attrs.get('encoder', '?'))}</h3><figure>"
        f"{_img(figure_to_base64_png(fig, dpi=dpi), caption)}"
        f"<figcaption>{_e(caption)}</figcaption></figure></div>"
    )


def _stimulus_images(table: str, ids: list[str]):
    """The images of ``ids`` from a stimulus table, or Nones and a note when unavailable."""
    if not table:
        return [None] * len(ids), "(stimulus images unavailable: no stimulus table recorded)"
    try:
        from PIL import Image

        from alignment.stimuli.images import read_image_table

        frame = read_image_table(table).set_index("stimulus_id")
        return [Image.open(frame.loc[i, "path"]).convert("RGB") for i in ids], ""
    except Exception as err:  # the report still renders the maps without the images
        return [None] * len(ids), f"(stimulus images unavailable: {err})"


# --------------------------------------------------------------------------------------------
# public


def render_subject_report(
    subject: str,
    scores_list: Iterable[xr.Dataset | str | os.PathLike],
    config: Mapping,
    provenance: Mapping,
    truth: Mapping | None = None,
    *,
    dpi: int = 100,
    attention: Iterable[xr.Dataset] | None = None,
    extra_sections: Iterable[str] = (),
    rsa: Iterable[xr.Dataset | str | os.PathLike] = (),
) -> str:
    """Render the HTML report of one subject.

    Parameters
    ----------
    subject : str
        Subject label (shown as ``sub-<subject>``).
    scores_list : iterable of xarray.Dataset or path
        Scores objects (or netCDF paths), one per (dataset, model, encoder); grouped by the
        attr ``dataset`` in order of first appearance.
    config : mapping
        The run's configuration, shown in full in the provenance section.
    provenance : mapping
        Extra provenance: ``config_hash``, ``packages`` (name -> version, merged over the
        installed versions found here) and any other key, shown as a table.
    truth : mapping, optional
        Planted ground truth of a simulated dataset: ``{dataset: {"rois": {roi: {"layer":
        name or None, "driver": optional text}}, "model": optional model id it applies to}}``
        (other keys are ignored). The ROI tables then show the planted layer next to the
        recovered best layer; a ROI whose layer is None (driven by something else, named by
        ``driver``) gets no verdict.
    dpi : int
        Resolution of the figures.
    attention : iterable of xarray.Dataset, optional
        ``attention.nc`` of encoders that report attention maps (routing), matched to their
        Scores by dataset, model and encoder; a few images are shown with the maps overlaid.

    Every encoder other than ridge that has a ridge fit on the same model source and dataset
    also gets a map and ROI table of its gain over ridge.
    extra_sections : iterable of str
        Further HTML sections (e.g. :func:`alignment.report.incontext.incontext_section`),
        placed before the provenance.
    rsa : iterable of xarray.Dataset or path, optional
        RSA results (``alignment rsa``), shown in a "Representational similarity" section.

    Returns
    -------
    str
        A self-contained HTML document (inline CSS, base64 PNG images, no external URL).
    """
    items = [load_scores(s) for s in scores_list]
    attention = list(attention or [])
    for s in items:
        check_scores(s, (*PROFILE_VARIABLES, dims.Q), what="the subject report")
    datasets: dict[str, list[tuple[xr.Dataset, str]]] = {}
    for i, s in enumerate(items):
        ds_name = str(s.attrs.get("dataset", "dataset"))
        anchor = _slug(ds_name, s.attrs.get("model", "model"), s.attrs.get("encoder", ""), str(i))
        datasets.setdefault(ds_name, []).append((s, anchor))

    title = f"Brain alignment report: sub-{subject}"
    body = [f"<h1>{_e(title)}</h1>"]
    n_models = len({str(s.attrs.get("model")) for s in items})
    body.append(
        f'<p class="sub">{len(datasets)} dataset(s), {n_models} model(s), {len(items)} '
        f"model × encoder fit(s).</p>"
    )
    body.append(f'<div class="howto"><b>How to read this report.</b>{_HOW_TO_READ}</div>')

    toc = ['<div class="toc"><b>Contents</b><ul>']
    for ds_name, entries in datasets.items():
        toc.append(f'<li><a href="#{_slug("dataset", ds_name)}">{_e(ds_name)}</a><ul>')
        for s, anchor in entries:
            label = f"{s.attrs.get('model', '?')} · {s.attrs.get('encoder', '?')}"
            if is_untrained(s):
                label += f" ({baseline_label(s).split(' (')[0]})"
            toc.append(f'<li><a href="#{anchor}">{_e(label)}</a></li>')
        toc.append("</ul></li>")
    rsa_items = [load_scores(r) for r in rsa]
    if rsa_items:
        toc.append('<li><a href="#rsa">Representational similarity</a></li>')
    toc.append('<li><a href="#provenance">Provenance</a></li></ul></div>')
    body.extend(toc)

    for ds_name, entries in datasets.items():
        first = entries[0][0]
        a = first.attrs
        n_vox = first.sizes[dims.VOXEL]
        n_roi = {k: int(m.sum()) for k, m in roi_groups(first).items()}
        roi_text = ", ".join(f"{k} ({v})" for k, v in n_roi.items())
        body.append(f'<h2 id="{_slug("dataset", ds_name)}">Dataset: {_e(ds_name)}</h2>')
        body.append(
            f'<p class="meta"><span><b>stimuli:</b> {_e(a.get("kind", "?"))}</span>'
            f"<span><b>space:</b> {_e(a.get('space', '?'))}</span>"
            f"<span><b>vertices:</b> {n_vox}</span></p>"
            f'<p class="meta"><b>ROIs (vertices):</b> {_e(roi_text)}</p>'
        )
        body.append(_overview_html(entries, truth))
        for s, anchor in entries:
            body.append(_model_section(s, anchor, truth, dpi))
            body.append(banded_section(s, dpi))  # per-space R² of banded ridge (else empty)
            body.append(_gain_html(s, [e for e, _ in entries], dpi))
            body.append(_attention_html(s, attention, dpi))

    extra_sections = [x for x in extra_sections if x]
    body.extend(extra_sections)
    if rsa_items:
        body.append(_rsa_html(rsa_items, dpi))
    body.append(_provenance_html(items, config, provenance))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_subject_report(
    path: str | os.PathLike,
    subject: str,
    scores_list: Iterable[xr.Dataset | str | os.PathLike],
    config: Mapping,
    provenance: Mapping,
    truth: Mapping | None = None,
    *,
    dpi: int = 100,
    attention: Iterable[xr.Dataset] | None = None,
    extra_sections: Iterable[str] = (),
    rsa: Iterable[xr.Dataset | str | os.PathLike] = (),
) -> Path:
    """Render the report (see :func:`render_subject_report`) and write it atomically."""
    text = render_subject_report(
        subject,
        scores_list,
        config,
        provenance,
        truth,
        dpi=dpi,
        attention=attention,
        extra_sections=extra_sections,
        rsa=rsa,
    )
    write_text(path, text)
    return Path(path)
