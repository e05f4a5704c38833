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
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from alignment import __version__, dims, folds, timeseries
from alignment.data.responses import align_ids, average_repeats, row_dim
from alignment.encoders import EncoderContext, encoder_kind, memory
from alignment.encoders.registry import check_features, fit_encoders, select_layers
from alignment.io import InputError, atomic_path
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
    groups: np.ndarray | None = None  # images: fold group of every row of Y (e.g. passage)


def image_design(responses: xr.Dataset, cv: dict) -> tuple[Design, np.ndarray]:
    """Targets and folds for a stimulus-wise experiment (images or sentences); returns the design
    and the stimulus ids.

    Folds keep every repeat of a stimulus on one side; stimuli that carry a ``passage``
    coordinate (Pereira 2018) keep every sentence of a passage on one side, in the outer and the
    inner folds. ``cv.n_folds: split`` uses the dataset's own split instead (a ``split``
    coordinate with ``test`` on the held-out stimuli, e.g. NSD's shared 1,000 images).
    """
    cv = {**CV_DEFAULTS, **cv}
    values = responses[dims.RESPONSES].values
    ids = responses[dims.STIMULUS_ID].values.astype(str)
    sessions = responses[dims.SESSION].values if dims.SESSION in responses.coords else None
    Y = timeseries.zscore_runs(values, sessions, allow_constant=True)
    means, unique = average_repeats(Y, ids)
    groups = responses["passage"].values.astype(str) if "passage" in responses.coords else ids
    if cv["n_folds"] == "split":
        if "split" not in responses.coords:
            raise InputError(
                "cv.n_folds: split needs a 'split' coordinate on the stimuli (test = held out)"
            )
        held_out = responses["split"].values.astype(str) == "test"
        if held_out.all() or not held_out.any():
            raise InputError("cv.n_folds: split needs both test and training stimuli")
        trial_folds = [(np.flatnonzero(~held_out), np.flatnonzero(held_out))]
    else:
        trial_folds = folds.grouped_folds(groups, cv["n_folds"], cv["random_state"])
    position = {sid: i for i, sid in enumerate(unique)}
    row_groups = np.empty(len(unique), dtype=object)
    row_groups[[position[s] for s in ids]] = groups
    image_folds = []
    for train, test in trial_folds:
        tr_img = np.unique([position[s] for s in ids[train]])
        te_img = np.unique([position[s] for s in ids[test]])
        if np.intersect1d(tr_img, te_img).size:
            raise RuntimeError("an image fell on both sides of a fold")  # guards grouped_folds
        image_folds.append((tr_img, te_img))
    design = Design(Y=means, folds=image_folds, kind="images", groups=row_groups.astype(str))
    if cv["train_on"] == "trials":
        design.train_rows = np.array([position[s] for s in ids])
        design.Y_train = Y
        design.train_groups = groups
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
    # encoders with predict_split (banded ridge): "split" and "without", (n_spaces, *Y.shape)
    split: dict[str, np.ndarray] = field(default_factory=dict)


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
            train,
            groups=design.groups,
            n_folds=cv["inner_folds"],
            kind="grouped",
            random_state=cv["random_state"],
        )
    else:
        inner = folds.inner_folds(
            train, n_folds=cv["inner_folds"], gap=cv["gap_trs"], kind="blocked"
        )
    return X[train], design.Y[train], inner


