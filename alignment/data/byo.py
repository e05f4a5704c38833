"""Bring your own data, no code: response matrices in common formats, described in config.yaml.

A dataset entry names a ``format`` and a ``responses`` path pattern (with ``{subject}``, and
``{run}`` for one file per run or ``{hemi}`` for one surface file per hemisphere)::

    my-story:
      kind: narrative
      format: text                 # npy | h5 | nifti | mgh | gifti | text
      responses: data/mine/sub-{subject}.txt
      stimuli: data/mine/story.TextGrid
      tr: 1.5
      dropped_volumes: 4           # or first_volume_time: 6.0 (s on the stimulus clock)
      space: roi
      region_names: [lh.A1, rh.A1, lh.STS, rh.STS]

Rows are stimuli/trials (images) or TRs (narratives); columns are voxels, vertices or regions
(``transpose: true`` for the other orientation; surface and volume files are oriented as their
format says). Everything read is checked: shapes, ids, run names and that the TRs cover the
words. A single response run matches the single run of the word timings automatically.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from alignment import dims
from alignment.data._util import SPACES, hemi_from_name, repetition_index, subject_path
from alignment.data.responses import make_responses
from alignment.io import InputError, require_file

FORMATS = ("npy", "h5", "nifti", "mgh", "gifti", "text")

#: Responses may run this long past the last word (haemodynamic tail, trailing silence).
MAX_TAIL_S = 60.0

_HEMI_FILES = {"left": "lh", "right": "rh"}


# --------------------------------------------------------------------------------------------
# matrices


def _read_text(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Whitespace-separated numbers; a first line of names becomes the column names."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    header = None
    tokens = first.split()
    if tokens and any(re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|NaN", t) is None
                      for t in tokens):  # fmt: skip
        header = tokens
    try:
        values = np.loadtxt(path, ndmin=2, skiprows=1 if header else 0, dtype=np.float64)
    except ValueError as err:
        raise InputError(f"{path}: not a whitespace-separated table of numbers ({err})") from err
    if header is not None and len(header) != values.shape[1]:
        raise InputError(
            f"{path}: the header names {len(header)} columns but the rows have {values.shape[1]}"
        )
    return values, header


def _read_h5(path: Path, key: str | None) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as fh:
        names: list[str] = []
        fh.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
        if key is None:
            if len(names) != 1:
                raise InputError(
                    f"{path}: holds {len(names)} datasets {names[:8]}; name one with h5_key"
                )
            key = names[0]
        if key not in fh or not isinstance(fh[key], h5py.Dataset):
            raise InputError(f"{path}: no dataset {key!r}; datasets: {names[:8]}")
        return np.asarray(fh[key][()], dtype=np.float32)


def _read_surface(path: Path, fmt: str) -> np.ndarray:
    """(rows, vertices) from an .mgh/.mgz (vertices x 1 x 1 x rows) or a GIFTI file."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for a bad file
        raise InputError(f"{path}: cannot be read as {fmt} ({err})") from err
    if fmt == "gifti":
        arrays = [np.asarray(d.data, dtype=np.float32) for d in img.darrays]
        if not arrays:
            raise InputError(f"{path}: GIFTI file without data arrays")
        if len(arrays) == 1 and arrays[0].ndim == 2:
            return arrays[0].T  # one (vertices, rows) array
        if any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays):
            raise InputError(f"{path}: GIFTI data arrays must be one vector per row (time point)")
        return np.stack(arrays)
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data.reshape(data.shape[0], -1).T


