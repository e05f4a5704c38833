"""Cross-validated encoding scores per layer: the CV loop and statistics that every encoder shares.

The same folds, ceilings and null serve every encoder, so encoders compare like for like
(DESIGN.md sections 4-5):

- **images**: trials z-scored per session; folds split by image (all repeats of an image fall on
  one side); the model is trained on repeat-averaged (or single-trial) responses of the training
  images and tested on the repeat-averaged responses of held-out images; r is computed on the
  pooled out-of-fold predictions after centring each test fold; the null permutes stimulus
  labels within each test fold.
- **narratives**: responses detrended and z-scored per run; word features Lanczos-resampled to
  TRs, z-scored per run and FIR-delayed; contiguous folds with a gap of a few TRs; r is computed
  within each test fold and averaged (never on predictions concatenated across folds); the null
  circularly shifts the predictions within each test fold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from alignment import __version__, dims, folds, timeseries
from alignment.data.responses import align_ids, average_repeats, row_dim
from alignment.encoders import EncoderContext, encoder_kind, make_encoder
from alignment.encoders.registry import check_features, select_layers
from alignment.io import InputError
from alignment.metrics import bootstrap_roi_means, ceilings, correlation, stats

log = logging.getLogger(__name__)

CV_DEFAULTS = {"n_folds": 5, "inner_folds": 5, "gap_trs": 3, "train_on": "mean", "random_state": 0}
STATS_DEFAULTS = {
    "n_permutations": 1000,
    "fdr_alpha": 0.05,
    "random_state": 0,
    "narrative_null": "circular",  # or "mirror", "block" (alignment.metrics.permutation_null)
    "n_bootstrap": 500,  # ROI-mean confidence intervals (alignment.metrics.bootstrap_roi_means)
    "ci_level": 0.95,
}
NULL_NAMES = {
    "circular": "circular shift",
    "mirror": "reflected circular shift",
    "block": "block permutation",
}
TIMESERIES_DEFAULTS = {
    "delays": [1, 2, 3, 4],
    "detrend": "savgol",
    "detrend_order": 2,
    "savgol_window_s": 120.0,
    "lanczos_window": 3,
    # detrend the TR features exactly as the responses (per run, before the FIR delays)
    "filter_features": True,
}


@dataclass
class Design:
    """Everything a CV loop needs: targets, folds, how to score and how to build a null."""

    Y: np.ndarray  # (n_samples_scored, n_voxels): the responses predictions are scored against
    folds: list  # outer (train, test) over rows of Y
    kind: str  # "images" or "narrative"
    train_rows: np.ndarray | None = None  # images, train_on="trials": image row of every trial
    Y_train: np.ndarray | None = None  # images, train_on="trials": trial responses
    train_groups: np.ndarray | None = None


def image_design(responses: xr.Dataset, cv: dict) -> tuple[Design, np.ndarray]:
    """Targets and folds for an image experiment; returns the design and the image ids."""
    cv = {**CV_DEFAULTS, **cv}
    values = responses[dims.RESPONSES].values
    ids = responses[dims.STIMULUS_ID].values.astype(str)
    sessions = responses[dims.SESSION].values if dims.SESSION in responses.coords else None
    Y = timeseries.zscore_runs(values, sessions, allow_constant=True)
    means, unique = average_repeats(Y, ids)
    trial_folds = folds.grouped_folds(ids, cv["n_folds"], cv["random_state"])
    position = {sid: i for i, sid in enumerate(unique)}
    image_folds = []
    for train, test in trial_folds:
        tr_img = np.unique([position[s] for s in ids[train]])
        te_img = np.unique([position[s] for s in ids[test]])
        if np.intersect1d(tr_img, te_img).size:
            raise RuntimeError("an image fell on both sides of a fold")  # guards grouped_folds
        image_folds.append((tr_img, te_img))
    design = Design(Y=means, folds=image_folds, kind="images")
    if cv["train_on"] == "trials":
        design.train_rows = np.array([position[s] for s in ids])
        design.Y_train = Y
        design.train_groups = ids
    elif cv["train_on"] != "mean":
        raise InputError(f"cv.train_on must be 'mean' or 'trials', got {cv['train_on']!r}")
    return design, unique


def image_features_matrix(
    layer: xr.DataArray, image_ids, features_source: str, responses_source: str
) -> np.ndarray:
    """Rows of one layer's features in the order of ``image_ids`` (matched by stimulus id)."""
    idx = align_ids(
        image_ids,
        layer[dims.STIMULUS_ID].values,
        wanted_source=responses_source,
        available_source=features_source,
    )
    return np.asarray(layer.values, dtype=np.float32)[idx]


