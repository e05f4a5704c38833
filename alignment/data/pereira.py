"""Pereira et al. (2018): sentences read in the scanner, one averaged image per sentence.

Layout under ``root`` (the released per-subject folders; see data/README.md)::

    <subject>/examples_384sentences.mat    experiment 2 (also examples_243sentences.mat: exp. 3)
        examples                      (sentences, voxels) betas, averaged over 3 repeats
        keySentences                  the sentences
        labelsPassageForEachSentence  1-based passage of each sentence
        meta                          colToCoord, atlases, rois, roiMultimask, matrix, ...

Sentences are ``pereira<experiment>-NNN`` (1-based, file order). The passage of each sentence is
a ``passage`` coordinate on the stimulus dimension: cross-validation must keep a passage's
sentences together. The released data hold no single repeats, so no noise ceiling can be
estimated from them (the ceiling is NaN, named as such).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from alignment import dims
from alignment.data._util import attach_ceiling, hemi_from_name, require, require_dir
from alignment.data.responses import make_responses
from alignment.io import InputError

EXPERIMENTS = (384, 243)


def _mat_path(root: Path, subject: str, experiment: int) -> Path:
    sdir = root / subject
    if not sdir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise InputError(f"{sdir}: no such subject in the data (subjects there: {found})")
    return require(sdir / f"examples_{experiment}sentences.mat", f"experiment {experiment} data")


def load_experiment(root, subject: str, experiment: int = 384) -> dict:
    """The .mat file of one subject and experiment as plain Python/NumPy values."""
    from scipy.io import loadmat

    if int(experiment) not in EXPERIMENTS:
        raise InputError(f"Pereira experiment must be one of {EXPERIMENTS}, got {experiment!r}")
    path = _mat_path(require_dir(root, "Pereira root"), subject, int(experiment))
    try:
        mat = loadmat(path, simplify_cells=True)
    except (ValueError, NotImplementedError) as err:
        raise InputError(f"{path}: cannot be read as a MATLAB file ({err})") from err
    missing = [k for k in ("examples", "keySentences", "labelsPassageForEachSentence") if k not in mat]
    if missing:
        raise InputError(f"{path}: missing variable(s) {missing}")
    mat["_path"] = path
    return mat


def _as_list(x) -> list:
    if isinstance(x, np.ndarray):
        return x.ravel().tolist()
    return list(x) if isinstance(x, list | tuple) else [x]


def _atlas_labels(meta: dict, atlas: str, n_vox: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, roi name per voxel) from the atlases whose name contains ``atlas``."""
    names = [str(a) for a in _as_list(meta.get("atlases", []))]
    chosen = [i for i, a in enumerate(names) if atlas.lower() in a.lower()]
    if not chosen:
        raise InputError(f"{path}: no atlas matching {atlas!r} in meta.atlases {names}")
    masks = _as_list(meta["roiMultimask"])
    rois = _as_list(meta["rois"])
    label = np.full(n_vox, dims.NO_ROI, dtype=object)
    for i in chosen:
        codes = np.asarray(masks[i]).ravel().astype(int)
        if codes.size != n_vox:
            raise InputError(f"{path}: atlas {names[i]} labels {codes.size} voxels, not {n_vox}")
        roi_names = [str(r) for r in _as_list(rois[i])]
        free = (label == dims.NO_ROI) & (codes > 0)
        label[free] = [roi_names[c - 1] if c <= len(roi_names) else f"{names[i]}-{c}" for c in codes[free]]
    return label != dims.NO_ROI, label.astype(str)


def read_responses(spec: dict, subject: str, name: str = "pereira2018") -> xr.Dataset:
    """One subject's sentence responses (stimulus rows), voxels of the chosen atlas.

    Options: ``root``; ``experiment`` (384 or 243, default 384); ``atlas`` (substring of
    ``meta.atlases`` whose labelled voxels are kept, default ``language``; ``none`` keeps all
    voxels); ``space`` (default native).
    """
    experiment = int(spec.get("experiment", 384))
    mat = load_experiment(spec["root"], subject, experiment)
    path = mat["_path"]
    values = np.asarray(mat["examples"], dtype=np.float32)
    sentences = [str(s) for s in _as_list(mat["keySentences"])]
    passage = np.asarray(_as_list(mat["labelsPassageForEachSentence"]), dtype=np.int64)
    if values.ndim != 2 or values.shape[0] != len(sentences) or len(passage) != len(sentences):
        raise InputError(
            f"{path}: examples {values.shape}, {len(sentences)} sentences and {len(passage)} "
            "passage labels do not match"
        )
    meta = mat.get("meta", {}) or {}
    atlas = spec.get("atlas", "language")
    n_vox = values.shape[1]
    if atlas == "none":
        keep, roi = np.ones(n_vox, bool), np.full(n_vox, dims.NO_ROI)
    else:
        keep, roi = _atlas_labels(meta, atlas, n_vox, path)
    voxel_coords = {}
    if "colToCoord" in meta:
        ijk = np.asarray(meta["colToCoord"], dtype=np.int64).reshape(n_vox, 3)[keep]
        voxel_coords = {"i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2]}
    ds = make_responses(
        values[:, keep],
        kind="images",
        stimulus_id=[f"pereira{experiment}-{i + 1:03d}" for i in range(len(sentences))],
        roi=roi[keep],
        hemi=[hemi_from_name(r) for r in roi[keep]],
        vertex=np.flatnonzero(keep),
        attrs={
            "dataset": name,
            "subject": subject,
            "space": spec.get("space", "native"),
            "experiment": experiment,
            "atlas": atlas,
            "stimulus_kind": "sentences",
            "fold_groups": "passage",
        },
    )
    ds = ds.assign_coords(
        passage=(dims.STIMULUS, passage),
        **{k: (dims.VOXEL, v) for k, v in voxel_coords.items()},
    )
    ceiling = np.full(ds.sizes[dims.VOXEL], np.nan)
    return attach_ceiling(ds, ceiling, "none: the released data are averaged over repeats")


def read_stimuli(spec: dict, subjects: list[str], name: str = "pereira2018") -> pd.DataFrame:
    """Sentence table: ``stimulus_id``, ``sentence``, ``passage`` (same for every subject)."""
    experiment = int(spec.get("experiment", 384))
    table = None
    for subject in subjects:
        mat = load_experiment(spec["root"], subject, experiment)
        sentences = [str(s).strip() for s in _as_list(mat["keySentences"])]
        this = pd.DataFrame(
            {
                dims.STIMULUS_ID: [f"pereira{experiment}-{i + 1:03d}" for i in range(len(sentences))],
                "sentence": sentences,
                "passage": np.asarray(_as_list(mat["labelsPassageForEachSentence"]), dtype=int),
            }
        )
        if table is None:
            table = this
        elif not table["sentence"].equals(this["sentence"]):
            raise InputError(f"{mat['_path']}: sentences differ from those of {subjects[0]}")
    return table