def _read_nifti(path: Path, mask_path: Path | None) -> tuple[np.ndarray, dict, dict]:
    """(rows, mask voxels), voxel coordinates i, j, k, x, y, z and the grid in attrs."""
    import nibabel as nib

    if mask_path is None:
        raise InputError(f"{path}: a NIfTI dataset needs a mask (option mask: path to a 3-D image)")
    try:
        img = nib.load(str(path))
        mask_img = nib.load(str(require_file(mask_path, "mask image")))
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{path}: cannot be read as NIfTI ({err})") from err
    mask = np.asarray(mask_img.dataobj) > 0
    if img.ndim != 4:
        raise InputError(f"{path}: expected a 4-D image (x, y, z, rows), got shape {img.shape}")
    if mask.shape != img.shape[:3]:
        raise InputError(
            f"{mask_path}: mask grid {mask.shape} differs from {path} grid {img.shape[:3]}"
        )
    if not np.allclose(mask_img.affine, img.affine, atol=1e-3):
        raise InputError(f"{mask_path}: mask affine differs from {path}; resample one onto the other")
    data = np.asarray(img.dataobj)
    if np.issubdtype(data.dtype, np.integer) and img.dataobj.slope in (None, 1.0):
        data = data.astype(np.float32)
    values = data[mask].T.astype(np.float32)
    ijk = np.argwhere(mask)
    xyz = nib.affines.apply_affine(img.affine, ijk)
    coords = {
        "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2],
        "x": xyz[:, 0].astype(np.float32), "y": xyz[:, 1].astype(np.float32),
        "z": xyz[:, 2].astype(np.float32),
    }  # fmt: skip
    attrs = {"affine": np.asarray(img.affine, dtype=float).ravel(), "grid_shape": list(mask.shape)}
    return values, coords, attrs


def read_matrix(
    path: str | Path,
    fmt: str,
    *,
    h5_key: str | None = None,
    mask: str | Path | None = None,
    transpose: bool = False,
) -> tuple[np.ndarray, dict, dict]:
    """Read one response file as a (rows, columns) float32 matrix.

    Parameters
    ----------
    path : path-like
        The file.
    fmt : {"npy", "h5", "nifti", "mgh", "gifti", "text"}
        Its format.
    h5_key : str, optional
        Dataset inside an HDF5 file (needed when it holds several).
    mask : path-like, optional
        3-D mask image for NIfTI data (voxels > 0 are kept).
    transpose : bool
        The file holds (columns, rows) (npy, h5, text only).

    Returns
    -------
    values : ndarray (rows, columns)
    voxel_coords : dict of name to array (columns,)
        ``i, j, k, x, y, z`` for NIfTI; ``roi`` for a text file with a header.
    attrs : dict
        ``affine`` and ``grid_shape`` for NIfTI.
    """
    path = require_file(path, "response file")
    coords: dict = {}
    attrs: dict = {}
    if fmt == "npy":
        try:
            values = np.load(path, mmap_mode="r")
        except ValueError as err:
            raise InputError(f"{path}: cannot be read as .npy ({err})") from err
    elif fmt == "h5":
        values = _read_h5(path, h5_key)
    elif fmt == "text":
        values, header = _read_text(path)
        if header is not None:
            coords[dims.ROI] = np.asarray(header, dtype=str)
    elif fmt in ("mgh", "gifti"):
        values = _read_surface(path, fmt)
    elif fmt == "nifti":
        values, coords, attrs = _read_nifti(path, Path(mask) if mask else None)
    else:
        raise InputError(f"{path}: unknown format {fmt!r}; expected one of {FORMATS}")
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise InputError(f"{path}: expected a 2-D matrix (rows, columns), got shape {values.shape}")
    if transpose:
        if fmt in ("nifti", "mgh", "gifti"):
            raise InputError(f"{path}: transpose applies to npy, h5 and text files only")
        values = values.T
        if dims.ROI in coords:
            raise InputError(f"{path}: a header of names with transpose: true is ambiguous")
    return values, coords, attrs


def _read_hemis(pattern: str, subject: str, spec: dict, **fields) -> tuple[np.ndarray, dict, dict]:
    """One file, or one per hemisphere when the pattern holds {hemi} (lh/rh)."""
    fmt = spec["format"]
    kwargs = {"h5_key": spec.get("h5_key"), "transpose": bool(spec.get("transpose", False))}
    if fmt == "nifti":
        mask = spec.get("mask")
        kwargs["mask"] = subject_path(mask, subject) if mask else None
    if "{hemi}" not in pattern:
        return read_matrix(subject_path(pattern, subject, **fields), fmt, **kwargs)
    parts, hemis, vertices, paths = [], [], [], []
    for hemi, short in _HEMI_FILES.items():
        path = subject_path(pattern, subject, hemi=short, **fields)
        values, _, _ = read_matrix(path, fmt, **kwargs)
        parts.append(values)
        paths.append(path)
        hemis.append(np.full(values.shape[1], hemi))
        vertices.append(np.arange(values.shape[1]))
    if parts[0].shape[0] != parts[1].shape[0]:
        raise InputError(
            f"{paths[1]}: {parts[1].shape[0]} rows, but {paths[0]} has {parts[0].shape[0]}"
        )
    coords = {dims.HEMI: np.concatenate(hemis), dims.VERTEX: np.concatenate(vertices)}
    return np.concatenate(parts, axis=1), coords, {}


