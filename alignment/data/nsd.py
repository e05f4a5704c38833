"""Natural Scenes Dataset (Allen et al. 2022): single-trial betas, images and ROIs -> Responses.

Layout under ``root`` (as released on the NSD AWS bucket; see data/README.md)::

    nsddata/experiments/nsd/nsd_expdesign.mat        masterordering, subjectim, sharedix
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5     imgBrick (73000, 425, 425, 3) uint8
    nsddata_betas/ppdata/subjNN/<space>/betas_fithrf_GLMdenoise_RR/
        betas_sessionSS.nii.gz                       func1pt8mm: (81, 104, 83, 750) int16
        lh|rh.betas_sessionSS.mgh                    fsaverage: (163842, 1, 1, 750)
        ncsnr.nii.gz, lh|rh.ncsnr.mgh                noise-ceiling SNR
    nsddata/ppdata/subjNN/func1pt8mm/roi/<atlas>.nii.gz
    nsddata/freesurfer/fsaverage/label/lh|rh.<atlas>.mgz and <atlas>.mgz.ctab

Index arithmetic (MATLAB, 1-based): trial ``t`` (0-based, 750 a session) shows the subject's
10k-image ``masterordering[t]``; its 73k id is ``subjectim[subject - 1, masterordering[t] - 1]``.
Images are named ``nsd-NNNNN`` with the 0-based 73k index (the row of ``imgBrick``). Integer
betas are divided by 300 (percent signal change) and z-scored within each session. The shared
1,000 images (``sharedix``) get ``split = "test"``, the standard NSD test set.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from tqdm.auto import tqdm

from alignment import dims
from alignment.data._util import attach_ceiling, require, require_dir, zscore_rows
from alignment.data.responses import average_repeats, make_responses
from alignment.io import InputError

log = logging.getLogger(__name__)

TRIALS_PER_SESSION = 750
N_SUBJECTS = 8
BETAS = "betas_fithrf_GLMdenoise_RR"
SPACES = ("fsaverage", "func1pt8mm")
DEFAULT_ROIS = ("prf-visualrois", "floc-faces", "floc-bodies", "floc-places", "floc-words")
_HEMIS = {"left": "lh", "right": "rh"}


def subject_number(subject: str) -> int:
    """``"01"``, ``"1"`` or ``"subj01"`` -> 1; an InputError outside 1..8."""
    m = re.fullmatch(r"(?:subj|sub-)?0*(\d+)", str(subject))
    if m is None or not 1 <= int(m.group(1)) <= N_SUBJECTS:
        raise InputError(f"NSD has subjects 01..08; {subject!r} is not one of them")
    return int(m.group(1))


def load_expdesign(root: str | Path) -> dict[str, np.ndarray]:
    """``masterordering`` (30000,), ``subjectim`` (8, 10000) and ``sharedix`` (1000,), 1-based."""
    from scipy.io import loadmat

    path = require(Path(root) / "nsddata/experiments/nsd/nsd_expdesign.mat", "NSD design file")
    mat = loadmat(path)
    missing = [k for k in ("masterordering", "subjectim", "sharedix") if k not in mat]
    if missing:
        raise InputError(f"{path}: missing variable(s) {missing}")
    return {
        "masterordering": np.asarray(mat["masterordering"]).ravel().astype(np.int64),
        "subjectim": np.atleast_2d(np.asarray(mat["subjectim"])).astype(np.int64),
        "sharedix": np.asarray(mat["sharedix"]).ravel().astype(np.int64),
    }


def trial_images(design: dict, subject: int, n_trials: int) -> np.ndarray:
    """0-based 73k index of the image of each of the subject's first ``n_trials`` trials.

    Parameters
    ----------
    design : dict
        From :func:`load_expdesign` (1-based MATLAB indices).
    subject : int
        1..8.
    n_trials : int
        Trials in the sessions read (750 each).
    """
    order = design["masterordering"][:n_trials]  # 1-based into the subject's 10k images
    if len(order) < n_trials:
        raise InputError(f"masterordering has {len(order)} trials, fewer than {n_trials}")
    ids_73k = design["subjectim"][subject - 1, order - 1]  # 1-based 73k ids
    return ids_73k - 1


def stimulus_ids(index_73k) -> np.ndarray:
    """``nsd-NNNNN`` names from 0-based 73k indices."""
    return np.array([f"nsd-{int(i):05d}" for i in np.asarray(index_73k).ravel()])


def _betas_dir(root: Path, subject: int, space: str) -> Path:
    subj = require_dir(root / "nsddata_betas" / "ppdata" / f"subj{subject:02d}", "NSD subject")
    return require_dir(subj / space / BETAS, f"NSD {space} betas")


def _sessions(betas: Path, space: str, option) -> list[int]:
    pattern = "betas_session*.nii.gz" if space == "func1pt8mm" else "lh.betas_session*.mgh"
    found = sorted(int(re.search(r"session(\d+)", p.name).group(1)) for p in betas.glob(pattern))
    if option is None:
        if not found:
            raise InputError(f"{betas}: no {pattern} files")
        # sessions must be consecutive from 1: masterordering is indexed by trial
        n = next((i for i, s in enumerate(found, 1) if s != i), len(found) + 1) - 1
        return list(range(1, n + 1))
    wanted = list(range(1, int(option) + 1)) if isinstance(option, int) else [int(s) for s in option]
    return wanted


def _session_files(betas: Path, space: str, session: int) -> list[Path]:
    if space == "func1pt8mm":
        names = [f"betas_session{session:02d}.nii.gz"]
    else:
        names = [f"{h}.betas_session{session:02d}.mgh" for h in _HEMIS.values()]
    return [require(betas / n, f"NSD session {session} betas") for n in names]


def _ctab(path: Path) -> dict[int, str]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].lstrip("-").isdigit():
            out[int(parts[0])] = parts[1]
    return out


def _load(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        return np.asarray(nib.load(str(path)).dataobj)
    except Exception as err:
        raise InputError(f"{path}: cannot be read ({err})") from err


def _voxels(root: Path, subject: int, space: str, mask: str | None, rois) -> dict:
    """Selected voxels: flat indices into the volume / [lh, rh] vertices, labels, coordinates."""
    import nibabel as nib

    label_dir = root / "nsddata/freesurfer/fsaverage/label"
    if space == "fsaverage":

        def atlas(name):
            parts = [
                _load(require(label_dir / f"{h}.{name}.mgz", f"NSD atlas {name}")).ravel()
                for h in _HEMIS.values()
            ]
            return np.concatenate(parts), parts[0].size

        base, n_left = atlas(mask) if mask else (None, None)
        if base is None:
            ref = require(label_dir / "lh.nsdgeneral.mgz", "NSD atlas nsdgeneral")
            n_left = _load(ref).size
            base = np.ones(2 * n_left)
        keep = np.flatnonzero(base > 0)
        hemi = np.where(keep < n_left, "left", "right")
        coords = {dims.HEMI: hemi, dims.VERTEX: np.where(keep < n_left, keep, keep - n_left)}
        attrs = {"space": "fsaverage", "n_vertices_per_hemi": int(n_left)}
    else:
        roi_dir = root / "nsddata/ppdata" / f"subj{subject:02d}" / "func1pt8mm" / "roi"

        def atlas(name):
            arr = _load(require(roi_dir / f"{name}.nii.gz", f"NSD atlas {name}"))
            return arr.ravel(), None

        ref = require(roi_dir / f"{mask or 'nsdgeneral'}.nii.gz", "NSD atlas")
        img = nib.load(str(ref))
        base = np.asarray(img.dataobj).ravel() if mask else np.ones(int(np.prod(img.shape)))
        keep = np.flatnonzero(base > 0)
        ijk = np.stack(np.unravel_index(keep, img.shape), axis=1)
        xyz = nib.affines.apply_affine(img.affine, ijk).astype(np.float32)
        coords = {
            dims.HEMI: np.full(keep.size, "unknown"),
            dims.VERTEX: keep,
            "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2],
            "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
        }  # fmt: skip
        attrs = {
            "space": "native",
            "grid": "func1pt8mm",
            "affine": np.asarray(img.affine, dtype=float).ravel(),
            "grid_shape": list(img.shape[:3]),
        }
    roi = np.full(keep.size, dims.NO_ROI, dtype=object)
    for name in rois:
        values = atlas(name)[0][keep]
        names = _ctab(label_dir / f"{name}.mgz.ctab")
        free = (roi == dims.NO_ROI) & (values > 0)
        roi[free] = [names.get(int(v), f"{name}-{int(v)}") for v in values[free]]
    coords[dims.ROI] = roi.astype(str)
    return {"index": keep, "coords": coords, "attrs": attrs}


def _read_session(files: list[Path], space: str, index: np.ndarray) -> np.ndarray:
    """(750, n_selected) float32 betas of one session, in percent signal change."""
    import nibabel as nib

    parts = []
    for path in files:
        try:
            proxy = nib.load(str(path)).dataobj
        except Exception as err:
            raise InputError(f"{path}: cannot be read ({err})") from err
        data = np.asarray(proxy)
        parts.append(data.reshape(-1, data.shape[-1]) if space == "fsaverage" else data)
    if space == "fsaverage":
        flat = np.concatenate(parts)
    else:
        flat = parts[0].reshape(-1, parts[0].shape[-1])
    if flat.shape[0] <= index.max():
        raise InputError(f"{files[0]}: {flat.shape[0]} voxels/vertices, fewer than the ROI masks")
    out = flat[index].T
    if np.issubdtype(out.dtype, np.integer):
        out = out.astype(np.float32) / 300.0
    out = np.asarray(out, dtype=np.float32)
    if out.shape[0] != TRIALS_PER_SESSION:
        raise InputError(f"{files[0]}: {out.shape[0]} trials, NSD sessions have 750")
    return out


def read_responses(spec: dict, subject: str, name: str = "nsd") -> xr.Dataset:
    """One NSD subject's single-trial betas as Responses (stimulus rows, selected voxels).

    Options in ``spec``: ``root``; ``space`` (fsaverage | func1pt8mm, default func1pt8mm);
    ``sessions`` (a count from 1 or a list, default all present); ``mask`` (atlas whose
    positive voxels are kept, default nsdgeneral; ``all`` keeps every voxel); ``rois``
    (atlases that label the voxels, first positive label wins); ``zscore`` (per session,
    default true); ``average_repeats`` (one row per image, with the ncsnr ceiling computed from
    the trials first; default false: trials, whose ceiling the pipeline computes);
    ``ceiling: ncsnr_file`` uses NSD's released ncsnr instead.
    """
    from alignment.metrics.ceilings import ncsnr_ceiling

    root = require_dir(spec["root"], "NSD root")
    number = subject_number(subject)
    space = spec.get("space", "func1pt8mm")
    if space not in SPACES:
        raise InputError(f"{name}: NSD space must be one of {SPACES}, got {space!r}")
    design = load_expdesign(root)
    betas = _betas_dir(root, number, space)
    sessions = _sessions(betas, space, spec.get("sessions"))
    mask = spec.get("mask", "nsdgeneral")
    voxels = _voxels(root, number, space, None if mask == "all" else mask, spec.get("rois", DEFAULT_ROIS))
    files = {s: _session_files(betas, space, s) for s in sessions}  # all missing files up front
    index_73k = trial_images(design, number, max(sessions) * TRIALS_PER_SESSION)
    rows, ids, sess = [], [], []
    for s in tqdm(sessions, desc=f"NSD subj{number:02d} sessions", unit="session"):
        values = _read_session(files[s], space, voxels["index"])
        rows.append(zscore_rows(values) if spec.get("zscore", True) else values)
        trials = slice((s - 1) * TRIALS_PER_SESSION, s * TRIALS_PER_SESSION)
        ids.append(index_73k[trials])
        sess.append(np.full(TRIALS_PER_SESSION, s))
    values = np.concatenate(rows)
    idx = np.concatenate(ids)
    sid = stimulus_ids(idx)
    session = np.concatenate(sess)
    shared = set((design["sharedix"] - 1).tolist())
    attrs = {
        "dataset": name,
        "subject": subject,
        "source": "NSD betas_fithrf_GLMdenoise_RR",
        "sessions": sessions,
        "zscored": "per session" if spec.get("zscore", True) else "no",
        "test_split": "shared1000 (split == 'test')",
        **voxels["attrs"],
    }
    # pictures: NSD ships the fsaverage surfaces and each subject's T1 on the func1pt8mm grid
    mesh = spec.get("mesh") or root / "nsddata/freesurfer/fsaverage"
    if space == "fsaverage" and (Path(mesh) / "surf" / "lh.inflated").exists():
        attrs["mesh"] = str(mesh)
    anat = root / "nsddata/ppdata" / f"subj{number:02d}" / "func1pt8mm" / "T1_to_func1pt8mm.nii.gz"
    if space == "func1pt8mm" and anat.exists():
        attrs["anat"] = str(anat)
    ceiling = method = None
    if spec.get("ceiling") == "ncsnr_file":
        ceiling, method = _released_ceiling(betas, space, voxels["index"], sid), "NSD ncsnr file"
    if spec.get("average_repeats", False):
        if ceiling is None:
            ceiling = ncsnr_ceiling(values, sid, sessions=session).ceiling
            method = "ncsnr (NSD) from the trials, mean of repeats"
        values, sid = average_repeats(values, sid)
        idx = np.array([int(s[4:]) for s in sid])
        ds = make_responses(values, kind="images", stimulus_id=sid, attrs=attrs, **_labels(voxels))
    else:
        from alignment.data._util import repetition_index

        ds = make_responses(
            values,
            kind="images",
            stimulus_id=sid,
            repetition=repetition_index(sid),
            session=session,
            attrs=attrs,
            **_labels(voxels),
        )
    ds = ds.assign_coords(
        nsd_index=(dims.STIMULUS, idx.astype(np.int64)),
        split=(dims.STIMULUS, np.where(np.isin(idx, list(shared)), "test", "train")),
        **{k: (dims.VOXEL, v) for k, v in voxels["coords"].items() if k not in _LABELS},
    )
    if ceiling is not None:
        ds = attach_ceiling(ds, ceiling, method)
    return ds


_LABELS = (dims.ROI, dims.HEMI, dims.VERTEX)


def _labels(voxels: dict) -> dict:
    return {k: voxels["coords"][k] for k in _LABELS}


def _released_ceiling(betas: Path, space: str, index: np.ndarray, sid) -> np.ndarray:
    """NC = ncsnr^2 / (ncsnr^2 + k) from NSD's ncsnr file, k from the trials read."""
    if space == "fsaverage":
        parts = [_load(require(betas / f"{h}.ncsnr.mgh", "NSD ncsnr")).ravel() for h in ("lh", "rh")]
        ncsnr = np.concatenate(parts)[index]
    else:
        ncsnr = _load(require(betas / "ncsnr.nii.gz", "NSD ncsnr")).ravel()[index]
    _, counts = np.unique(np.asarray(sid), return_counts=True)
    k = float(np.mean(1.0 / counts))
    ncsnr = ncsnr.astype(np.float64)
    return ncsnr**2 / (ncsnr**2 + k)


def read_stimuli(spec: dict, subjects: list[str], name: str = "nsd") -> pd.DataFrame:
    """The images every listed subject saw in the sessions read: ``stimulus_id``, ``path``
    (a reference into ``nsd_stimuli.hdf5``, read lazily), ``nsd_index`` and ``split``."""
    from alignment.stimuli.images import image_reference

    root = require_dir(spec["root"], "NSD root")
    design = load_expdesign(root)
    hdf5 = require(root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "NSD images")
    space = spec.get("space", "func1pt8mm")
    seen: dict[int, None] = {}
    for subject in subjects:
        number = subject_number(subject)
        sessions = _sessions(_betas_dir(root, number, space), space, spec.get("sessions"))
        for i in trial_images(design, number, max(sessions) * TRIALS_PER_SESSION):
            seen.setdefault(int(i))
    idx = np.array(sorted(seen), dtype=np.int64)
    shared = np.isin(idx, design["sharedix"] - 1)
    return pd.DataFrame(
        {
            dims.STIMULUS_ID: stimulus_ids(idx),
            "path": [image_reference(hdf5.resolve(), "imgBrick", i) for i in idx],
            "nsd_index": idx,
            "split": np.where(shared, "test", "train"),
        }
    )
