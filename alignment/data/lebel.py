"""LeBel et al. (2023), OpenNeuro ds003020: story listening, per-story responses and TextGrids.

Layout under ``root`` (the ds003020 folder)::

    derivative/preprocessed_data/UTSxx/<story>.hf5     key "data": (TRs, voxels), trimmed
    derivative/TextGrids/<story>.TextGrid              word and phone tiers
    derivative/respdict.json                           TRs per story before trimming

TR trimming follows the dataset's reference code (HuthLab/deep-fMRI-dataset,
``load_simulated_trfiles`` and ``apply_zscore_and_hrf``): a story of ``n = respdict[story]``
TRs has TRs ``k = 0 .. n - pad - 1`` at ``k * tr - start_time`` s on the story clock
(``pad = 5``, ``start_time = 10`` s, ``tr = 2.0`` as simulated there); features are then trimmed
by ``[5 + trim : -trim]`` (``trim = 5``), and the released responses hold exactly those TRs,
``n - pad - (5 + trim) - trim`` rows. The first kept
TR therefore starts at ``(5 + trim) * tr - start_time`` s, which becomes
``attrs["first_volume_time"]``.

Ceiling: the test story (``wheretheressmoke``) was heard repeatedly. When its file holds the
repeats (``data`` of shape (repeats, TRs, voxels)), the ceiling is their split-half
reliability (Spearman-Brown, for the mean of all repeats) and the mean is used as its run;
otherwise the pipeline's inter-subject ceiling applies (two or more subjects).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from tqdm.auto import tqdm

from alignment import dims
from alignment.data._util import attach_ceiling, require, require_dir
from alignment.data.responses import make_responses
from alignment.io import InputError

log = logging.getLogger(__name__)

DEFAULTS = {
    "tr": 2.0,
    "start_time": 10.0,
    "pad": 5,
    "trim": 5,
    "test_story": "wheretheressmoke",
}


def _options(spec: dict) -> dict:
    return {**DEFAULTS, **{k: spec[k] for k in DEFAULTS if k in spec}}


def kept_trs(n_total: int, pad: int = 5, trim: int = 5) -> tuple[int, int]:
    """(first kept TR index, number kept) of a story with ``n_total`` TRs in respdict."""
    first = 5 + trim
    return first, n_total - pad - first - trim


def first_volume_time(tr: float = 2.0, start_time: float = 10.0, trim: int = 5) -> float:
    """Start of the first kept TR on the story clock, in seconds."""
    return (5 + trim) * tr - start_time


def _respdict(root: Path) -> dict:
    path = require(root / "derivative" / "respdict.json", "ds003020 respdict.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err


def _subject_dir(root: Path, subject: str) -> Path:
    base = require_dir(root / "derivative" / "preprocessed_data", "ds003020 preprocessed data")
    path = base / subject
    if not path.is_dir():
        found = sorted(p.name for p in base.iterdir() if p.is_dir())
        raise InputError(f"{path}: no such subject in the data (subjects there: {found})")
    return path


def subject_stories(root: Path, subject: str, stories=None) -> list[str]:
    """Stories of a subject: ``stories`` if given (each file must exist), else all present."""
    sdir = _subject_dir(root, subject)
    present = sorted(p.stem for p in sdir.glob("*.hf5"))
    if stories is None:
        if not present:
            raise InputError(f"{sdir}: no <story>.hf5 files")
        return present
    for story in stories:
        require(sdir / f"{story}.hf5", f"responses of story {story!r}")
    return list(stories)


def _read_hf5(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as fh:
        if "data" not in fh:
            raise InputError(f"{path}: no dataset 'data' (keys: {list(fh)})")
        return np.asarray(fh["data"][()], dtype=np.float32)


def read_responses(spec: dict, subject: str, name: str = "lebel2023") -> xr.Dataset:
    """One subject's stories as a (time, voxel) Responses, one run per story.

    Options: ``root``; ``stories`` (default all of the subject's); ``test_story``; ``tr``,
    ``start_time``, ``pad``, ``trim`` (reference-code trimming, defaults above).
    """
    from alignment.metrics.ceilings import split_half_ceiling

    root = require_dir(spec["root"], "ds003020 root")
    o = _options(spec)
    respdict = _respdict(root)
    stories = subject_stories(root, subject, spec.get("stories"))
    sdir = _subject_dir(root, subject)
    parts, runs, ceiling = [], [], None
    for story in tqdm(stories, desc=f"{subject} stories", unit="story"):
        path = sdir / f"{story}.hf5"
        data = _read_hf5(path)
        if story not in respdict:
            raise InputError(f"{root / 'derivative/respdict.json'}: no entry for story {story!r}")
        _, n_kept = kept_trs(int(respdict[story]), o["pad"], o["trim"])
        if data.ndim == 3 and story == o["test_story"]:
            ceiling = split_half_ceiling(data, random_state=0).ceiling
            data = data.mean(axis=0)
        if data.ndim != 2 or data.shape[0] != n_kept:
            raise InputError(
                f"{path}: {data.shape[0] if data.ndim == 2 else data.shape} rows, but respdict "
                f"gives {respdict[story]} TRs, i.e. {n_kept} after the reference trimming "
                f"(pad {o['pad']}, trim {o['trim']})"
            )
        if parts and data.shape[1] != parts[0].shape[1]:
            raise InputError(f"{path}: {data.shape[1]} voxels, other stories have {parts[0].shape[1]}")
        parts.append(data)
        runs.append(np.full(len(data), story))
    ds = make_responses(
        np.concatenate(parts),
        kind="narrative",
        run=np.concatenate(runs),
        attrs={
            "dataset": name,
            "subject": subject,
            "space": "native",
            "tr": float(o["tr"]),
            "first_volume_time": first_volume_time(o["tr"], o["start_time"], o["trim"]),
            "test_story": o["test_story"],
            "trimming": f"reference code: pad {o['pad']}, [5+{o['trim']}:-{o['trim']}]",
        },
    )
    if ceiling is not None:
        ds = attach_ceiling(ds, ceiling, f"split-half of the {o['test_story']} repeats")
    return ds


def read_stimuli(spec: dict, subjects: list[str], name: str = "lebel2023") -> pd.DataFrame:
    """Word timings (word, onset, offset, run = story) of every story the subjects heard."""
    from alignment.stimuli.narrative import read_word_table

    root = require_dir(spec["root"], "ds003020 root")
    stories: dict[str, None] = {}
    for subject in subjects:
        for story in subject_stories(root, subject, spec.get("stories")):
            stories.setdefault(story)
    grids = require_dir(root / "derivative" / "TextGrids", "ds003020 TextGrids")
    tables = [
        read_word_table(require(grids / f"{s}.TextGrid", f"TextGrid of {s!r}"), run=s)
        for s in stories
    ]
    return pd.concat(tables, ignore_index=True)
