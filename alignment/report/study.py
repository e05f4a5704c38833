"""Study-level tables from many Scores: per-subject ROI scores, group tests, model comparisons.

Every Scores object (one subject, model and encoder) is reduced to one row per (ROI, layer)
by :func:`roi_scores`; the tidy table of all of them (:func:`study_table`) is what the group
report, the comparison report, ``comparison.csv`` and the terminal summary are computed from.
Several encoders per model are handled generically: a *fit* is one (model, encoder) pair, and
models are only compared within the same encoder.

The quantity tested across subjects is each subject's ROI-mean r minus the ROI-mean of its
own null mean (``delta``), so a score that chance and the statistics let through (a random
control on smooth time series) does not count as an effect.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from alignment import dims
from alignment.io import InputError, read_netcdf
from alignment.metrics.group import (
    best_layer_consistency,
    group_test,
    loso_selected,
    peak_depth,
    simes,
)
from alignment.metrics.stats import fdr_bh
from alignment.viz.brainmaps import _sorted_by_layer, check_scores, is_untrained, roi_groups
from alignment.viz.profiles import _nanmean, _ratio_to_ceiling

__all__ = [
    "COMPARISON_COLUMNS",
    "GROUP_DEFAULTS",
    "Fit",
    "baseline_pairs",
    "best_layer_stats",
    "config_pairs",
    "group_layer_stats",
    "index_scores",
    "model_peaks",
    "paired_differences",
    "roi_scores",
    "study_table",
]

#: Columns of ``comparison.csv`` (tidy, one row per subject, fit, layer and ROI); the first
#: ten are the documented interface, the rest are extras.
COMPARISON_COLUMNS = (
    "dataset",
    "subject",
    "model",
    "encoder",
    "layer",
    "relative_depth",
    "roi",
    "r",
    "ceiling",
    "p",
    "layer_index",
    "r_null_mean",
    "r_null_p95",
    "r_ceiling",
    "r_over_ceiling",
    "n_voxels",
    "baseline",
)

#: Defaults of the ``group`` config section.
GROUP_DEFAULTS = {
    "test": "sign-flip",
    "n_permutations": 10000,
    "n_bootstrap": 1000,
    "alpha": None,  # None: the Scores' fdr_alpha (stats.fdr_alpha), else 0.05
    "random_state": 0,
}

_FIT = ["dataset", "model", "encoder"]


def baseline_kind(attrs: Mapping) -> str:
    """``"control"`` (random features), ``"untrained"`` (random init) or ``""`` (a model)."""
    if str(attrs.get("control", "")).strip() not in ("", "0"):
        return "control"
    if is_untrained(xr.Dataset(attrs=dict(attrs))):
        return "untrained"
    return ""


def _depths(scores: xr.Dataset) -> np.ndarray:
    n = scores.sizes[dims.LAYER]
    name = getattr(dims, "RELATIVE_DEPTH", "relative_depth")
    if name in scores.coords:
        return np.asarray(scores[name].values, dtype=float)
    index = (
        np.asarray(scores["layer_index"].values, dtype=float)
        if "layer_index" in scores.coords
        else np.arange(n, dtype=float)
    )
    return index / max(n - 1, 1)


def roi_scores(scores: xr.Dataset) -> pd.DataFrame:
    """One row per (ROI, layer) of one Scores object: the columns of ``comparison.csv``.

    Parameters
    ----------
    scores : xarray.Dataset
        Scores with ``r`` (layer, voxel) and ``ceiling`` (voxel); ``r_null_mean``,
        ``r_null_p95`` and ``p`` are used when present. Attrs ``dataset``, ``subject``,
        ``model`` and ``encoder`` identify it.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COMPARISON_COLUMNS`: ``r`` the ROI-mean r, ``ceiling`` the ROI-mean
        noise ceiling (R² scale), ``r_ceiling`` the ROI mean of √ceiling (the highest mean r the
        noise allows), ``p`` the subject-level ROI p-value (Simes' combination of the voxels'
        permutation p-values: is any voxel of the ROI predicted?), ``relative_depth`` from the
        Scores' coordinate when present, else ``layer_index / (n_layers - 1)``.
    """
    check_scores(scores, (dims.R, dims.CEILING), what="the group report")
    a = scores.attrs
    if "subject" not in a:
        raise InputError(
            f"Scores (dataset={a.get('dataset')}, model={a.get('model')}): no 'subject' attr, "
            "so it cannot be grouped across subjects"
        )
    scores = _sorted_by_layer(scores)
    n_layers = scores.sizes[dims.LAYER]

    def var(name):
        if name in scores:
            return scores[name].transpose(dims.LAYER, dims.VOXEL).values.astype(float)
        return np.full((n_layers, scores.sizes[dims.VOXEL]), np.nan)

    r, null_mean, p95, p = var(dims.R), var(dims.R_NULL_MEAN), var(dims.R_NULL_P95), var(dims.P)
    ceiling = scores[dims.CEILING].values.astype(float)
    root = np.sqrt(np.where(np.isfinite(ceiling), np.maximum(ceiling, 0.0), np.nan))
    ratio = _ratio_to_ceiling(r, ceiling[None, :])
    names = [str(x) for x in scores[dims.LAYER].values]
    index = (
        np.asarray(scores["layer_index"].values).astype(int)
        if "layer_index" in scores.coords
        else np.arange(n_layers)
    )
    depth = _depths(scores)
    base = {
        "dataset": str(a.get("dataset", "dataset")),
        "subject": str(a["subject"]),
        "model": str(a.get("model", "model")),
        "encoder": str(a.get("encoder", "encoder")),
        "baseline": baseline_kind(a),
    }
    frames = []
    for roi, mask in roi_groups(scores).items():
        c = ceiling[mask]
        frames.append(
            pd.DataFrame(
                {
                    **base,
                    "layer": names,
                    "relative_depth": depth,
                    "roi": roi,
                    "r": _nanmean(r[:, mask], axis=1),
                    "ceiling": float(np.nanmean(c)) if np.isfinite(c).any() else np.nan,
                    "p": simes(p[:, mask], axis=1),
                    "layer_index": index,
                    "r_null_mean": _nanmean(null_mean[:, mask], axis=1),
                    "r_null_p95": _nanmean(p95[:, mask], axis=1),
                    "r_ceiling": float(_nanmean(root[mask], axis=0)),
                    "r_over_ceiling": _nanmean(ratio[:, mask], axis=1),
                    "n_voxels": int(mask.sum()),
                }
            )
        )
    return pd.DataFrame(pd.concat(frames, ignore_index=True), columns=list(COMPARISON_COLUMNS))


@dataclass
class Fit:
    """All subjects' Scores of one (dataset, model, encoder)."""

    dataset: str
    model: str
    encoder: str
    baseline: str
    attrs: dict
    items: list = field(default_factory=list)
    subjects: list = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.dataset, self.model, self.encoder

    @property
    def label(self) -> str:
        return f"{self.model} · {self.encoder}"


def _attrs_of(item) -> dict:
    if isinstance(item, xr.Dataset):
        return dict(item.attrs)
    import xarray

    from alignment.io import require_file

    path = require_file(item, "Scores netCDF")
    try:
        with xarray.open_dataset(path, engine="h5netcdf") as ds:
            return dict(ds.attrs)
    except OSError as err:
        raise InputError(f"{path}: cannot be read as netCDF ({err})") from err


def index_scores(items: Iterable) -> list[Fit]:
    """Group Scores (objects or netCDF paths, read lazily) into fits, in order of appearance.

    Raises :class:`~alignment.io.InputError` when a subject appears twice in one fit.
    """
    fits: dict[tuple, Fit] = {}
    for item in items:
        a = _attrs_of(item)
        key = (
            str(a.get("dataset", "dataset")),
            str(a.get("model", "model")),
            str(a.get("encoder", "encoder")),
        )
        fit = fits.get(key)
        if fit is None:
            fit = fits[key] = Fit(*key, baseline=baseline_kind(a), attrs=a)
        subject = str(a.get("subject", f"#{len(fit.items)}"))
        if subject in fit.subjects:
            where = item if not isinstance(item, xr.Dataset) else "Scores"
            raise InputError(
                f"{where}: subject {subject} appears twice for dataset={key[0]}, model={key[1]}, "
                f"encoder={key[2]}"
            )
        fit.items.append(item)
        fit.subjects.append(subject)
    return list(fits.values())


def study_table(items: Iterable) -> pd.DataFrame:
    """:func:`roi_scores` of every Scores (objects or paths, read one at a time), stacked."""
    frames = []
    for item in items:
        scores = item if isinstance(item, xr.Dataset) else read_netcdf(item)
        frames.append(roi_scores(scores))
    if not frames:
        return pd.DataFrame(columns=list(COMPARISON_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def _delta(frame: pd.DataFrame) -> pd.Series:
    """r minus the null mean (r alone where the null mean is unknown)."""
    return frame["r"] - frame["r_null_mean"].fillna(0.0)


def _cube(frame: pd.DataFrame, value: pd.Series | str):
    """(subjects, rois, layers) array of one fit, with the axes' labels."""
    values = frame[value] if isinstance(value, str) else value
    data = frame.assign(_v=values.to_numpy(float))
    subjects = list(dict.fromkeys(data["subject"]))
    rois = list(dict.fromkeys(data["roi"]))
    layers = data.drop_duplicates("layer").sort_values("layer_index")["layer"].tolist()
    cube = np.full((len(subjects), len(rois), len(layers)), np.nan)
    si = {s: i for i, s in enumerate(subjects)}
    ri = {s: i for i, s in enumerate(rois)}
    li = {s: i for i, s in enumerate(layers)}
    cube[
        data["subject"].map(si).to_numpy(),
        data["roi"].map(ri).to_numpy(),
        data["layer"].map(li).to_numpy(),
    ] = data["_v"].to_numpy()
    return cube, subjects, rois, layers


def _spec(group: Mapping | None, table: pd.DataFrame | None = None) -> dict:
    spec = {**GROUP_DEFAULTS, **(group or {})}
    if spec["alpha"] is None:
        spec["alpha"] = 0.05
    return spec


def group_layer_stats(table: pd.DataFrame, group: Mapping | None = None) -> pd.DataFrame:
    """Per fit, ROI and layer: the test across subjects, FDR over ROIs × layers.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`study_table` output.
    group : mapping, optional
        ``test`` ("sign-flip" or "t-test"), ``n_permutations``, ``alpha``, ``random_state``
        (defaults :data:`GROUP_DEFAULTS`).

    Returns
    -------
    pandas.DataFrame
        One row per (dataset, model, encoder, roi, layer): ``n_subjects``, ``r`` (mean over
        subjects) with ``r_ci_low/high`` (95% CI), ``delta`` (mean of r minus null mean) with
        its CI, ``p`` (one-sided test of delta > 0 across subjects), ``q`` (Benjamini-Hochberg
        over the fit's ROIs × layers), ``significant`` (q < alpha), ``r_null_p95``,
        ``r_ceiling_low/mean/high`` (range and mean over subjects of the ROI-mean √ceiling),
        ``relative_depth``, ``layer_index``, ``baseline``.
    """
    spec = _spec(group)
    rows = []
    for key, frame in table.groupby(_FIT, sort=False):
        delta, _subjects, rois, layers = _cube(frame, _delta(frame))
        r = _cube(frame, "r")[0]
        res = group_test(
            delta,
            test=spec["test"],
            alternative="greater",
            n_permutations=int(spec["n_permutations"]),
            random_state=spec["random_state"],
        )
        q = fdr_bh(res.p)
        from alignment.metrics.group import mean_ci

        r_mean, r_low, r_high = mean_ci(r)
        p95 = np.nanmean(_cube(frame, "r_null_p95")[0], axis=0)
        ceil = _cube(frame, "r_ceiling")[0]
        depth = np.nanmean(_cube(frame, "relative_depth")[0], axis=(0, 1))
        index = frame.drop_duplicates("layer").set_index("layer")["layer_index"]
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                c_low, c_mean, c_high = (
                    np.nanmin(ceil, 0),
                    np.nanmean(ceil, 0),
                    np.nanmax(ceil, 0),
                )
        for i, roi in enumerate(rois):
            for j, layer in enumerate(layers):
                rows.append(
                    {
                        "dataset": key[0],
                        "model": key[1],
                        "encoder": key[2],
                        "roi": roi,
                        "layer": layer,
                        "layer_index": int(index[layer]),
                        "relative_depth": float(depth[j]),
                        "n_subjects": int(res.n_subjects[i, j]),
                        "r": r_mean[i, j],
                        "r_ci_low": r_low[i, j],
                        "r_ci_high": r_high[i, j],
                        "delta": res.mean[i, j],
                        "delta_ci_low": res.ci_low[i, j],
                        "delta_ci_high": res.ci_high[i, j],
                        "p": res.p[i, j],
                        "q": q[i, j],
                        "significant": bool(q[i, j] < spec["alpha"]),
                        "r_null_p95": p95[i, j],
                        "r_ceiling_low": c_low[i, j],
                        "r_ceiling": c_mean[i, j],
                        "r_ceiling_high": c_high[i, j],
                        "baseline": frame["baseline"].iloc[0],
                        "test": res.test,
                    }
                )
    return pd.DataFrame(rows)


def best_layer_stats(table: pd.DataFrame, group: Mapping | None = None) -> pd.DataFrame:
    """Per fit and ROI: the group's best layer and how consistent it is across subjects.

    Returns
    -------
    pandas.DataFrame
        One row per (dataset, model, encoder, roi): ``best_layer`` / ``best_index`` (position
        in the fit's layer list) / ``best_depth`` of the layer with the highest mean delta;
        ``n_best`` subjects whose own best layer it is, of ``n_subjects``; ``counts`` (list:
        subjects per layer); ``ci_low_layer`` / ``ci_high_layer`` (bootstrap 95% interval of the
        best layer over resamples of subjects) and ``bootstrap_share``; ``peak_depth`` (relative
        depth refined between layers, :func:`~alignment.metrics.group.peak_depth`) with a
        bootstrap interval ``peak_depth_ci_low/high``; ``r`` and ``delta`` (means at the best
        layer); ``n_subject_significant``: subjects whose ROI p (Simes) < alpha at that layer.
    """
    spec = _spec(group)
    rng = np.random.default_rng(spec["random_state"])
    rows = []
    for key, frame in table.groupby(_FIT, sort=False):
        delta, _subjects, rois, layers = _cube(frame, _delta(frame))
        r = _cube(frame, "r")[0]
        p = _cube(frame, "p")[0]
        depth = np.nanmean(_cube(frame, "relative_depth")[0], axis=(0, 1))
        n_boot = int(spec["n_bootstrap"])
        for i, roi in enumerate(rois):
            x = delta[:, i, :]
            cons = best_layer_consistency(x, n_bootstrap=n_boot, random_state=rng)
            b = cons.best
            keep = np.isfinite(x).any(axis=1)
            xs = x[keep]
            if xs.shape[0]:
                idx = rng.integers(0, xs.shape[0], size=(n_boot, xs.shape[0]))
                boot_depth, _ = peak_depth(depth, _nanmean(xs[idx], axis=1))
                d_low, d_high = np.nanpercentile(boot_depth, [2.5, 97.5])
                d_peak = float(peak_depth(depth, _nanmean(xs, axis=0))[0])
            else:
                d_low = d_high = d_peak = np.nan

            rows.append(
                {
                    "dataset": key[0],
                    "model": key[1],
                    "encoder": key[2],
                    "roi": roi,
                    "n_layers": len(layers),
                    "best_layer": layers[b] if b >= 0 else None,
                    "best_index": b,
                    "best_depth": float(depth[b]) if b >= 0 else np.nan,
                    "n_best": int(cons.counts[b]) if b >= 0 else 0,
                    "n_subjects": cons.n_subjects,
                    "counts": cons.counts.tolist(),
                    "ci_low_layer": _layer_at(layers, cons.ci_low),
                    "ci_high_layer": _layer_at(layers, cons.ci_high),
                    "ci_low_index": cons.ci_low,
                    "ci_high_index": cons.ci_high,
                    "bootstrap_share": cons.bootstrap_share,
                    "peak_depth": d_peak,
                    "peak_depth_ci_low": float(d_low),
                    "peak_depth_ci_high": float(d_high),
                    "r": float(np.nanmean(r[:, i, b])) if b >= 0 else np.nan,
                    "delta": float(np.nanmean(x[:, b])) if b >= 0 else np.nan,
                    "n_subject_significant": (
                        int((p[:, i, b] < spec["alpha"]).sum()) if b >= 0 else 0
                    ),
                    "baseline": frame["baseline"].iloc[0],
                    "layers": layers,
                }
            )
    return pd.DataFrame(rows)


def _layer_at(layers: list[str], position: float) -> str | None:
    return layers[round(position)] if np.isfinite(position) else None


def baseline_pairs(table: pd.DataFrame, models: Mapping | None = None) -> list[tuple]:
    """(dataset, model, baseline, encoder) pairs: each model against its controls.

    Every fit that is not a random-feature control is compared with each control of the same
    dataset and encoder; a trained model (neither untrained nor a control) also with each
    untrained network of the same dataset and encoder (of the same ``family`` when the model
    spec gives one for both).
    """
    models = models or {}
    fits = table.drop_duplicates(_FIT)[[*_FIT, "baseline"]]
    pairs = []
    for row in fits.itertuples(index=False):
        if row.baseline == "control":
            continue
        for other in fits.itertuples(index=False):
            if (other.dataset, other.encoder) != (row.dataset, row.encoder):
                continue
            if other.model == row.model:
                continue
            if other.baseline == "control":
                pairs.append((row.dataset, row.model, other.model, row.encoder))
            elif other.baseline == "untrained" and row.baseline == "":
                fa = (models.get(row.model) or {}).get("family")
                fb = (models.get(other.model) or {}).get("family")
                if fa is None or fb is None or fa == fb:
                    pairs.append((row.dataset, row.model, other.model, row.encoder))
    return pairs


def config_pairs(table: pd.DataFrame, compare: Iterable | None) -> tuple[list[tuple], list[str]]:
    """Pairs listed in config ``compare: [[a, b]]`` that exist, per dataset and encoder.

    Returns the (dataset, a, b, encoder) pairs and a note per listed pair found nowhere.
    """
    fits = set(map(tuple, table[_FIT].drop_duplicates().to_numpy().tolist()))
    pairs, notes = [], []
    for pair in compare or []:
        a, b = (str(x) for x in pair)
        found = [(d, a, b, e) for d, m, e in sorted(fits) if m == a and (d, b, e) in fits]
        if not found:
            notes.append(f"{a} vs {b}: not both scored on one dataset with one encoder")
        pairs.extend(found)
    return pairs, notes


def paired_differences(
    table: pd.DataFrame,
    pairs: Iterable[tuple],
    group: Mapping | None = None,
    alternative: str = "greater",
) -> pd.DataFrame:
    """Subject-level test of model a minus model b, per ROI, for each (dataset, a, b, encoder).

    Each subject's score of a model is its delta (r minus null mean) at the layer that is best
    on the other subjects (:func:`~alignment.metrics.group.loso_selected`), so neither model
    profits from choosing its layer on the data it is judged on. Subjects scored with both
    models enter; q is Benjamini-Hochberg over all pairs × ROIs of the call.

    Returns
    -------
    pandas.DataFrame
        One row per (dataset, model_a, model_b, encoder, roi): ``n_subjects``, ``diff`` (mean
        of a minus b) with ``ci_low/high``, ``p``, ``q``, ``significant``, ``a``/``b`` (mean
        selected delta of each), ``layer_a``/``layer_b`` (the layer chosen most often),
        ``subject_diffs`` (list, per subject).
    """
    spec = _spec(group)
    rows = []
    for dataset, a, b, encoder in pairs:
        fa = table[(table.dataset == dataset) & (table.model == a) & (table.encoder == encoder)]
        fb = table[(table.dataset == dataset) & (table.model == b) & (table.encoder == encoder)]
        subjects = [s for s in dict.fromkeys(fa["subject"]) if s in set(fb["subject"])]
        if not subjects:
            continue
        fa, fb = fa[fa.subject.isin(subjects)], fb[fb.subject.isin(subjects)]
        ca, sa, ra, la = _cube(fa, _delta(fa))
        cb, sb, rb, lb = _cube(fb, _delta(fb))
        order_b = [sb.index(s) for s in sa]
        cb = cb[order_b]
        for roi in [x for x in ra if x in rb]:
            i, j = ra.index(roi), rb.index(roi)
            xa, pos_a = loso_selected(ca[:, i, :])
            xb, pos_b = loso_selected(cb[:, j, :])
            d = xa - xb
            res = group_test(
                d[:, None],
                test=spec["test"],
                alternative=alternative,
                n_permutations=int(spec["n_permutations"]),
                random_state=spec["random_state"],
            )
            rows.append(
                {
                    "dataset": dataset,
                    "model_a": a,
                    "model_b": b,
                    "encoder": encoder,
                    "roi": roi,
                    "n_subjects": int(res.n_subjects[0]),
                    "diff": float(res.mean[0]),
                    "ci_low": float(res.ci_low[0]),
                    "ci_high": float(res.ci_high[0]),
                    "p": float(res.p[0]),
                    "a": float(np.nanmean(xa)),
                    "b": float(np.nanmean(xb)),
                    "layer_a": _mode_name(pos_a, la),
                    "layer_b": _mode_name(pos_b, lb),
                    "subject_diffs": d.tolist(),
                    "alternative": alternative,
                    "test": res.test,
                }
            )
    out = pd.DataFrame(rows)
    if len(out):
        out["q"] = fdr_bh(out["p"].to_numpy(float))
        out["significant"] = out["q"] < spec["alpha"]
    return out


def _mode_name(positions: np.ndarray, names: list[str]) -> str | None:
    pos = positions[positions >= 0]
    if not pos.size:
        return None
    return names[int(np.bincount(pos).argmax())]


#: Model properties read from the model spec (config ``models:``) for the comparison.
MODEL_PROPERTIES = ("family", "params", "instruction_tuned", "trained")


def model_peaks(
    table: pd.DataFrame,
    group: Mapping | None = None,
    models: Mapping | None = None,
    widths: Mapping | None = None,
) -> pd.DataFrame:
    """Per fit and ROI: peak score and peak relative depth, with the model's properties.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`study_table` output.
    group : mapping, optional
        The ``group`` config section.
    models : mapping, optional
        The ``models`` config section: ``family``, ``params``, ``instruction_tuned`` and
        ``trained`` are copied when given (``trained`` defaults to "not a baseline").
    widths : mapping, optional
        Model name -> feature width (units of its last layer), measured from its features.

    Returns
    -------
    pandas.DataFrame
        :func:`best_layer_stats` columns plus ``n_layers``, ``width`` and the properties.
    """
    best = best_layer_stats(table, group)
    models = models or {}
    widths = widths or {}
    for prop in MODEL_PROPERTIES:
        best[prop] = [(models.get(m) or {}).get(prop) for m in best["model"]]
    best["trained"] = [
        t if t is not None else (b == "")
        for t, b in zip(best["trained"], best["baseline"], strict=True)
    ]
    best["width"] = [widths.get(m) for m in best["model"]]
    return best


def comparison_frame(table: pd.DataFrame) -> pd.DataFrame:
    """``comparison.csv``: the tidy table with :data:`COMPARISON_COLUMNS`, in order."""
    return table[list(COMPARISON_COLUMNS)].reset_index(drop=True)


def write_comparison_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write :func:`comparison_frame` atomically."""
    from alignment.io import write_text

    write_text(path, comparison_frame(table).to_csv(index=False, float_format="%.6g"))