def _tr(responses: xr.Dataset) -> float:
    tr = float(responses.attrs.get("tr", 0))
    if tr <= 0:
        raise InputError("narrative responses need a positive 'tr' attribute (seconds)")
    return tr


def _voxel_coords(ds: xr.Dataset) -> dict:
    """The voxel labels (roi, hemi, vertex) of ``ds``, to carry onto a derived object."""
    return {
        c: (dims.VOXEL, ds[c].values) for c in (dims.ROI, dims.HEMI, dims.VERTEX) if c in ds.coords
    }


def preprocess_timeseries(
    values: np.ndarray, runs, tr: float, ts: dict, zscore: bool = True
) -> np.ndarray:
    """Detrend per run (as ``ts`` says), optionally z-score per run: what encoders are scored on."""
    ts = {**TIMESERIES_DEFAULTS, **ts}
    if ts["detrend"] == "polynomial":
        kwargs = {"order": ts["detrend_order"]}
    else:
        kwargs = {"window": round(ts["savgol_window_s"] / tr) | 1}
    out = timeseries.detrend(values, runs=runs, method=ts["detrend"], **kwargs)
    return timeseries.zscore_runs(out, runs, allow_constant=True) if zscore else out


def narrative_design(responses: xr.Dataset, cv: dict, ts: dict) -> Design:
    """Detrended, per-run z-scored targets and blocked folds for a narrative experiment."""
    cv, ts = {**CV_DEFAULTS, **cv}, {**TIMESERIES_DEFAULTS, **ts}
    runs = responses[dims.RUN].values.astype(str)
    Y = preprocess_timeseries(responses[dims.RESPONSES].values, runs, _tr(responses), ts)
    outer = folds.blocked_folds(
        len(Y), cv["n_folds"], cv["gap_trs"], runs=runs if cv["n_folds"] == "runs" else None
    )
    return Design(Y=Y, folds=outer, kind="narrative")


def narrative_features_matrix(
    layer: xr.DataArray, responses: xr.Dataset, ts: dict, features_source: str
) -> np.ndarray:
    """Word features of one layer resampled to the responses' TRs, filtered and FIR-delayed.

    Per run, the resampled features go through the same detrending and z-scoring as the
    responses (:func:`preprocess_timeseries` with the same ``ts``), then get their FIR delays.
    ``ts["filter_features"] = False`` only z-scores them (the behaviour before the filter).
    """
    ts = {**TIMESERIES_DEFAULTS, **ts}
    tr = float(responses.attrs["tr"])
    start = float(responses.attrs.get("first_volume_time", 0.0))
    runs = responses[dims.RUN].values.astype(str)
    word_runs = layer[dims.RUN].values.astype(str)
    missing = sorted(set(runs.tolist()) - set(word_runs.tolist()))
    if missing:
        raise InputError(
            f"runs {missing} of the responses have no words in {features_source} "
            f"(its runs: {sorted(set(word_runs.tolist()))}); the word timings must cover every run"
        )
    values = np.asarray(layer.values, dtype=np.float32)
    onsets = layer[dims.ONSET].values
    parts = []
    for run in dict.fromkeys(runs):  # order of appearance
        n_tr = int((runs == run).sum())
        sel = word_runs == run
        parts.append(
            timeseries.lanczos_resample(
                values[sel],
                onsets[sel],
                timeseries.tr_times(n_tr, tr, start),
                window=ts["lanczos_window"],
            )
        )
    X = np.concatenate(parts)
    if ts["filter_features"]:
        # The same per-run filter as the responses (narrative_design): the encoder then sees
        # features and responses in the same frequency band. It reads features only, never
        # responses, so filtering whole runs cannot carry test responses into training.
        X = preprocess_timeseries(X, runs, tr, ts)
    else:
        X = timeseries.zscore_runs(X, runs, allow_constant=True)
    return timeseries.fir_delays(X, ts["delays"], runs=runs)


