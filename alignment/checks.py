"""Checks that run before any fitting, so bad input fails in a second with one clear line.

Each raises :class:`~alignment.io.InputError` naming the file and the problem (the CLI turns it
into exit status 2): folds that the data cannot fill, word timings that outrun the responses
(a TR count or ``tr`` that does not match the story), a model folder that is not one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from alignment import dims
from alignment.io import InputError

__all__ = ["check_folds", "check_model_source", "check_word_timing"]


def check_folds(
    responses: xr.Dataset, cv: dict, timeseries_spec: dict | None, source: str | Path
) -> None:
    """Build the outer and inner folds the CV loop will use; fail clearly if the data can't.

    Parameters
    ----------
    responses : Dataset
        Validated Responses.
    cv, timeseries_spec : dict
        The config sections (defaults as in :mod:`alignment.evaluation`).
    source : path-like
        The responses file, for the message.
    """
    from alignment import evaluation
    from alignment.data.responses import row_dim
    from alignment.metrics import stats

    cv = {**evaluation.CV_DEFAULTS, **cv}
    narrative = row_dim(responses) == dims.TIME
    what = (
        f"{responses.sizes[dims.TIME]} TRs"
        if narrative
        else f"{np.unique(responses[dims.STIMULUS_ID].values).size} distinct stimuli"
    )
    try:
        if narrative:
            design = evaluation.narrative_design(responses, cv, timeseries_spec or {})
        else:
            design, _ = evaluation.image_design(responses, cv)
        dummy = np.zeros((len(design.Y), 1), dtype=np.float32)
        for train, _ in design.folds:
            evaluation._fold_training_set(dummy, design, train, cv)
        # the statistics score within each test fold and need a few rows there
        stats._check_folds([test for _, test in design.folds], len(design.Y))
    except InputError:
        raise
    except ValueError as err:
        keys = "cv.n_folds, cv.inner_folds" + (", cv.gap_trs" if narrative else "")
        raise InputError(
            f"{source}: {what} are too few for the folds ({err}); lower {keys} or add data"
        ) from err


def check_word_timing(
    responses: xr.Dataset,
    words: xr.DataArray,
    responses_source: str | Path,
    features_source: str | Path,
) -> None:
    """Every run's words must fall within its responses' TRs (TR count and ``tr`` match).

    Parameters
    ----------
    responses : Dataset
        Narrative Responses with ``run`` on ``time`` and attrs ``tr``, ``first_volume_time``.
    words : DataArray
        One layer of word features, with ``run``, ``onset`` and ``offset`` coordinates.
    """
    tr = float(responses.attrs["tr"])
    start = float(responses.attrs.get("first_volume_time", 0.0))
    runs = responses[dims.RUN].values.astype(str)
    word_runs = words[dims.RUN].values.astype(str)
    ends = words[dims.OFFSET].values if dims.OFFSET in words.coords else words[dims.ONSET].values
    for run in dict.fromkeys(runs):
        n_tr = int((runs == run).sum())
        span = start + n_tr * tr
        last = float(np.max(ends[word_runs == run], initial=-np.inf))
        if last > span + tr:
            raise InputError(
                f"{responses_source}: run {str(run)!r} has {n_tr} TRs ({span:.1f} s at "
                f"tr={tr:g} s) but its words in {features_source} go on to {last:.1f} s; the TR "
                "count or 'tr' does not match the stimulus"
            )


def check_model_source(source: str, name: str = "model") -> None:
    """A ``source`` that names a local path must be a model folder (with a config.json).

    A Hugging Face id (``org/name``) whose first part is no local folder is left to the loader.
    """
    path = Path(source).expanduser()
    local = (
        source.startswith((".", "/", "~"))
        or path.exists()
        or (len(path.parts) > 1 and Path(path.parts[0]).is_dir())
    )
    if not local:
        return
    if not path.exists():
        raise InputError(f"{source}: model folder does not exist (models.{name}.source)")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputError(
            f"{source}: not a model folder (no config.json; save one with save_pretrained)"
        )
