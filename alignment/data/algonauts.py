"""Algonauts 2023 challenge data (NSD in the challenge's fsaverage-subset space).

Layout under ``root`` (the challenge download; see data/README.md)::

    subjNN/training_split/training_fmri/lh_training_fmri.npy   (images, lh vertices) float32
    subjNN/training_split/training_fmri/rh_training_fmri.npy
    subjNN/training_split/training_images/train-NNNN_nsd-NNNNN.png
    subjNN/roi_masks/lh.all-vertices_fsaverage_space.npy       (163842,) which vertices are used
    subjNN/roi_masks/lh.<atlas>_challenge_space.npy            ROI code per challenge vertex
    subjNN/roi_masks/mapping_<atlas>.npy                       dict code -> ROI name

Responses are already z-scored and averaged over repeats (one row per image), so the pipeline
cannot estimate a ceiling from them; the ceiling is NaN (the challenge kept its noise ceilings).
Vertices carry their fsaverage index, so scores map onto fsaverage (``mesh:`` for the surface).
Image ids are ``nsd-NNNNN`` as in the file names.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from alignment import dims
from alignment.data._util import attach_ceiling, require, require_dir
from alignment.data.responses import make_responses
from alignment.io import InputError

ATLASES = ("prf-visualrois", "floc-bodies", "floc-faces", "floc-places", "floc-words", "streams")
_HEMIS = {"left": "lh", "right": "rh"}
_IMAGE = re.compile(r"^train-(\d+)_(nsd-\d+)\.png$")


def _subject_dir(root: Path, subject: str) -> Path:
    m = re.fullmatch(r"(?:subj|sub-)?0*(\d+)", str(subject))
    path = root / (f"subj{int(m.group(1)):02d}" if m else str(subject))
    if not path.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise InputError(f"{path}: no such subject in the data (subjects there: {found})")
    return path


def training_images(sdir: Path) -> pd.DataFrame:
    """stimulus_id and path of the training images, in the order of the fMRI rows."""
    folder = require_dir(sdir / "training_split" / "training_images", "training images")
    rows = []
    for p in folder.iterdir():
        m = _IMAGE.match(p.name)
        if m:
            rows.append((int(m.group(1)), m.group(2), str(p.resolve())))
    if not rows:
        raise InputError(f"{folder}: no train-NNNN_nsd-NNNNN.png images")
    rows.sort()
    return pd.DataFrame([(sid, path) for _, sid, path in rows], columns=[dims.STIMULUS_ID, "path"])


def read_responses(spec: dict, subject: str, name: str = "algonauts2023") -> xr.Dataset:
    """One subject's training-split responses over both hemispheres.

    Options: ``root``; ``rois`` (atlases that label the vertices, default all six); ``mesh``.
    """
    root = require_dir(spec["root"], "Algonauts 2023 root")
    sdir = _subject_dir(root, subject)
    images = training_images(sdir)
    parts, hemi, vertex, roi = [], [], [], []
    for h, short in _HEMIS.items():
        path = require(sdir / "training_split/training_fmri" / f"{short}_training_fmri.npy", "fMRI")
        values = np.load(path, mmap_mode="r")
        if values.ndim != 2 or values.shape[0] != len(images):
            raise InputError(
                f"{path}: shape {values.shape}, expected ({len(images)} images, vertices)"
            )
        mask_path = require(
            sdir / "roi_masks" / f"{short}.all-vertices_fsaverage_space.npy", "vertex mask"
        )
        used = np.flatnonzero(np.load(mask_path))
        if used.size != values.shape[1]:
            raise InputError(
                f"{mask_path}: {used.size} vertices, but {path} has {values.shape[1]} columns"
            )
        labels = np.full(used.size, dims.NO_ROI, dtype=object)
        for atlas in spec.get("rois", ATLASES):
            codes = np.load(
                require(sdir / "roi_masks" / f"{short}.{atlas}_challenge_space.npy", f"{atlas} mask")
            ).astype(int)
            mapping = np.load(
                require(sdir / "roi_masks" / f"mapping_{atlas}.npy", f"{atlas} mapping"),
                allow_pickle=True,
            ).item()
            free = (labels == dims.NO_ROI) & (codes > 0)
            labels[free] = [str(mapping.get(int(c), f"{atlas}-{c}")) for c in codes[free]]
        parts.append(np.asarray(values, dtype=np.float32))
        hemi.append(np.full(used.size, h))
        vertex.append(used)
        roi.append(labels.astype(str))
    attrs = {"dataset": name, "subject": subject, "space": "fsaverage", "zscored": "by the challenge"}
    if spec.get("mesh"):
        attrs["mesh"] = str(spec["mesh"])
    ds = make_responses(
        np.concatenate(parts, axis=1),
        kind="images",
        stimulus_id=images[dims.STIMULUS_ID].to_numpy(),
        roi=np.concatenate(roi),
        hemi=np.concatenate(hemi),
        vertex=np.concatenate(vertex),
        attrs=attrs,
    )
    nan = np.full(ds.sizes[dims.VOXEL], np.nan)
    return attach_ceiling(ds, nan, "none: Algonauts 2023 releases repeat-averaged responses only")


def read_stimuli(spec: dict, subjects: list[str], name: str = "algonauts2023") -> pd.DataFrame:
    """The training images of every listed subject (one row per nsd id)."""
    root = require_dir(spec["root"], "Algonauts 2023 root")
    tables = [training_images(_subject_dir(root, s)) for s in subjects]
    return pd.concat(tables, ignore_index=True).drop_duplicates(dims.STIMULUS_ID)