@dataclass
class CVResult:
    """Out-of-fold predictions of one encoder on one layer, and what the folds' fits report."""

    predictions: np.ndarray  # same shape as Design.Y
    alphas: np.ndarray | None  # (n_folds, n_voxels) when the encoder chooses an alpha per voxel
    interpretation: dict[str, np.ndarray] = field(default_factory=dict)  # rows of Design.Y


def _fold_training_set(X: np.ndarray, design: Design, train: np.ndarray, cv: dict):
    """Training features, targets and inner folds of one outer fold (never its test rows)."""
    if design.kind == "images" and design.Y_train is not None:
        trial_rows = np.flatnonzero(np.isin(design.train_rows, train))
        inner = folds.inner_folds(
            trial_rows,
            groups=design.train_groups,
            n_folds=cv["inner_folds"],
            kind="grouped",
            random_state=cv["random_state"],
        )
        return X[design.train_rows[trial_rows]], design.Y_train[trial_rows], inner
    if design.kind == "images":
        inner = folds.inner_folds(
            train, n_folds=cv["inner_folds"], kind="grouped", random_state=cv["random_state"]
        )
    else:
        inner = folds.inner_folds(
            train, n_folds=cv["inner_folds"], gap=cv["gap_trs"], kind="blocked"
        )
    return X[train], design.Y[train], inner


def cross_validated_predictions(
    X: np.ndarray,
    design: Design,
    encoder_spec: dict,
    cv: dict,
    context: EncoderContext | None = None,
) -> CVResult:
    """Fit the encoder on every outer fold's training rows and predict its test rows.

    Every registered encoder kind goes through this one loop, on the same folds.

    Parameters
    ----------
    X : ndarray
        Features of every row of ``design.Y`` (pooled: (rows, units); tokens: (rows, tokens,
        units)).
    design : Design
    encoder_spec : dict
        Config entry of the encoder (``kind`` plus parameters).
    cv : dict
        The ``cv`` config section.
    context : EncoderContext, optional
        Voxel labels, feature attributes and extra inputs; the loop fills in the inner folds,
        the fold index, the experiment kind and the random state.

    Returns
    -------
    CVResult
    """
    cv = {**CV_DEFAULTS, **cv}
    context = context or EncoderContext()
    pred = np.zeros_like(design.Y)
    alphas, interpretation = [], {}
    for k, (train, test) in enumerate(design.folds):
        X_train, Y_train, inner = _fold_training_set(X, design, train, cv)
        fold_context = replace(
            context,
            inner_cv=inner,
            fold=k,
            experiment=design.kind,
            random_state=cv["random_state"],
        )
        encoder = make_encoder(encoder_spec, fold_context).fit(X_train, Y_train)
        pred[test] = encoder.predict(X[test])
        if hasattr(encoder, "best_alphas_"):
            alphas.append(np.asarray(encoder.best_alphas_, dtype=np.float64))
        if hasattr(encoder, "interpret"):
            for name, values in encoder.interpret(X[test]).items():
                values = np.asarray(values)
                if name not in interpretation:
                    interpretation[name] = np.full(
                        (len(design.Y), *values.shape[1:]), np.nan, dtype=np.float32
                    )
                interpretation[name][test] = values
    return CVResult(pred, np.asarray(alphas) if alphas else None, interpretation)


def _centre_folds(values: np.ndarray, test_folds) -> np.ndarray:
    out = np.array(values, dtype=np.float64, copy=True)
    for test in test_folds:
        out[test] -= out[test].mean(0)
    return out


