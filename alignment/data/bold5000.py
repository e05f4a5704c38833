"""BOLD5000 (Chang et al. 2019): ROI voxels per trial, stimulus lists and the repeated images.

Layout under ``root`` (release 1.0; see data/README.md)::

    ROIs/CSI1/h5/CSI1_ROIs_TR34.h5      keys LHPPA ... RHEarlyVis: (trials, voxels)
    ROIs/CSI1/mat/CSI1_ROIs_TR34.mat    the same as MATLAB (either one is read)
    ROIs/stim_lists/CSI01_stim_lists.txt   one image file name per trial
    BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli/{COCO,ImageNet,Scene}/<image>

Image ids are the file names without a ``rep_`` prefix (the 113 images shown repeatedly), so
their repeats share an id and give the ceiling (ncsnr from the trials). ``tr`` picks the
released time point (``TR34``: mean of TRs 3-4, the default; ``TR1`` ... ``TR5``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from alignment import dims
from alignment.data._util import hemi_from_name, repetition_index, require, require_dir
from alignment.data.responses import make_responses
from alignment.io import InputError

ROIS = ("EarlyVis", "LOC", "OPA", "PPA", "RSC")
_FOLDERS = ("COCO", "ImageNet", "Scene")


def subject_name(subject: str) -> tuple[str, str]:
    """``"1"``, ``"01"``, ``"CSI1"`` -> ("CSI1", "CSI01")."""
    m = re.fullmatch(r"(?:CSI|sub-?)?0*(\d)", str(subject))
    if m is None or not 1 <= int(m.group(1)) <= 4:
        raise InputError(f"BOLD5000 has subjects CSI1..CSI4; {subject!r} is not one of them")
    n = int(m.group(1))
    return f"CSI{n}", f"CSI0{n}"


def stimulus_id(name: str) -> str:
    """The image of a stimulus-list entry: ``rep_`` (repeated images) stripped."""
    name = str(name).strip()
    return name[4:] if name.startswith("rep_") else name


def _read_rois(root: Path, csi: str, tr: str) -> dict[str, np.ndarray]:
    base = root / "ROIs" / csi
    h5 = base / "h5" / f"{csi}_ROIs_{tr}.h5"
    mat = base / "mat" / f"{csi}_ROIs_{tr}.mat"
    if h5.exists():
        import h5py

        with h5py.File(h5, "r") as fh:
            return {k: np.asarray(fh[k][()], dtype=np.float32) for k in fh}
    if mat.exists():
        from scipy.io import loadmat

        data = loadmat(mat)
        return {k: np.asarray(v, dtype=np.float32) for k, v in data.items() if not k.startswith("__")}
    require_dir(root / "ROIs", "BOLD5000 ROIs")
    raise InputError(f"{h5}: missing BOLD5000 ROI file (nor {mat.name}); see data/README.md")


def read_stim_list(root: Path, csi0: str) -> list[str]:
    path = require(root / "ROIs" / "stim_lists" / f"{csi0}_stim_lists.txt", "stimulus list")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def read_responses(spec: dict, subject: str, name: str = "bold5000") -> xr.Dataset:
    """One subject's trials over the ROIs (LH/RH EarlyVis, LOC, OPA, PPA, RSC).

    Options: ``root``; ``tr`` (TR34 default); ``rois`` (ROI names without the LH/RH prefix).
    """
    root = require_dir(spec["root"], "BOLD5000 root")
    csi, csi0 = subject_name(subject)
    data = _read_rois(root, csi, spec.get("tr_file", "TR34"))
    trials = read_stim_list(root, csi0)
    wanted = spec.get("rois", ROIS)
    parts, roi, hemi, vertex = [], [], [], []
    for key in sorted(data):
        region = key[2:] if key[:2] in ("LH", "RH") else key
        if region not in wanted:
            continue
        values = data[key]
        if values.ndim != 2 or values.shape[0] != len(trials):
            raise InputError(
                f"{root / 'ROIs' / csi}: ROI {key} has shape {values.shape}, but the stimulus "
                f"list has {len(trials)} trials"
            )
        parts.append(values)
        roi.append(np.full(values.shape[1], region))
        hemi.append(np.full(values.shape[1], hemi_from_name(key)))
        vertex.append(np.arange(values.shape[1]))
    if not parts:
        raise InputError(f"{root / 'ROIs' / csi}: none of the ROIs {list(wanted)} (keys: {sorted(data)})")
    ids = np.array([stimulus_id(t) for t in trials])
    return make_responses(
        np.concatenate(parts, axis=1),
        kind="images",
        stimulus_id=ids,
        repetition=repetition_index(ids),
        roi=np.concatenate(roi),
        hemi=np.concatenate(hemi),
        vertex=np.concatenate(vertex),
        attrs={"dataset": name, "subject": subject, "space": "native", "tr_file": spec.get("tr_file", "TR34")},
    )


def read_stimuli(spec: dict, subjects: list[str], name: str = "bold5000") -> pd.DataFrame:
    """stimulus_id and image path of every image the subjects saw."""
    root = require_dir(spec["root"], "BOLD5000 root")
    presented = require_dir(
        root / "BOLD5000_Stimuli" / "Scene_Stimuli" / "Presented_Stimuli", "BOLD5000 images"
    )
    index = {p.name: p for folder in _FOLDERS if (presented / folder).is_dir()
             for p in (presented / folder).iterdir()}  # fmt: skip
    ids: dict[str, None] = {}
    for subject in subjects:
        for t in read_stim_list(root, subject_name(subject)[1]):
            ids.setdefault(stimulus_id(t))
    missing = [i for i in ids if i not in index]
    if missing:
        raise InputError(f"{presented}: {len(missing)} listed image(s) missing, first: {missing[0]}")
    return pd.DataFrame({dims.STIMULUS_ID: list(ids), "path": [str(index[i].resolve()) for i in ids]})