# --------------------------------------------------------------------------------------------
# labels


def _region_names(spec: dict, n_columns: int, header, source: Path) -> np.ndarray | None:
    names = spec.get("region_names")
    if isinstance(names, str):
        names_path = require_file(names, "region names file")
        names = [ln.strip() for ln in names_path.read_text().splitlines() if ln.strip()]
    if names is None:
        return None if header is None else np.asarray(header, dtype=str)
    if len(names) != n_columns:
        raise InputError(
            f"{source}: {n_columns} columns but region_names lists {len(names)} names"
        )
    if len(set(names)) != len(names):
        raise InputError(f"{source}: region_names has duplicates")
    return np.asarray(names, dtype=str)


def _first_volume_time(spec: dict, tr: float) -> float:
    if "first_volume_time" in spec and "dropped_volumes" in spec:
        raise InputError("give first_volume_time or dropped_volumes, not both")
    if "dropped_volumes" in spec:
        return float(spec["dropped_volumes"]) * tr
    return float(spec.get("first_volume_time", 0.0))


def check_coverage(n_rows: int, tr: float, start: float, words: pd.DataFrame, source, run: str):
    """The TRs must cover the run's words and not run on far past them.

    Raises InputError naming ``source`` with the row count the words imply.
    """
    last = float(words["offset"].max())
    needed = int(np.ceil((last - start) / tr))
    end = start + n_rows * tr
    if end < last:
        raise InputError(
            f"{source}: {n_rows} rows of TR {tr:g} s from t = {start:g} s end at {end:.1f} s, "
            f"but the words of run {run!r} go on to {last:.1f} s: at least {needed} rows are "
            "needed (check tr, first_volume_time/dropped_volumes and the run's file)"
        )
    if end > last + max(MAX_TAIL_S, 0.25 * (last - start)):
        raise InputError(
            f"{source}: {n_rows} rows of TR {tr:g} s from t = {start:g} s run to {end:.1f} s, "
            f"far past the last word of run {run!r} at {last:.1f} s (about {needed} rows "
            "expected); is this the right run, TR, or a file with rows and columns swapped "
            "(transpose: true)?"
        )


def _run_names(spec: dict, words: pd.DataFrame, single_file: bool, source) -> list[str]:
    word_runs = list(dict.fromkeys(words["run"].astype(str)))
    runs = spec.get("runs")
    if runs is None:
        if single_file and len(word_runs) > 1:
            raise InputError(
                f"{source}: one response file, but the word timings hold {len(word_runs)} runs "
                f"{word_runs[:5]}; put {{run}} in the responses pattern (one file per run)"
            )
        return word_runs
    runs = [str(r) for r in runs]
    if single_file and len(runs) != 1:
        raise InputError(f"{source}: runs lists {len(runs)} runs; put {{run}} in the pattern")
    missing = [r for r in runs if r not in word_runs]
    if missing and not (single_file and len(word_runs) == 1):
        raise InputError(
            f"{source}: run(s) {missing} have no words in the word timings (runs there: "
            f"{word_runs[:8]})"
        )
    return runs


def _read_order(spec: dict, subject: str, n_rows: int, table: pd.DataFrame, source) -> pd.DataFrame:
    """Stimulus id (and session) of every response row."""
    order = spec.get("stimulus_order")
    if order is None:
        if n_rows != len(table):
            raise InputError(
                f"{source}: {n_rows} rows but the stimulus table has {len(table)} stimuli; give "
                "stimulus_order (one stimulus id per row) for trials in another order or repeats"
            )
        return pd.DataFrame({dims.STIMULUS_ID: table[dims.STIMULUS_ID].astype(str).to_numpy()})
    path = require_file(subject_path(order, subject), "stimulus order file")
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if dims.STIMULUS_ID not in frame.columns:  # a plain list, one id per line
        frame = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)
        frame = frame.rename(columns={0: dims.STIMULUS_ID})
    if len(frame) != n_rows:
        raise InputError(f"{path}: {len(frame)} stimulus ids for {n_rows} rows of {source}")
    unknown = sorted(set(frame[dims.STIMULUS_ID]) - set(table[dims.STIMULUS_ID].astype(str)))
    if unknown:
        raise InputError(
            f"{path}: {len(unknown)} id(s) not in the stimulus table (first: {unknown[:5]})"
        )
    return frame