def score_predictions(design: Design, pred: np.ndarray, stats_spec: dict) -> dict[str, np.ndarray]:
    """r, R², permutation p and the null's mean and 95th percentile per voxel."""
    stats_spec = {**STATS_DEFAULTS, **stats_spec}
    test_folds = [test for _, test in design.folds]
    if design.kind == "images":
        r2 = correlation.r2_score(design.Y, pred)
        # Centre each test fold before pooling: otherwise each fold's intercept (the training
        # mean, anti-correlated with the test mean) biases r negative for noise voxels, and a
        # within-fold permutation, which keeps fold means, cannot reproduce that in the null.
        Y, pred = _centre_folds(design.Y, test_folds), _centre_folds(pred, test_folds)
        null = stats.permutation_null(
            Y,
            pred,
            n_permutations=stats_spec["n_permutations"],
            test_folds=test_folds,
            kind="permute",
            random_state=stats_spec["random_state"],
        )
    else:
        r2 = correlation.foldwise(correlation.r2_score, design.Y, pred, test_folds)
        null = stats.permutation_null(
            design.Y,
            pred,
            n_permutations=stats_spec["n_permutations"],
            test_folds=test_folds,
            kind=stats_spec["narrative_null"],
            random_state=stats_spec["random_state"],
        )
    return {
        dims.R: null.r,
        dims.R2: r2,
        dims.P: null.p,
        dims.R_NULL_MEAN: null.null_mean,
        dims.R_NULL_P95: null.null_p95,
    }


def roi_intervals(design: Design, pred: np.ndarray, roi, stats_spec: dict) -> dict[str, np.ndarray]:
    """Bootstrap interval of each ROI's mean r, repeated on the ROI's voxels (NaN elsewhere).

    Images resample stimuli (pooled r over fold-centred rows); narratives resample blocks of
    TRs within each test fold (per-fold r averaged), as :func:`score_predictions` scores them.
    """
    stats_spec = {**STATS_DEFAULTS, **stats_spec}
    roi = np.asarray(roi).astype(str)
    res = bootstrap_roi_means(
        design.Y,
        pred,
        roi,
        [test for _, test in design.folds],
        kind="stimuli" if design.kind == "images" else "blocks",
        n_bootstrap=stats_spec["n_bootstrap"],
        level=stats_spec["ci_level"],
        random_state=stats_spec["random_state"],
    )
    low = np.full(roi.size, np.nan)
    high = np.full(roi.size, np.nan)
    for name, lo, hi in zip(res.rois, res.low, res.high, strict=True):
        mask = roi == name if name != "all" else np.ones(roi.size, bool)
        low[mask], high[mask] = lo, hi
    return {dims.R_ROI_CI_LOW: low, dims.R_ROI_CI_HIGH: high}


def _layer_depth(name: str, layer: xr.DataArray, position: int, n_layers: int) -> float:
    """Relative depth of a layer (0 = input, 1 = last): as the features store it, if it does."""
    if "relative_depth" in layer.coords:
        return float(layer.coords["relative_depth"])
    if "relative_depth" in layer.attrs:
        return float(layer.attrs["relative_depth"])
    return position / max(n_layers - 1, 1)


