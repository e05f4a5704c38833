"""Comparison report of one dataset: every model on one relative-depth axis.

``results/compare/<dataset>/report.html`` puts models of different depth side by side
(0 = input, 1 = last layer), gives each model's peak score and peak depth per ROI against its
properties (from the model spec: ``params``, ``family``, ``instruction_tuned``, ``trained``;
measured: layers scored and feature width), and tests the model pairs that config
``compare: [[a, b]]`` lists across subjects. ``comparison.csv`` beside it holds the tidy
per-subject table (:data:`alignment.report.study.COMPARISON_COLUMNS`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from alignment.report.group import _EXTRA_CSS, _badge, _figure, _paired_table
from alignment.report.html import _CSS, _dump_config, _e, _num, package_versions
from alignment.report.study import (
    _spec,
    config_pairs,
    group_layer_stats,
    model_peaks,
    paired_differences,
    study_table,
    write_comparison_csv,
)
from alignment.viz.group import plot_depth_profiles, plot_paired_differences, plot_peak_scatter

__all__ = ["feature_widths", "render_compare_report", "write_compare_report"]


def feature_widths(stores: Iterable[str | os.PathLike]) -> dict[str, int]:
    """Model name -> units of the last layer, read from features stores (shapes only)."""
    import zarr

    from alignment.io import read_zarr_attrs

    out = {}
    for store in stores:
        attrs = read_zarr_attrs(store)
        layers = list(attrs.get("layers", []))
        if not layers:
            continue
        array = zarr.open_group(str(store), mode="r")[layers[-1]]["features"]
        out[str(attrs.get("model", Path(store).stem))] = int(array.shape[-1])
    return out


def _peaks_table(peaks: pd.DataFrame) -> str:
    heads = [
        "model · encoder",
        "family",
        "params",
        "instruction-tuned",
        "trained",
        "layers",
        "width",
        "peak layer",
        "peak mean r",
        "peak r − null",
        "peak relative depth [95% CI]",
        "subjects best at peak",
    ]
    out = []
    for roi, frame in peaks.groupby("roi", sort=False):
        out.append(
            f"<table><caption>{_e(roi)}: peak of each model (group mean over subjects).</caption>"
        )
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in heads) + "</tr>")
        for row in frame.sort_values("r", ascending=False).itertuples(index=False):
            params = f"{float(row.params):.3g}" if pd.notna(row.params) else "—"
            family = row.family if isinstance(row.family, str) else "—"
            out.append(
                f"<tr><td>{_e(row.model)} · {_e(row.encoder)}{_badge(row.baseline)}</td>"
                f"<td>{_e(family)}</td><td class='num'>{params}</td>"
                f"<td>{_e({True: 'yes', False: 'no'}.get(row.instruction_tuned, '—'))}</td>"
                f"<td>{'yes' if row.trained else 'no'}</td>"
                f"<td class='num'>{row.n_layers}</td>"
                f"<td class='num'>{_e(int(row.width) if pd.notna(row.width) else '—')}</td>"
                f"<td>{_e(row.best_layer)}</td><td class='num'>{_num(row.r)}</td>"
                f"<td class='num'>{_num(row.delta)}</td>"
                f"<td class='num'>{_num(row.peak_depth, 2)} [{_num(row.peak_depth_ci_low, 2)}, "
                f"{_num(row.peak_depth_ci_high, 2)}]</td>"
                f"<td class='num'>{row.n_best}/{row.n_subjects}</td></tr>"
            )
        out.append("</table>")
    return "\n".join(out)


def render_compare_report(
    dataset: str,
    table: pd.DataFrame,
    group: Mapping | None = None,
    *,
    models: Mapping | None = None,
    compare: Iterable | None = None,
    widths: Mapping | None = None,
    csv_href: str | None = "comparison.csv",
    config: Mapping | None = None,
    dpi: int = 90,
) -> str:
    """Render the comparison report of one dataset from its :func:`study_table`.

    Parameters
    ----------
    dataset : str
        Dataset name; other datasets' rows are ignored.
    table : pandas.DataFrame
        :func:`~alignment.report.study.study_table` rows.
    group : mapping, optional
        The ``group`` config section (test, n_permutations, n_bootstrap, alpha, random_state).
    models : mapping, optional
        The ``models`` config section (properties ``params``, ``family``,
        ``instruction_tuned``, ``trained``).
    compare : iterable of [a, b], optional
        Model pairs to test (config ``compare``).
    widths : mapping, optional
        Model -> feature width (:func:`feature_widths`).
    csv_href : str, optional
        Link to the tidy table.
    config : mapping, optional
        The run's config, shown as provenance.
    dpi : int
        Resolution of the figures.
    """
    table = table[table["dataset"] == dataset]
    spec = _spec(group)
    alpha = float(spec["alpha"])
    stats = group_layer_stats(table, spec)
    peaks = model_peaks(table, spec, models, widths)
    pairs, notes = config_pairs(table, compare)
    diffs = paired_differences(table, pairs, spec, alternative="two-sided") if pairs else None
    n = table["subject"].nunique()
    fits = table.drop_duplicates(["model", "encoder"])
    title = f"Model comparison: {dataset}"
    body = [f"<h1>{_e(title)}</h1>"]
    body.append(f'<p class="sub">{len(fits)} model × encoder fit(s), {n} subject(s).</p>')
    body.append(
        '<div class="howto"><b>How to read this report.</b><p>Every model is put on one axis, '
        "its relative depth (0 = input, 1 = last layer; from the features' "
        "<code>relative_depth</code> when they record it, else the layer's position among the "
        "scored layers), so models of different depth compare. The peak relative depth is "
        "refined between layers by a parabola through the best layer and its neighbours; its "
        "interval resamples subjects. Scores are group means over subjects; differences "
        "between models are tested across subjects, each model at the layer best on the other "
        "subjects.</p></div>"
    )
    if csv_href:
        body.append(
            f'<p>Tidy table of every subject, model, layer and ROI: <a href="'
            f'{_e(csv_href)}">{_e(csv_href)}</a>.</p>'
        )
    body.append("<h2>All models on one depth axis</h2>")
    body.append(
        _figure(
            plot_depth_profiles(stats, peaks, f"{dataset}: mean r against relative depth, n = {n}"),
            "Layer profiles of every model on the relative-depth axis: mean r over subjects "
            "with its 95% CI; triangles mark each model's peak depth (refined between layers); "
            "red dashed lines are untrained or random-feature baselines (dotted: single layer).",
            dpi,
        )
    )
    body.append("<h2>Peak score and depth against model properties</h2>")
    body.append(
        _figure(
            plot_peak_scatter(peaks, f"{dataset}: peak per model"),
            "Peak mean r (left) and peak relative depth with its bootstrap 95% interval "
            "(right) of every model against its parameter count (log scale; the number of "
            "scored layers when the model specs give no params). Colour: family; open "
            "circles: instruction-tuned; grey lines link a base model to its instruction-tuned "
            "twin; red squares: baselines.",
            dpi,
        )
    )
    body.append(_peaks_table(peaks))
    body.append("<h2>Pairwise model differences</h2>")
    if diffs is not None and len(diffs):
        body.append(
            _paired_table(
                diffs,
                "Pairwise differences (two-sided), paired across subjects.",
                "a",
                "b",
                "a − b",
            )
        )
        body.append(
            _figure(
                plot_paired_differences(diffs, f"{dataset}: listed model pairs, n = {n}"),
                "Listed model pairs per ROI: mean over subjects of the paired difference of "
                "r − null (each model at the layer best on the other subjects) with its 95% CI; "
                f"dots are subjects; green bars and *: q < {alpha:g} (two-sided, FDR over pairs "
                "× ROIs).",
                dpi,
            )
        )
    else:
        body.append(
            '<p class="note">No pair to test: list pairs in config as '
            "<code>compare: [[model_a, model_b]]</code>.</p>"
        )
    for note in notes:
        body.append(f'<p class="note">{_e(note)}.</p>')
    body.append('<h2 id="provenance">Provenance</h2>')
    body.append("<table><tr><th>package</th><th>version</th></tr>")
    body.extend(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in package_versions().items())
    body.append("</table>")
    body.append(f"<h3>Group statistics</h3><pre>{_e(_dump_config(spec))}</pre>")
    if config:
        body.append(f"<h3>Configuration</h3><pre>{_e(_dump_config(config))}</pre>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}{_EXTRA_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_compare_report(
    path: str | os.PathLike,
    dataset: str,
    scores_list: Iterable,
    group: Mapping | None = None,
    *,
    csv_out: str | os.PathLike | None = None,
    **kwargs,
) -> Path:
    """Read the Scores, render (see :func:`render_compare_report`) and write atomically, with
    ``comparison.csv`` at ``csv_out`` (linked from the report by its relative path)."""
    from alignment.io import write_text

    table = study_table(scores_list)
    table = table[table["dataset"] == dataset]
    path = Path(path)
    href = os.path.relpath(csv_out, path.parent) if csv_out is not None else None
    html = render_compare_report(dataset, table, group, csv_href=href, **kwargs)
    if csv_out is not None:
        write_comparison_csv(table, csv_out)
    write_text(path, html)
    return path