def cross_validated_layers(
    Xs: dict[str, np.ndarray],
    design: Design,
    encoder_spec: dict,
    cv: dict,
    contexts: dict[str, EncoderContext] | None = None,
    split: bool = True,
) -> dict[str, CVResult]:
    """Fit the encoder of every layer on each outer fold's training rows; predict its test rows.

    Every registered encoder kind goes through this one loop, on the same folds. Per outer fold
    the layers are fitted together through :func:`alignment.encoders.registry.fit_encoders`
    (one batched sweep for kinds that offer ``fit_layers``, one fit per layer otherwise).

    Parameters
    ----------
    Xs : dict of layer name to ndarray
        Features of every row of ``design.Y`` (pooled: (rows, units); tokens: (rows, tokens,
        units)).
    design : Design
    encoder_spec : dict
        Config entry of the encoder (``kind`` plus parameters).
    cv : dict
        The ``cv`` config section.
    contexts : dict of layer name to EncoderContext, optional
        Voxel labels, feature attributes and extra inputs per layer; the loop fills in the inner
        folds, the fold index, the experiment kind and the random state.
    split : bool
        Gather the per-space predictions of encoders that offer ``predict_split`` (banded
        ridge) into ``CVResult.split``.

    Returns
    -------
    dict of layer name to CVResult
    """
    cv = {**CV_DEFAULTS, **cv}
    names = list(Xs)
    contexts = contexts or {}
    pred = {name: np.zeros_like(design.Y) for name in names}
    alphas: dict[str, list] = {name: [] for name in names}
    interpretation: dict[str, dict] = {name: {} for name in names}
    parts: dict[str, dict] = {name: {} for name in names}
    for k, (train, test) in enumerate(design.folds):
        train_sets = [_fold_training_set(Xs[name], design, train, cv) for name in names]
        Y_train, inner = train_sets[0][1], train_sets[0][2]
        fold_contexts = [
            replace(
                contexts.get(name) or EncoderContext(),
                inner_cv=inner,
                fold=k,
                experiment=design.kind,
                random_state=cv["random_state"],
            )
            for name in names
        ]
        encoders = fit_encoders(encoder_spec, fold_contexts, [t[0] for t in train_sets], Y_train)
        del train_sets
        for name, encoder in zip(names, encoders, strict=True):
            X_test = Xs[name][test]
            pred[name][test] = encoder.predict(X_test)
            if hasattr(encoder, "best_alphas_"):
                alphas[name].append(np.asarray(encoder.best_alphas_, dtype=np.float64))
            if hasattr(encoder, "interpret"):
                for key, values in encoder.interpret(X_test).items():
                    values = np.asarray(values)
                    store = interpretation[name]
                    if key not in store:
                        store[key] = np.full(
                            (len(design.Y), *values.shape[1:]), np.nan, dtype=np.float32
                        )
                    store[key][test] = values
            if split and hasattr(encoder, "predict_split"):
                for key, values in encoder.predict_split(X_test).items():
                    if key not in parts[name]:
                        parts[name][key] = np.zeros((len(values), *design.Y.shape), np.float32)
                    parts[name][key][:, test] = values
        del encoders
    return {
        name: CVResult(
            pred[name],
            np.asarray(alphas[name]) if alphas[name] else None,
            interpretation[name],
            parts[name],
        )
        for name in names
    }


def cross_validated_predictions(
    X: np.ndarray,
    design: Design,
    encoder_spec: dict,
    cv: dict,
    context: EncoderContext | None = None,
) -> CVResult:
    """Out-of-fold predictions of one layer (:func:`cross_validated_layers` with one layer)."""
    return cross_validated_layers({"layer": X}, design, encoder_spec, cv, {"layer": context})[
        "layer"
    ]


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


def _layer_depth(name: str, layer, position: int, n_layers: int) -> float:
    """Relative depth of a layer (0 = input, 1 = last): as the features store it, if it does
    (feature spaces fitted together: that of the first space)."""
    if isinstance(layer, dict):
        layer = next(iter(layer.values()))
    if "relative_depth" in layer.coords:
        return float(layer.coords["relative_depth"])
    if "relative_depth" in layer.attrs:
        return float(layer.attrs["relative_depth"])
    return position / max(n_layers - 1, 1)


REFIT_NULL_KIND = "refit with permuted stimulus labels"
PERMUTE_NULL_KIND = "permuted stimulus labels"