def score_layers(
    responses: xr.Dataset,
    layers: dict[str, xr.DataArray],
    *,
    encoder_spec: dict,
    cv: dict,
    stats_spec: dict,
    timeseries_spec: dict | None = None,
    ceiling: np.ndarray | None = None,
    features_source: str = "features",
    responses_source: str = "responses",
    attrs: dict | None = None,
    features_attrs: dict | None = None,
    encoder_inputs: dict | None = None,
    return_interpretation: bool = False,
):
    """Fit and score an encoder for every layer of a model against one subject's responses.

    Parameters
    ----------
    responses : Dataset
        Validated Responses (images or narrative).
    layers : dict of layer name to DataArray
        Features per layer: (stimulus or word, unit), or (stimulus, token, unit) for encoders
        that take patch tokens.
    encoder_spec, cv, stats_spec, timeseries_spec : dict
        Config sections (defaults in this module). ``encoder_spec["kind"]`` names a registered
        encoder (:mod:`alignment.encoders.registry`).
    ceiling : ndarray (n_voxels,), optional
        Noise ceiling (fraction of variance) stored with the scores.
    features_source, responses_source : str
        File names used in error messages.
    attrs : dict
        Provenance to store.
    features_attrs : dict, optional
        Attributes of the features store (token grid, model...), passed to the encoder.
    encoder_inputs : dict of str to str, optional
        Extra files the encoder needs (e.g. a meta-trained checkpoint).
    return_interpretation : bool
        Also return what encoders with an ``interpret`` method report for the test rows
        (e.g. attention maps), one Dataset per layer.

    Returns
    -------
    Scores Dataset with dims (layer, voxel): r, r2, p, q, r_null_mean, r_null_p95, alpha, and
    ceiling (voxel); with ``return_interpretation``, also a dict of layer name to Dataset.
    """
    stats_spec = {**STATS_DEFAULTS, **stats_spec}
    timeseries_spec = timeseries_spec or {}
    kind = encoder_kind(encoder_spec)
    layers = select_layers(encoder_spec, layers, features_source)
    narrative = row_dim(responses) == dims.TIME
    if narrative:
        design = narrative_design(responses, cv, timeseries_spec)
        row_ids = None
    else:
        design, row_ids = image_design(responses, cv)
    base_context = EncoderContext(
        voxels={c: v for c, (_, v) in _voxel_coords(responses).items()},
        features=dict(features_attrs or {}),
        inputs=dict(encoder_inputs or {}),
    )
    out: dict[str, list] = {}
    interpretations = {}
    roi_labels = (
        responses[dims.ROI].values
        if dims.ROI in responses.coords
        else np.full(len(design.Y.T), "all")
    )
    for name, layer in tqdm(layers.items(), desc="layers", unit="layer"):
        if narrative:
            X = narrative_features_matrix(layer, responses, timeseries_spec, features_source)
        else:
            X = image_features_matrix(layer, row_ids, features_source, responses_source)
        check_features(X, kind, features_source)
        context = replace(
            base_context, features={**base_context.features, **layer.attrs, "layer": name}
        )
        result = cross_validated_predictions(X, design, encoder_spec, cv, context)
        scores = score_predictions(design, result.predictions, stats_spec)
        scores[dims.Q] = stats.fdr_bh(scores[dims.P])
        if stats_spec["n_bootstrap"]:
            scores.update(roi_intervals(design, result.predictions, roi_labels, stats_spec))
        n_voxels = design.Y.shape[1]
        scores[dims.ALPHA] = (
            np.median(result.alphas, axis=0)
            if result.alphas is not None
            else np.full(n_voxels, np.nan)
        )
        for key, value in scores.items():
            out.setdefault(key, []).append(np.asarray(value, dtype=np.float32))
        if result.interpretation:
            interpretations[name] = xr.Dataset(
                {
                    key: ((dims.STIMULUS, *[f"{key}_dim{i}" for i in range(1, v.ndim)]), v)
                    for key, v in result.interpretation.items()
                },
                coords={dims.STIMULUS_ID: (dims.STIMULUS, row_ids)} if row_ids is not None else {},
            )
        log.info(
            "%s: median r %.3f, max r %.3f",
            name,
            np.nanmedian(scores[dims.R]),
            np.nanmax(scores[dims.R]),
        )
    layer_names = list(layers)
    voxel_coords = _voxel_coords(responses)
    ds = xr.Dataset(
        {key: ((dims.LAYER, dims.VOXEL), np.stack(vals)) for key, vals in out.items()},
        coords={
            dims.LAYER: layer_names,
            "layer_index": (dims.LAYER, np.arange(len(layer_names))),
            dims.RELATIVE_DEPTH: (
                dims.LAYER,
                [
                    _layer_depth(n, layers[n], i, len(layer_names))
                    for i, n in enumerate(layer_names)
                ],
            ),
            **voxel_coords,
        },
    )
    if ceiling is not None:
        ds[dims.CEILING] = (dims.VOXEL, np.asarray(ceiling, dtype=np.float32))
    ds.attrs = {
        **responses.attrs,
        **(attrs or {}),
        "encoder_kind": kind.name,
        "n_permutations": stats_spec["n_permutations"],
        "ci_level": stats_spec["ci_level"],
        "n_bootstrap": stats_spec["n_bootstrap"],
        "fdr_alpha": stats_spec["fdr_alpha"],
        "null_kind": NULL_NAMES.get(stats_spec["narrative_null"], stats_spec["narrative_null"])
        if narrative
        else "permuted stimulus labels",
        "scoring": "within each test fold" if narrative else "pooled out-of-fold",
        "n_folds": str(cv.get("n_folds", CV_DEFAULTS["n_folds"])),
        "package_version": __version__,
    }
    return (ds, interpretations) if return_interpretation else ds