# --------------------------------------------------------------------------------------------
# the adapter


def read_responses(spec: dict, subject: str, name: str = "dataset") -> xr.Dataset:
    """Responses of one subject of a bring-your-own dataset entry (see the module docstring).

    Parameters
    ----------
    spec : dict
        The dataset entry of config.yaml (``format``, ``responses``, ``stimuli``, options).
    subject : str
        Subject id, filled into ``{subject}``.
    name : str
        Dataset name (provenance).
    """
    from alignment.stimuli.images import read_image_table
    from alignment.stimuli.narrative import read_word_table

    fmt, kind, pattern = spec["format"], spec["kind"], str(spec["responses"])
    space = spec.get("space", "native")
    if space not in SPACES:
        raise InputError(f"{name}: space must be one of {SPACES}, got {space!r}")
    attrs = {"dataset": name, "subject": subject, "space": space, "format": fmt}
    for key in ("mesh", "anat"):  # for the pictures: a FreeSurfer folder, an anatomical image
        if spec.get(key):
            attrs[key] = str(spec[key])
    if kind == "narrative":
        if "tr" not in spec:
            raise InputError(f"{name}: a narrative dataset needs tr (seconds)")
        tr = float(spec["tr"])
        start = _first_volume_time(spec, tr)
        words = read_word_table(spec["stimuli"], tier=spec.get("tier"))
        single = "{run}" not in pattern
        runs = _run_names(spec, words, single, subject_path(pattern, subject, run="{run}"))
        parts, run_labels, coords, extra = [], [], {}, {}
        for run in runs:
            values, coords, extra = _read_hemis(pattern, subject, spec, run=run)
            source = subject_path(pattern, subject, run=run, hemi="{hemi}")
            word_run = words["run"].iloc[0] if single and words["run"].nunique() == 1 else run
            check_coverage(len(values), tr, start, words[words["run"] == word_run], source, run)
            if parts and values.shape[1] != parts[0].shape[1]:
                raise InputError(
                    f"{source}: {values.shape[1]} columns, but the first run has {parts[0].shape[1]}"
                )
            parts.append(values)
            # a single response run takes the name of the single run of the word timings
            run_labels.append(np.full(len(values), word_run))
        values = np.concatenate(parts)
        row_kwargs = {"run": np.concatenate(run_labels)}
        attrs.update(tr=tr, first_volume_time=start)
        source = subject_path(pattern, subject, run="*", hemi="{hemi}")
    elif kind in ("images", "sentences"):
        values, coords, extra = _read_hemis(pattern, subject, spec)
        source = subject_path(pattern, subject, hemi="{hemi}")
        if kind == "images":
            table = read_image_table(spec["stimuli"])
        else:
            table = pd.read_csv(spec["stimuli"], sep="\t", dtype={dims.STIMULUS_ID: str})
        order = _read_order(spec, subject, len(values), table, source)
        ids = order[dims.STIMULUS_ID].to_numpy()
        session = order["session"].astype(int).to_numpy() if "session" in order else None
        row_kwargs = {"stimulus_id": ids, "repetition": repetition_index(ids), "session": session}
    else:
        raise InputError(f"{name}: kind must be images, sentences or narrative, got {kind!r}")
    attrs.update(extra)
    header = coords.pop(dims.ROI, None)
    names = _region_names(spec, values.shape[1], header, source)
    n_vox = values.shape[1]
    roi = hemi = None
    if names is not None:
        roi = names
        hemi = np.array([hemi_from_name(n) for n in names])
        attrs["region_names"] = list(names)
    if dims.HEMI in coords:
        hemi = coords.pop(dims.HEMI)
    elif spec.get("hemi") in ("left", "right"):
        hemi = np.full(n_vox, spec["hemi"])
    vertex = coords.pop(dims.VERTEX, None)
    ds = make_responses(
        values,
        kind="narrative" if kind == "narrative" else "images",
        roi=roi,
        hemi=hemi,
        vertex=vertex,
        attrs=attrs,
        **row_kwargs,
    )
    if kind == "sentences":
        ds.attrs["stimulus_kind"] = "sentences"
    return ds.assign_coords({k: (dims.VOXEL, np.asarray(v)) for k, v in coords.items()})
