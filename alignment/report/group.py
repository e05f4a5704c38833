"""Group report of one dataset: layer profiles, tests and brain maps across subjects.

``results/group/<dataset>/report.html`` answers the study's question from all subjects at
once: which layer wins in each ROI (and how consistently), whether it is above chance at the
group level, whether each model beats its untrained and random-feature controls, and where on
the cortex (group maps for surface data). Like the subject report it is one self-contained
HTML file (inline CSS, base64 PNG figures, no script).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from alignment import dims
from alignment.io import read_netcdf, write_text
from alignment.metrics.group import group_test, loso_selected, min_attainable_p
from alignment.metrics.stats import fdr_bh
from alignment.report.html import _CSS, _dump_config, _e, _img, _num, _slug, package_versions
from alignment.report.study import (
    _FIT,
    _cube,
    _delta,
    _spec,
    baseline_pairs,
    best_layer_stats,
    group_layer_stats,
    index_scores,
    paired_differences,
    roi_scores,
)
from alignment.viz import brainmaps
from alignment.viz.brainmaps import figure_to_base64_png, plot_brain_map
from alignment.viz.group import (
    plot_best_layer_counts,
    plot_group_profiles,
    plot_paired_differences,
    plot_region_chart,
)

__all__ = ["group_maps", "render_group_report", "write_group_report"]

_EXTRA_CSS = """
.figs { display: flex; flex-wrap: wrap; gap: 12px; }
.figs figure { flex: 1 1 560px; max-width: 640px; margin: 0; }
td.sig { background: #d9f0d3; font-weight: 600; }
.badge.control { background: #b2182b; color: white; }
"""

_HOW_TO_READ = """
<dl>
<dt>Unit of analysis</dt><dd>Each subject contributes one number per ROI and layer: the mean
over the ROI's vertices of the cross-validated r minus the mean of its own null (r − null).
The group statistics are computed across subjects, so they generalise to new subjects
(random effects) rather than to new stimuli of these subjects.</dd>
<dt>Group test</dt><dd>{test_text} FDR (Benjamini&ndash;Hochberg) over all ROIs &times;
layers of a model; filled dots in the profiles are layers with q &lt; {alpha:g}.</dd>
<dt>Best layer</dt><dd>The layer with the highest group mean of r − null; the count of subjects
whose own best layer it is, and a bootstrap 95% interval (resampling subjects) of the group's
best layer.</dd>
<dt>Model vs baseline</dt><dd>Paired across subjects: each subject's r − null of the model
minus that of its untrained network or random-feature control, each taken at the layer that is
best on the <em>other</em> subjects (so neither profits from choosing its layer on the data it
is judged on).</dd>
<dt>Noise ceiling</dt><dd>Orange band: the range over subjects of the ROI mean of
&radic;ceiling, the highest mean r the noise in the data allows.</dd>
</dl>
"""


def _figure(fig, caption: str, dpi: int) -> str:
    return (
        f"<figure>{_img(figure_to_base64_png(fig, dpi=dpi), caption)}"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _badge(baseline: str) -> str:
    if baseline == "control":
        return ' <span class="badge untrained">RANDOM-FEATURE CONTROL</span>'
    if baseline == "untrained":
        return ' <span class="badge untrained">UNTRAINED</span>'
    return ""


def _planted(truth: Mapping | None, dataset: str, model: str) -> dict[str, str] | None:
    if not truth:
        return None
    entry = truth.get(dataset)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("rois"), Mapping):
        return None
    if entry.get("model") is not None and str(entry["model"]) != model:
        return None
    out = {}
    for roi, spec in entry["rois"].items():
        layer = spec.get("layer") if isinstance(spec, Mapping) else spec
        if layer is not None:
            out[str(roi)] = str(layer)
    return out


#: Attrs a map needs to be drawn (space, surface mesh, volume grid, background).
_MAP_ATTRS = ("space", "mesh", "affine", "grid_shape", "anat")


def _common_space_coords(scores: xr.Dataset) -> list[str] | None:
    """The voxel coordinates that identify a location across subjects, or None when the
    Scores are not in a common space (surfaces: hemi and vertex; MNI152 volumes: i, j, k)."""
    kind = brainmaps.map_kind(scores)
    if kind == "surface":
        return [dims.HEMI, dims.VERTEX]
    if kind == "volume" and str(scores.attrs.get("space")) == "MNI152":
        return ["i", "j", "k"]
    return None


def group_maps(items: Iterable, group: Mapping | None = None) -> xr.Dataset | None:
    """Vertex-wise group statistics of one fit on the vertices every subject has.

    Parameters
    ----------
    items : iterable of Scores (objects or paths)
        One fit (model, encoder) of every subject, in a common space: a surface (``hemi``,
        ``vertex``) or an MNI152 volume (``i, j, k`` with an affine); subjects are aligned on
        those coordinates and the locations every subject has are kept.
    group : mapping, optional
        The ``group`` config section (test, n_permutations, alpha, random_state).

    Returns
    -------
    xarray.Dataset or None
        (layer, voxel) ``r`` (mean over subjects), ``delta`` (mean r − null mean), ``p``
        (test across subjects of delta > 0), ``q`` (FDR over layers × locations), with the
        location coordinates and the map attrs (space, mesh, affine...) and ``n_subjects``.
        None when the Scores are not in a common space.
    """
    spec = _spec(group)
    keys, r_list, d_list, names, attrs, by = None, [], [], None, {}, None
    for item in items:
        s = item if isinstance(item, xr.Dataset) else read_netcdf(item)
        by = _common_space_coords(s)
        if by is None:
            return None
        s = brainmaps._sorted_by_layer(s)
        attrs = {k: s.attrs[k] for k in _MAP_ATTRS if k in s.attrs}
        index = pd.MultiIndex.from_arrays([np.asarray(s[c].values) for c in by], names=by)
        r = s[dims.R].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
        null = (
            s[dims.R_NULL_MEAN].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
            if dims.R_NULL_MEAN in s
            else np.zeros_like(r)
        )
        names = [str(x) for x in s[dims.LAYER].values]
        frame_r = pd.DataFrame(r.T, index=index)
        frame_d = pd.DataFrame((r - np.nan_to_num(null)).T, index=index)
        keys = index if keys is None else keys.intersection(index, sort=False)
        r_list.append(frame_r)
        d_list.append(frame_d)
    if keys is None or not len(keys):
        return None
    r = np.stack([f.loc[keys].to_numpy().T for f in r_list])  # (subjects, layers, voxels)
    d = np.stack([f.loc[keys].to_numpy().T for f in d_list])
    res = group_test(
        d,
        test=spec["test"],
        n_permutations=int(spec["n_permutations"]),
        random_state=spec["random_state"],
    )
    q = fdr_bh(res.p)
    location = {c: (dims.VOXEL, np.asarray(keys.get_level_values(c))) for c in by}
    return xr.Dataset(
        {
            dims.R: ((dims.LAYER, dims.VOXEL), np.nanmean(r, axis=0)),
            "delta": ((dims.LAYER, dims.VOXEL), res.mean),
            dims.P: ((dims.LAYER, dims.VOXEL), res.p),
            dims.Q: ((dims.LAYER, dims.VOXEL), q),
        },
        coords={
            dims.LAYER: names,
            "layer_index": (dims.LAYER, np.arange(len(names))),
            **location,
        },
        attrs={**attrs, "n_subjects": len(r_list), "fdr_alpha": spec["alpha"]},
    )


def _maps_html(maps: xr.Dataset, label: str, alpha: float, dpi: int) -> str:
    names = [str(x) for x in maps[dims.LAYER].values]
    d = maps["delta"].values
    q = maps[dims.Q].values
    finite = np.isfinite(d)
    best = np.argmax(np.where(finite, d, -np.inf), axis=0)
    sig_any = (q < alpha).any(axis=0) & finite.any(axis=0)
    cols = np.arange(d.shape[1])
    sig_best = (q[best, cols] < alpha) & sig_any
    n = int(maps.attrs["n_subjects"])
    out = ['<div class="figs">']
    fig = plot_brain_map(
        np.where(sig_any, best.astype(float), np.nan),
        maps,
        title=f"Group best layer per vertex (q < {alpha:g} in some layer), n = {n}\n{label}",
        categorical_labels=dict(enumerate(names)),
        colorbar_label="layer with the highest group mean r − null",
    )
    out.append(
        _figure(
            fig,
            f"Group best layer per vertex: the layer with the highest mean over {n} subjects of "
            f"r − null, where the group test passes FDR q < {alpha:g} in at least one layer "
            f"({int(sig_any.sum())} of {sig_any.size} vertices).",
            dpi,
        )
    )
    r_best = maps[dims.R].values[best, cols]
    shown = np.where(sig_best, r_best, np.nan)
    top = float(np.nanpercentile(shown, 99)) if sig_best.any() else 1.0
    fig = plot_brain_map(
        shown,
        maps,
        title=f"Group mean r at each vertex's best layer, q < {alpha:g}, n = {n}\n{label}",
        cmap="inferno",
        vmin=0.0,
        vmax=max(top, 1e-3),
        colorbar_label="mean cross-validated r over subjects",
    )
    out.append(
        _figure(
            fig,
            f"Mean r over {n} subjects at each vertex's group best layer, shown where the group "
            f"test at that layer passes FDR q < {alpha:g} ({int(sig_best.sum())} vertices).",
            dpi,
        )
    )
    out.append("</div>")
    return "\n".join(out)


def _stats_table(stats: pd.DataFrame, alpha: float) -> str:
    layers = stats.sort_values("layer_index")["layer"].drop_duplicates().tolist()
    out = [
        "<table>",
        "<caption>Group mean of r − null per ROI and layer (q of the group test "
        f"in small print; green: q &lt; {alpha:g}).</caption>",
    ]
    out.append("<tr><th>ROI</th>" + "".join(f"<th>{_e(x)}</th>" for x in layers) + "</tr>")
    for roi, frame in stats.groupby("roi", sort=False):
        frame = frame.set_index("layer")
        cells = [f"<td>{_e(roi)}</td>"]
        for layer in layers:
            row = frame.loc[layer]
            cls = "num sig" if row["significant"] else "num"
            cells.append(
                f'<td class="{cls}">{_num(row["delta"])}<br><span class="note">q '
                f"{_num(row['q'], 3)}</span></td>"
            )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _best_table(best: pd.DataFrame, stats: pd.DataFrame, planted, alpha: float) -> str:
    heads = [
        "ROI",
        "best layer",
        "subjects best there",
        "bootstrap 95% interval",
        "peak relative depth",
        "mean r",
        "mean r − null",
        "q at best",
        f"subjects with ROI p &lt; {alpha:g}",
    ]
    if planted is not None:
        heads += ["planted", "recovered"]
    out = ["<table>", "<caption>Best layer across subjects.</caption>"]
    out.append("<tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>")
    for row in best.itertuples(index=False):
        if row.best_layer is None:
            out.append(f"<tr><td>{_e(row.roi)}</td><td colspan=8>no finite r</td></tr>")
            continue
        q = stats[(stats.roi == row.roi) & (stats.layer == row.best_layer)]["q"].iloc[0]
        interval = (
            row.ci_low_layer
            if row.ci_low_layer == row.ci_high_layer
            else f"{row.ci_low_layer} – {row.ci_high_layer}"
        )
        cells = [
            f"<td>{_e(row.roi)}</td>",
            f"<td>{_e(row.best_layer)}</td>",
            f'<td class="num">{row.n_best}/{row.n_subjects}</td>',
            f"<td>{_e(interval)}</td>",
            f'<td class="num">{_num(row.peak_depth, 2)} [{_num(row.peak_depth_ci_low, 2)}, '
            f"{_num(row.peak_depth_ci_high, 2)}]</td>",
            f'<td class="num">{_num(row.r)}</td>',
            f'<td class="num">{_num(row.delta)}</td>',
            f'<td class="{"num sig" if q < alpha else "num"}">{_num(q)}</td>',
            f'<td class="num">{row.n_subject_significant}/{row.n_subjects}</td>',
        ]
        if planted is not None:
            want = planted.get(row.roi)
            if want is None:
                cells.append('<td class="low">not planted</td><td class="low"></td>')
            else:
                ok = want == row.best_layer
                cells.append(
                    f'<td>{_e(want)}</td><td class="{"ok" if ok else "bad"}">'
                    f"{'yes' if ok else 'no'}</td>"
                )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _paired_table(diffs: pd.DataFrame, caption: str, a: str, b: str, diff: str) -> str:
    """Paired differences across subjects (``paired_differences`` rows), one per pair and ROI;
    ``a``, ``b`` and ``diff`` name the two sides and their difference in the header."""
    heads = [a, b, "encoder", "ROI", "subjects", f"{a} r − null", f"{b} r − null",
             f"{diff} [95% CI]", "p", "q"]  # fmt: skip
    out = [f"<table><caption>{_e(caption)}</caption>"]
    out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in heads) + "</tr>")
    for row in diffs.itertuples(index=False):
        cls = "num sig" if row.significant else "num"
        out.append(
            f"<tr><td>{_e(row.model_a)} <span class='note'>({_e(row.layer_a)})</span></td>"
            f"<td>{_e(row.model_b)} <span class='note'>({_e(row.layer_b)})</span></td>"
            f"<td>{_e(row.encoder)}</td><td>{_e(row.roi)}</td>"
            f'<td class="num">{row.n_subjects}</td><td class="num">{_num(row.a)}</td>'
            f'<td class="num">{_num(row.b)}</td>'
            f'<td class="num">{_num(row.diff)} [{_num(row.ci_low)}, {_num(row.ci_high)}]</td>'
            f'<td class="num">{_num(row.p)}</td><td class="{cls}">{_num(row.q)}</td></tr>'
        )
    out.append("</table>")
    return "\n".join(out)


def region_selection(table: pd.DataFrame, stats_spec: Mapping | None = None) -> pd.DataFrame:
    """Per fit and ROI: each subject's r − null at the layer best on the other subjects.

    Returns rows with ``fit``, ``roi``, ``baseline``, ``mean``, ``ci_low``, ``ci_high``, ``p``
    (test across subjects), ``q`` (FDR over fits × ROIs), ``significant`` and ``values``.
    """
    spec = _spec(stats_spec)
    rows = []
    for key, frame in table.groupby(_FIT, sort=False):
        cube, _subjects, rois, _layers = _cube(frame, _delta(frame))
        for i, roi in enumerate(rois):
            values, _ = loso_selected(cube[:, i, :])
            res = group_test(
                values[:, None],
                test=spec["test"],
                n_permutations=int(spec["n_permutations"]),
                random_state=spec["random_state"],
            )
            rows.append(
                {
                    "fit": f"{key[1]} · {key[2]}",
                    "roi": roi,
                    "baseline": frame["baseline"].iloc[0],
                    "mean": res.mean[0],
                    "ci_low": res.ci_low[0],
                    "ci_high": res.ci_high[0],
                    "p": res.p[0],
                    "values": values.tolist(),
                }
            )
    out = pd.DataFrame(rows)
    if len(out):
        out["q"] = fdr_bh(out["p"].to_numpy(float))
        out["significant"] = (out["q"] < spec["alpha"]).astype(object)
    return out


def _test_text(spec: Mapping, n_subjects: int) -> str:
    if spec["test"] == "t-test":
        return (
            "One-sided one-sample t-test across subjects of r − null against 0 (asked for in "
            "config <code>group.test</code>)."
        )
    exact = 2**n_subjects <= int(spec["n_permutations"])
    how = (
        f"all {2**n_subjects} sign patterns (exact)"
        if exact
        else f"{int(spec['n_permutations'])} random sign patterns"
    )
    return (
        f"Sign-flip permutation test across subjects of r − null (one-sided, {how}): under "
        "the null hypothesis each subject's r − null is symmetric around 0."
    )


def render_group_report(
    dataset: str,
    scores_list: Iterable,
    group: Mapping | None = None,
    *,
    config: Mapping | None = None,
    truth: Mapping | None = None,
    subject_reports: Mapping[str, str] | None = None,
    dpi: int = 90,
) -> tuple[str, pd.DataFrame]:
    """Render the group report of one dataset.

    Parameters
    ----------
    dataset : str
        Dataset name (title; Scores of other datasets are ignored).
    scores_list : iterable of xarray.Dataset or path
        Scores of every subject, model and encoder of the dataset (paths are read one fit at a
        time, so memory holds one model's subjects at most).
    group : mapping, optional
        The ``group`` config section: ``test`` ("sign-flip" or "t-test"), ``n_permutations``,
        ``n_bootstrap``, ``alpha``, ``random_state``.
    config : mapping, optional
        The run's config: ``models`` gives model families (baseline pairing) and the whole is
        shown as provenance.
    truth : mapping, optional
        Planted truth of a simulation (see :func:`alignment.report.render_subject_report`).
    subject_reports : mapping, optional
        Subject -> link (relative URL) of the per-subject report.
    dpi : int
        Resolution of the figures.

    Returns
    -------
    html : str
        A self-contained HTML document.
    stats : pandas.DataFrame
        :func:`~alignment.report.study.group_layer_stats` of the dataset.
    """
    config = dict(config or {})
    fits = [f for f in index_scores(scores_list) if f.dataset == dataset]
    first = fits[0].attrs if fits else {}
    alpha_attr = first.get("fdr_alpha")
    spec = _spec(
        {**({"alpha": float(alpha_attr)} if alpha_attr is not None else {}), **(group or {})}
    )
    alpha = float(spec["alpha"])

    frames, maps = [], {}
    space = str(first.get("space", ""))
    draw_maps = False
    for fit in fits:
        loaded = [s if isinstance(s, xr.Dataset) else read_netcdf(s) for s in fit.items]
        frames.extend(roi_scores(s) for s in loaded)
        draw_maps = draw_maps or _common_space_coords(loaded[0]) is not None
        if _common_space_coords(loaded[0]) is not None and len(loaded) >= 2:
            result = group_maps(loaded, spec)
            if result is not None:
                maps[fit.key] = result
        del loaded
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    subjects = sorted(set(table["subject"])) if len(table) else []
    n = len(subjects)
    stats = group_layer_stats(table, spec) if len(table) else pd.DataFrame()
    best = best_layer_stats(table, spec) if len(table) else pd.DataFrame()
    pairs = baseline_pairs(table, config.get("models")) if len(table) else []
    diffs = paired_differences(table, pairs, spec) if pairs else pd.DataFrame()
    regions = region_selection(table, spec) if len(table) else pd.DataFrame()

    title = f"Group report: {dataset}"
    body = [f"<h1>{_e(title)}</h1>"]
    body.append(
        f'<p class="sub">{n} subject(s), {len({f.model for f in fits})} model(s), '
        f"{len(fits)} model × encoder fit(s); space {_e(space or '?')}.</p>"
    )
    floor = min_attainable_p(n, spec["test"])
    if floor > alpha:
        body.append(
            f'<p class="warn">With {n} subjects the sign-flip test cannot give p below '
            f"{floor:.3g} &gt; {alpha:g}: nothing can pass it. Add subjects (at least 5), or ask "
            "for a t-test (<code>group: {test: t-test}</code>), which assumes normality.</p>"
        )
    how = _HOW_TO_READ.format(test_text=_test_text(spec, n), alpha=alpha)
    body.append(f'<div class="howto"><b>How to read this report.</b>{how}</div>')

    toc = ['<div class="toc"><b>Contents</b><ul><li><a href="#answer">Answer</a></li>']
    toc += [
        f'<li><a href="#{_slug("fit", f.model, f.encoder)}">{_e(f.label)}</a>'
        f"{_badge(f.baseline)}</li>"
        for f in fits
    ]
    toc.append('<li><a href="#baselines">Models against baselines</a></li>')
    toc.append('<li><a href="#subjects">Per-subject reports</a></li>')
    toc.append('<li><a href="#provenance">Provenance</a></li></ul></div>')
    body.extend(toc)

    # the answer first: best layer per ROI for every fit
    body.append('<h2 id="answer">Answer: best layer per ROI across subjects</h2>')
    if len(best):
        rois = list(dict.fromkeys(best["roi"]))
        any_planted = None
        out = [
            "<table>",
            "<caption>Group best layer (subjects best there), mean r and the "
            f"group q at that layer; green: q &lt; {alpha:g}.</caption>",
        ]
        out.append("<tr><th>model · encoder</th>" + "".join(f"<th>{_e(r)}</th>" for r in rois))
        out.append("</tr>")
        for fit in fits:
            fb = best[(best.model == fit.model) & (best.encoder == fit.encoder)].set_index("roi")
            if fit.baseline != "control":
                any_planted = any_planted or _planted(truth, dataset, fit.model)
            cells = [
                f'<td><a href="#{_slug("fit", fit.model, fit.encoder)}">{_e(fit.label)}'
                f"</a>{_badge(fit.baseline)}</td>"
            ]
            for roi in rois:
                if roi not in fb.index or fb.loc[roi, "best_layer"] is None:
                    cells.append('<td class="low">n/a</td>')
                    continue
                row = fb.loc[roi]
                st = stats[
                    (stats.model == fit.model)
                    & (stats.encoder == fit.encoder)
                    & (stats.roi == roi)
                    & (stats.layer == row["best_layer"])
                ]
                q = float(st["q"].iloc[0])
                cls = "sig" if q < alpha else "low"
                cells.append(
                    f'<td class="{cls}">{_e(row["best_layer"])} ({row["n_best"]}/'
                    f'{row["n_subjects"]})<br><span class="note">r {_num(row["r"])} · q '
                    f"{_num(q)}</span></td>"
                )
            out.append("<tr>" + "".join(cells) + "</tr>")
        if any_planted:
            out.append(
                "<tr><td><b>planted (demo ground truth)</b></td>"
                + "".join(f"<td><b>{_e(any_planted.get(r, '—'))}</b></td>" for r in rois)
                + "</tr>"
            )
        out.append("</table>")
        body.extend(out)
        if len(regions):
            fig = plot_region_chart(regions, f"{dataset}: r − null per ROI, n = {n}", alpha)
            body.append(
                _figure(
                    fig,
                    "Per-region chart: for every model, the mean over subjects of r − null at "
                    "the layer that is best on the other subjects (leave-one-subject-out), with "
                    "its 95% CI; dots are subjects; * marks a group test with q < "
                    f"{alpha:g} (FDR over models × ROIs); red bars are random-feature controls.",
                    dpi,
                )
            )

    for fit in fits:
        fs = stats[(stats.model == fit.model) & (stats.encoder == fit.encoder)]
        fb = best[(best.model == fit.model) & (best.encoder == fit.encoder)]
        ft = table[(table.model == fit.model) & (table.encoder == fit.encoder)]
        planted = None if fit.baseline == "control" else _planted(truth, dataset, fit.model)
        cls = "model untrained" if fit.baseline else "model"
        body.append(f'<section class="{cls}" id="{_slug("fit", fit.model, fit.encoder)}">')
        body.append(
            f"<h3>{_e(fit.model)}{_badge(fit.baseline)} <small>· {_e(fit.encoder)}</small></h3>"
        )
        body.append(
            f'<div class="meta"><span><b>subjects:</b> {len(fit.subjects)}</span>'
            f"<span><b>null:</b> {_e(fit.attrs.get('null_kind', '?'))}</span>"
            f"<span><b>test:</b> {_e(spec['test'])}</span>"
            f"<span><b>FDR:</b> q &lt; {alpha:g} over ROIs × layers</span></div>"
        )
        body.append(_best_table(fb, fs, planted, alpha))
        label = f"{fit.label} · {dataset}"
        fig = plot_group_profiles(
            fs, ft, fb, f"Group layer profiles: {label}, n = {len(fit.subjects)}", planted, alpha
        )
        body.append(
            _figure(
                fig,
                "Group layer profiles per ROI: mean r over subjects (thick line) with its 95% "
                "CI (band); each subject a faint line; dashed grey: mean null 95th percentile; "
                "orange band: noise ceiling (range over subjects of the ROI-mean √ceiling). "
                f"Filled dots: group test q < {alpha:g} (FDR over ROIs × layers); star: best "
                "layer" + ("; green dotted line: planted layer." if planted else "."),
                dpi,
            )
        )
        if len(fb) and len(fb["layers"].iloc[0]) > 1:
            fig = plot_best_layer_counts(fb, f"Best-layer consistency: {label}")
            body.append(
                _figure(
                    fig,
                    "Best-layer consistency: for each ROI, how many subjects have their highest "
                    "r − null at each layer; star: the group's best layer; orange bar: its "
                    "bootstrap 95% interval (resampling subjects).",
                    dpi,
                )
            )
        body.append(_stats_table(fs, alpha))
        if fit.key in maps:
            body.append(_maps_html(maps[fit.key], label, alpha, dpi))
        elif draw_maps:
            body.append('<p class="note">No group maps: they need at least 2 subjects.</p>')
        else:
            body.append(
                f'<p class="note">No group maps: space {_e(space or "?")} is not a '
                "surface space the maps support; see the per-region chart.</p>"
            )
        body.append("</section>")

    body.append('<h2 id="baselines">Models against baselines</h2>')
    if len(diffs):
        body.append(
            _paired_table(
                diffs,
                "Model minus baseline, paired across subjects (one-sided: the model scores "
                "higher).",
                "model",
                "baseline",
                "difference",
            )
        )
        fig = plot_paired_differences(diffs, f"{dataset}: model − baseline, n = {n}")
        body.append(
            _figure(
                fig,
                "Model minus baseline per ROI: mean over subjects of the paired difference of "
                "r − null (each model at the layer best on the other subjects) with its 95% "
                f"CI; dots are subjects; green bars and *: q < {alpha:g} (FDR over pairs × ROIs).",
                dpi,
            )
        )
    else:
        body.append(
            '<p class="note">No model has an untrained or random-feature control in '
            "this dataset with the same encoder.</p>"
        )

    body.append('<h2 id="subjects">Per-subject reports</h2><ul>')
    for s in subjects:
        link = (subject_reports or {}).get(s)
        body.append(
            f'<li><a href="{_e(link)}">sub-{_e(s)}</a></li>' if link else f"<li>sub-{_e(s)}</li>"
        )
    body.append("</ul>")

    body.append('<h2 id="provenance">Provenance</h2>')
    hashes = sorted({str(f.attrs.get("config_hash")) for f in fits if "config_hash" in f.attrs})
    body.append(f"<p><b>config hash(es):</b> <code>{_e(', '.join(hashes) or 'n/a')}</code></p>")
    body.append("<table><tr><th>package</th><th>version</th></tr>")
    body.extend(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in package_versions().items())
    body.append("</table>")
    body.append(f"<h3>Group statistics</h3><pre>{_e(_dump_config(spec))}</pre>")
    if config:
        body.append(f"<h3>Configuration</h3><pre>{_e(_dump_config(config))}</pre>")
    html = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}{_EXTRA_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    return html, stats


def write_group_report(
    path: str | os.PathLike,
    dataset: str,
    scores_list: Iterable,
    group: Mapping | None = None,
    *,
    stats_out: str | os.PathLike | None = None,
    **kwargs,
) -> Path:
    """Render (see :func:`render_group_report`) and write atomically; optionally the group
    statistics as CSV (``stats_out``)."""
    html, stats = render_group_report(dataset, scores_list, group, **kwargs)
    write_text(path, html)
    if stats_out is not None:
        write_text(stats_out, stats.to_csv(index=False, float_format="%.6g"))
    return Path(path)