def noise_ceiling(
    responses: list[xr.Dataset],
    index: int,
    timeseries_spec: dict | None = None,
    sources: list[str] | None = None,
) -> xr.Dataset:
    """Noise ceiling (fraction of variance, R² scale) of subject ``responses[index]``.

    Image experiments use the subject's own repeats (NSD ncsnr, for the mean of its repeats).
    Narratives heard by several subjects use the inter-subject correlation of the same
    preprocessed responses the encoders are scored on (detrended, z-scored per run).
    """
    sources = sources or [f"responses[{i}]" for i in range(len(responses))]
    subject = responses[index]
    if dims.CEILING in subject:  # the dataset's adapter supplied it (alignment.data)
        method = subject[dims.CEILING].attrs.get("method", "from the dataset")
        return xr.Dataset(
            {dims.CEILING: (dims.VOXEL, subject[dims.CEILING].values.astype(np.float32))},
            coords=_voxel_coords(subject),
            attrs={**subject.attrs, "method": method},
        )
    if row_dim(subject) == dims.STIMULUS:
        sessions = subject[dims.SESSION].values if dims.SESSION in subject.coords else None
        result = ceilings.ncsnr_ceiling(
            subject[dims.RESPONSES].values, subject[dims.STIMULUS_ID].values, sessions=sessions
        )
        values, method = result.ceiling, "ncsnr (NSD), mean of repeats"
        extra = {"ncsnr": (dims.VOXEL, result.ncsnr.astype(np.float32))}
    else:
        if len(responses) < 2:
            raise InputError(
                f"{sources[index]}: an inter-subject ceiling needs at least 2 subjects"
            )
        prepared = []
        for ds, src in zip(responses, sources, strict=True):
            if (
                ds.sizes[dims.TIME] != subject.sizes[dims.TIME]
                or ds.sizes[dims.VOXEL] != subject.sizes[dims.VOXEL]
            ):
                raise InputError(
                    f"{src}: shape {dict(ds.sizes)} differs from {sources[index]} "
                    f"{dict(subject.sizes)}; inter-subject ceilings need one space and timing"
                )
            runs = ds[dims.RUN].values.astype(str)
            prepared.append(
                preprocess_timeseries(
                    ds[dims.RESPONSES].values, runs, _tr(ds), timeseries_spec or {}
                )
            )
        # "ratio" stays unbiased when subjects differ in noise level; it needs 3 subjects
        isc_method = "ratio" if len(prepared) >= 3 else "pairwise"
        values = ceilings.isc_ceiling(np.stack(prepared), method=isc_method)[index]
        method, extra = f"inter-subject correlation ({isc_method})", {}
    coords = _voxel_coords(subject)
    return xr.Dataset(
        {dims.CEILING: (dims.VOXEL, np.asarray(values, dtype=np.float32)), **extra},
        coords=coords,
        attrs={**subject.attrs, "method": method},
    )
