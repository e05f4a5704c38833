"""Terminal summary of a run: the group answer first, then the per-subject details."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import xarray as xr

from alignment.io import read_netcdf
from alignment.metrics.group import min_attainable_p
from alignment.report.study import (
    _spec,
    baseline_pairs,
    best_layer_stats,
    group_layer_stats,
    paired_differences,
    roi_scores,
)
from alignment.report.tables import summary_lines

__all__ = ["group_summary_lines", "study_summary_lines"]

_LABEL = {"control": " [RANDOM-FEATURE CONTROL]", "untrained": " [UNTRAINED]", "": ""}


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def group_summary_lines(
    table: pd.DataFrame, group: Mapping | None = None, models: Mapping | None = None
) -> list[str]:
    """Group answer per dataset: best layer per fit and ROI across subjects, its group test,
    and each model against its baselines (see :mod:`alignment.report.study`)."""
    spec = _spec(group)
    alpha = float(spec["alpha"])
    lines = []
    for dataset, frame in table.groupby("dataset", sort=False):
        n = frame["subject"].nunique()
        lines.append(
            f"== Group answer: {dataset} ({n} subject(s); {spec['test']} of r - null "
            f"across subjects, FDR q < {alpha:g} over ROIs x layers) =="
        )
        floor = min_attainable_p(n, spec["test"])
        if floor > alpha:
            lines.append(
                f"   note: with {n} subjects a sign-flip test cannot go below p = {floor:.3g}; "
                "set group.test: t-test or add subjects"
            )
        stats = group_layer_stats(frame, spec)
        best = best_layer_stats(frame, spec)
        for row in best.itertuples(index=False):
            head = f"{dataset} | {row.model}{_LABEL.get(row.baseline, '')} | {row.encoder}"
            if row.best_layer is None:
                lines.append(f"{head} | {row.roi}: no finite r")
                continue
            st = stats[
                (stats.model == row.model)
                & (stats.encoder == row.encoder)
                & (stats.roi == row.roi)
                & (stats.layer == row.best_layer)
            ].iloc[0]
            interval = (
                row.ci_low_layer
                if row.ci_low_layer == row.ci_high_layer
                else f"{row.ci_low_layer}..{row.ci_high_layer}"
            )
            n_sig = int(
                stats[
                    (stats.model == row.model)
                    & (stats.encoder == row.encoder)
                    & (stats.roi == row.roi)
                ]["significant"].sum()
            )
            verdict = "SIGNIFICANT" if st["q"] < alpha else "n.s."
            lines.append(
                f"{head} | {row.roi}: best {row.best_layer} in {row.n_best}/{row.n_subjects} "
                f"subjects (95% CI {interval}), mean r={_f(st['r'])} "
                f"[{_f(st['r_ci_low'])}, {_f(st['r_ci_high'])}], r-null={_f(st['delta'])} "
                f"q={_f(st['q'])} {verdict}; {n_sig}/{row.n_layers} layers pass"
            )
        pairs = baseline_pairs(frame, models)
        if pairs:
            diffs = paired_differences(frame, pairs, spec)
            for row in diffs.itertuples(index=False):
                verdict = "model WINS" if row.significant else "n.s."
                lines.append(
                    f"{dataset} | {row.model_a} vs baseline {row.model_b} | {row.encoder} | "
                    f"{row.roi}: diff={_f(row.diff)} [{_f(row.ci_low)}, {_f(row.ci_high)}] "
                    f"q={_f(row.q)} {verdict}"
                )
    return lines


def study_summary_lines(
    scores_list: Iterable[xr.Dataset | str],
    group: Mapping | None = None,
    models: Mapping | None = None,
) -> list[str]:
    """The whole terminal summary: group answer per dataset, then one line per subject, fit
    and ROI (:func:`alignment.report.tables.summary_lines`). Each file is read once."""
    frames, details = [], []
    for item in scores_list:
        scores = item if isinstance(item, xr.Dataset) else read_netcdf(item)
        details.extend(summary_lines([scores]))
        if "subject" in scores.attrs:
            frames.append(roi_scores(scores))
    lines = []
    if frames:
        lines.extend(group_summary_lines(pd.concat(frames, ignore_index=True), group, models))
        lines.append("")
    lines.append("== Per-subject details ==")
    lines.extend(details)
    return lines