def _centred_r(Y: np.ndarray, pred: np.ndarray, test_folds) -> np.ndarray:
    """Pooled r over rows after centring each test fold, for (..., rows, voxels) arrays."""
    Yc, Pc = np.array(Y, dtype=np.float64), np.array(pred, dtype=np.float64)
    for test in test_folds:
        Yc[..., test, :] -= Yc[..., test, :].mean(-2, keepdims=True)
        Pc[..., test, :] -= Pc[..., test, :].mean(-2, keepdims=True)
    num = (Yc * Pc).sum(-2)
    den = np.sqrt((Yc * Yc).sum(-2) * (Pc * Pc).sum(-2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def refit_null(
    design: Design,
    Xs: dict,
    encoder_spec: dict,
    cv: dict,
    contexts: dict,
    observed: dict,
    n_permutations: int = 1000,
    random_state=0,
    batch_bytes: int = 2**28,
) -> dict:
    """Exact image null: the whole cross-validation refitted to permuted stimulus labels.

    One permutation of the images is applied to the responses (images move between the
    training and test sets of every fold, as they could under the null), and every fold's
    encoder is refitted, its hyper-parameters (ridge: per-voxel alpha by inner CV) chosen
    again; the pooled r after centring each test fold is computed as for the observed score.
    The permuted copies of the responses go through the CV loop as extra voxels, so a kind
    that batches voxels (the ridge sweep) fits many permutations at once. The same
    permutations serve every voxel, whatever voxels are passed (voxel shards share them).

    Parameters
    ----------
    design : Design
        Image design with ``train_on="mean"``.
    Xs : dict of layer name to ndarray
        Features of the layers.
    encoder_spec, cv : dict
    contexts : dict of layer name to EncoderContext
    observed : dict of layer name to CVResult
        Observed out-of-fold predictions.
    n_permutations : int
    random_state : int
    batch_bytes : int
        Memory of one batch of permuted responses.

    Returns
    -------
    dict of layer name to PermutationResult (kind ``"refit"``)
    """
    Y = design.Y
    n, v = Y.shape
    test_folds = [test for _, test in design.folds]
    obs = {name: _centred_r(Y, observed[name].predictions, test_folds) for name in Xs}
    rng = np.random.default_rng(random_state)
    perms = np.stack([rng.permutation(n) for _ in range(n_permutations)])
    null = {name: np.empty((n_permutations, v), dtype=np.float32) for name in Xs}
    step = max(1, int(batch_bytes // (4 * n * max(v, 1) * max(len(Xs), 1))))
    for start in tqdm(range(0, n_permutations, step), desc="refit null", unit="batch"):
        batch = perms[start : start + step]
        Yp = Y[batch]  # (b, n, v): permuted responses, as b * v extra voxels
        b = len(batch)
        stacked = replace(design, Y=Yp.transpose(1, 0, 2).reshape(n, b * v))
        results = cross_validated_layers(Xs, stacked, encoder_spec, cv, contexts, split=False)
        for name, result in results.items():
            pred = result.predictions.reshape(n, b, v).transpose(1, 0, 2)
            null[name][start : start + b] = _centred_r(Yp, pred, test_folds)
    out = {}
    for name in Xs:
        exceed = (null[name] >= obs[name][None] - 1e-6).sum(0)
        p = np.where(np.isnan(obs[name]), np.nan, (1.0 + exceed) / (1.0 + n_permutations))
        out[name] = stats.PermutationResult(
            obs[name],
            p,
            np.nanmean(null[name], 0),
            np.nanpercentile(null[name], 95, axis=0),
            n_permutations,
            "refit",
        )
    return out


def _width(layer) -> int:
    """Features per row of a layer (of all spaces of a joint layer, side by side)."""
    if isinstance(layer, dict):
        return sum(_width(a) for a in layer.values())
    return int(np.prod(layer.shape[1:]))


def check_space_ids(spaces: dict, source: str = "features") -> None:
    """Raise unless the feature spaces of a joint layer (banded ridge) hold the same stimuli."""
    names = list(spaces)
    first = spaces[names[0]]
    ids = set(first[dims.STIMULUS_ID].values.astype(str).tolist())
    for name in names[1:]:
        other = set(spaces[name][dims.STIMULUS_ID].values.astype(str).tolist())
        if other != ids:
            diff = sorted(ids ^ other)
            raise InputError(
                f"{spaces[name].attrs.get('store', source)}: feature space {name!r} holds "
                f"other stimuli than {names[0]!r} ({first.attrs.get('store', source)}): "
                f"{len(diff)} stimulus id(s) in one only, e.g. {diff[:3]}; the spaces of a "
                "banded encoder must come from one stimulus set"
            )


def _null_kind(encoder_spec: dict, design: Design) -> str:
    """The image null of an encoder spec (its generic ``null`` key): ``permute`` or ``refit``.

    ``permute`` (default): stimulus labels permuted within each test fold, predictions kept
    (cheap; valid but conservative at small alpha, and not uniform). ``refit``: the exact
    null of :func:`refit_null` (every fold refitted per permutation: costs n_permutations
    fits, batched as voxels). Narratives always use the circular shift.
    """
    wanted = encoder_spec.get("null", "permute")
    if wanted not in ("refit", "permute"):
        raise InputError(f"encoder null must be 'refit' or 'permute', got {wanted!r}")
    if design.kind != "images":
        return "permute"
    if wanted == "refit" and design.Y_train is not None:
        raise InputError("the refit null needs cv.train_on: mean (trials move with images)")
    return wanted


def shard_voxels(n_voxels: int, index: int, n_shards: int) -> np.ndarray:
    """Voxel indices of shard ``index`` of ``n_shards`` (contiguous, nearly equal chunks)."""
    if not (isinstance(n_shards, int) and n_shards >= 1 and 0 <= index < n_shards):
        raise InputError(f"voxel shard must be i/N with 0 <= i < N, got {index}/{n_shards}")
    if n_shards > n_voxels:
        raise InputError(f"{n_shards} shards are more than the {n_voxels} voxels")
    return np.array_split(np.arange(n_voxels), n_shards)[index]


def merge_shards(shards: list[xr.Dataset]) -> xr.Dataset:
    """Scores of an unsharded run from the Scores of its voxel shards (any order).

    Voxels are concatenated in shard order and q (Benjamini-Hochberg) is recomputed over all
    voxels of each layer; every per-voxel score is unchanged, since voxels are fitted
    independently and the null's permutations do not depend on the voxels.
    """
    if not shards:
        raise InputError("no shard Scores to merge")
    keyed = []
    for ds in shards:
        tag = str(ds.attrs.get("voxel_shard", ""))
        index, _, total = tag.partition("/")
        if not total:
            raise InputError("a Scores file to merge has no voxel_shard attribute")
        keyed.append((int(index), int(total), ds))
    keyed.sort(key=lambda item: item[0])
    totals = {total for _, total, _ in keyed}
    if totals != {len(keyed)} or [i for i, _, _ in keyed] != list(range(len(keyed))):
        raise InputError(
            f"shards {[f'{i}/{t}' for i, t, _ in keyed]} are not one complete set of shards"
        )
    merged = xr.concat([ds for _, _, ds in keyed], dim=dims.VOXEL, data_vars="minimal")
    if dims.CEILING in merged and dims.LAYER in merged[dims.CEILING].dims:
        merged[dims.CEILING] = merged[dims.CEILING].isel({dims.LAYER: 0}, drop=True)
    merged[dims.Q] = (
        merged[dims.P].dims,
        np.stack([stats.fdr_bh(p) for p in merged[dims.P].values]).astype(np.float32),
    )
    merged.attrs = {k: v for k, v in keyed[0][2].attrs.items() if k != "voxel_shard"}
    return merged


def _checkpoint_file(folder, name: str) -> Path:
    return Path(folder) / f"{name}.npz"


def _load_checkpoints(folder, names) -> dict[str, dict]:
    out = {}
    for name in names:
        path = _checkpoint_file(folder, name)
        if path.exists():
            with np.load(path) as data:
                out[name] = {key: data[key] for key in data.files}
    return out


def _save_checkpoint(folder, name: str, scores: dict) -> None:
    with atomic_path(_checkpoint_file(folder, name)) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **scores)


def _layer_batch(encoder_spec: dict, n_layers: int) -> int:
    """Layers the loop fits at once: the spec's generic ``layer_batch`` (default all)."""
    value = encoder_spec.get("layer_batch", "all")
    if value in (None, "all"):
        return max(n_layers, 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"encoder layer_batch must be 'all' or a positive integer, got {value!r}")
    return value


def _score_layer(
    design: Design, result: CVResult, stats_spec: dict, null=None, roi_labels=None
) -> dict[str, np.ndarray]:
    """Scores of one layer's out-of-fold predictions: r, R², p, q, null summary, alpha and,
    with ``roi_labels``, the bootstrap interval of each ROI's mean r."""
    scores = score_predictions(design, result.predictions, stats_spec)
    if null is not None:  # the refit null replaces the within-fold permutation's
        scores[dims.P] = null.p
        scores[dims.R_NULL_MEAN] = null.null_mean
        scores[dims.R_NULL_P95] = null.null_p95
    scores[dims.Q] = stats.fdr_bh(scores[dims.P])
    if roi_labels is not None and stats_spec["n_bootstrap"]:
        scores.update(roi_intervals(design, result.predictions, roi_labels, stats_spec))
    scores[dims.ALPHA] = (
        np.median(result.alphas, axis=0)
        if result.alphas is not None
        else np.full(design.Y.shape[1], np.nan)
    )
    if result.split:
        scores.update(split_scores(design, result.split, scores[dims.R2]))
    return scores


def split_scores(design: Design, parts: dict, r2: np.ndarray) -> dict[str, np.ndarray]:
    """Per-space R² of a banded fit (variance partitioning), each (n_spaces, n_voxels).

    - ``r2_split``: himalaya's ``r2_score_split`` (product measure) of the held-out per-space
      predictions against the responses, each test fold centred: pooled over folds for images,
      within each test fold and averaged for narratives (as r is scored). The spaces sum to the
      joint R² of the fold-centred prediction.
    - ``r2_without`` / ``r2_unique`` (when the encoder refitted without each space): the R² of
      the model without space i, scored exactly as ``r2``, and ``r2 - r2_without``, the
      variance only space i explains.
    """
    from himalaya.backend import get_backend, set_backend
    from himalaya.scoring import r2_score_split

    test_folds = [test for _, test in design.folds]
    previous = get_backend()
    set_backend("numpy")
    try:
        if design.kind == "images":
            Y = _centre_folds(design.Y, test_folds)
            pred = np.stack([_centre_folds(p, test_folds) for p in parts["split"]])
            r2_split = r2_score_split(Y, pred)
        else:
            per_fold = []
            for test in test_folds:
                Y = design.Y[test] - design.Y[test].mean(0)
                pred = parts["split"][:, test].astype(np.float64)
                per_fold.append(r2_score_split(Y, pred - pred.mean(1, keepdims=True)))
            r2_split = np.mean(per_fold, axis=0)
    finally:
        set_backend(previous)
    out = {dims.R2_SPLIT: np.asarray(r2_split, dtype=np.float64)}
    if "without" in parts:
        if design.kind == "images":
            without = np.stack([correlation.r2_score(design.Y, p) for p in parts["without"]])
        else:
            without = np.stack(
                [
                    correlation.foldwise(correlation.r2_score, design.Y, p, test_folds)
                    for p in parts["without"]
                ]
            )
        out[dims.R2_WITHOUT] = without
        out[dims.R2_UNIQUE] = np.asarray(r2)[None] - without
    return out


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
    voxel_shard: tuple[int, int] | None = None,
    checkpoint_dir: str | None = None,
):
    """Fit and score an encoder for every layer of a model against one subject's responses.

    Parameters
    ----------
    responses : Dataset
        Validated Responses (images or narrative).
    layers : dict of layer name to DataArray
        Features per layer: (stimulus or word, unit), or (stimulus, token, unit) for encoders
        that take patch tokens. A value may also be a dict of space name to DataArray: feature
        spaces fitted together (banded ridge, :func:`alignment.encoders.banded.space_layers`);
        each is built like a layer (narratives: resampled, filtered and delayed), they go side
        by side into one matrix, the encoder learns their widths from its context
        (``spaces``, ``space_sizes``), and the Scores gain (layer, space, voxel) variables
        ``r2_split`` and, when the encoder refits without each space, ``r2_without`` and
        ``r2_unique`` (:func:`split_scores`).
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
    voxel_shard : (index, n_shards), optional
        Fit only the ``index``-th of ``n_shards`` contiguous voxel chunks
        (:func:`shard_voxels`); :func:`merge_shards` joins the shards' Scores into those of an
        unsharded run (FDR over all voxels after the merge).
    checkpoint_dir : str, optional
        Folder where each finished layer's scores are saved atomically and reused on a rerun
        (the caller keys it by everything that changes the numbers); a killed job loses only
        the layers in flight. Not used with ``return_interpretation``.

    Returns
    -------
    Scores Dataset with dims (layer, voxel): r, r2, p, q, r_null_mean, r_null_p95, alpha, and
    ceiling (voxel); with ``return_interpretation``, also a dict of layer name to Dataset.
    """
    stats_spec = {**STATS_DEFAULTS, **stats_spec}
    timeseries_spec = timeseries_spec or {}
    kind = encoder_kind(encoder_spec)
    if voxel_shard is not None:
        chunk = shard_voxels(responses.sizes[dims.VOXEL], *voxel_shard)
        responses = responses.isel({dims.VOXEL: chunk})
        ceiling = None if ceiling is None else np.asarray(ceiling)[chunk]
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
        subject=responses.attrs.get("subject"),
        dataset=responses.attrs.get("dataset"),
    )
    interpretations = {}
    # a shard holds only part of each ROI, so ROI-mean intervals are left to unsharded runs
    roi_labels = None
    if voxel_shard is None or voxel_shard[1] == 1:
        roi_labels = (
            responses[dims.ROI].values
            if dims.ROI in responses.coords
            else np.full(design.Y.shape[1], "all")
        )
    names = list(layers)
    saved = {}
    if checkpoint_dir and not return_interpretation:
        saved = _load_checkpoints(checkpoint_dir, names)
        if saved:
            log.info("reusing the checkpointed scores of %d layer(s): %s", len(saved), list(saved))
    done: dict[str, dict] = dict(saved)
    group = _layer_batch(encoder_spec, len(names))
    null_kind = _null_kind(encoder_spec, design)
    widest = max((_width(layers[n]) for n in names), default=0)
    if narrative:
        widest *= len(timeseries_spec.get("delays", TIMESERIES_DEFAULTS["delays"]))
    memory.preflight(
        memory.encode_peak_bytes(
            n_rows=design.Y.shape[0],
            n_trials=responses.sizes[row_dim(responses)],
            n_voxels=design.Y.shape[1],
            n_features=widest,
            n_layers=min(group, len(names)),
            n_permutations=stats_spec["n_permutations"],
            refit_null=null_kind == "refit",
        ),
        responses_source,
    )
    todo = [name for name in names if name not in saved]
    # closed on error too, so a message printed after it starts on a line of its own
    with tqdm(total=len(names), initial=len(saved), desc="layers", unit="layer") as progress:
        for start in range(0, len(todo), group):
            batch = todo[start : start + group]
            Xs, contexts = {}, {}
            for name in batch:
                layer = layers[name]

                def matrix(arr, source=features_source):
                    if narrative:
                        return narrative_features_matrix(arr, responses, timeseries_spec, source)
                    return image_features_matrix(arr, row_ids, source, responses_source)

                extra = {}
                if isinstance(layer, dict):  # feature spaces fitted together (banded ridge)
                    check_space_ids(layer, features_source)
                    mats = [
                        matrix(a, a.attrs.get("store", features_source)) for a in layer.values()
                    ]
                    X = np.concatenate(mats, axis=1)
                    extra = {"spaces": list(layer), "space_sizes": [m.shape[1] for m in mats]}
                    layer_attrs = next(iter(layer.values())).attrs
                else:
                    X, layer_attrs = matrix(layer), layer.attrs
                check_features(X, kind, features_source)
                Xs[name] = X
                contexts[name] = replace(
                    base_context,
                    features={**base_context.features, **layer_attrs, **extra, "layer": name},
                )
            results = cross_validated_layers(Xs, design, encoder_spec, cv, contexts)
            nulls = {}
            if null_kind == "refit":
                nulls = refit_null(
                    design,
                    Xs,
                    encoder_spec,
                    cv,
                    contexts,
                    results,
                    n_permutations=stats_spec["n_permutations"],
                    random_state=stats_spec["random_state"],
                )
            for name in batch:
                result = results.pop(name)
                scores = _score_layer(design, result, stats_spec, nulls.get(name), roi_labels)
                scores = {k: np.asarray(v, dtype=np.float32) for k, v in scores.items()}
                done[name] = scores
                if checkpoint_dir and not return_interpretation:
                    _save_checkpoint(checkpoint_dir, name, scores)
                if result.interpretation:
                    interpretations[name] = xr.Dataset(
                        {
                            key: ((dims.STIMULUS, *[f"{key}_dim{i}" for i in range(1, v.ndim)]), v)
                            for key, v in result.interpretation.items()
                        },
                        coords=(
                            {dims.STIMULUS_ID: (dims.STIMULUS, row_ids)}
                            if row_ids is not None
                            else {}
                        ),
                    )
                log.info(
                    "%s: median r %.3f, max r %.3f",
                    name,
                    np.nanmedian(scores[dims.R]),
                    np.nanmax(scores[dims.R]),
                )
                progress.update(1)
    out: dict[str, list] = {}
    for name in names:
        for key, value in done[name].items():
            out.setdefault(key, []).append(value)
    layer_names = list(layers)
    voxel_coords = _voxel_coords(responses)
    space_coords = {}
    if layer_names and isinstance(layers[layer_names[0]], dict):
        space_coords = {dims.SPACE: list(layers[layer_names[0]])}
    ds = xr.Dataset(
        {
            key: (
                (dims.LAYER, dims.SPACE, dims.VOXEL)
                if np.ndim(vals[0]) == 2
                else (dims.LAYER, dims.VOXEL),
                np.stack(vals),
            )
            for key, vals in out.items()
        },
        coords={
            **space_coords,
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
        "null_kind": (
            NULL_NAMES.get(stats_spec["narrative_null"], stats_spec["narrative_null"])
            if narrative
            else (REFIT_NULL_KIND if null_kind == "refit" else PERMUTE_NULL_KIND)
        ),
        "scoring": "within each test fold" if narrative else "pooled out-of-fold",
        "n_folds": str(cv.get("n_folds", CV_DEFAULTS["n_folds"])),
        "package_version": __version__,
    }
    if voxel_shard is not None:
        ds.attrs["voxel_shard"] = f"{voxel_shard[0]}/{voxel_shard[1]}"
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
