"""Responses: reading, validating and preparing fMRI responses (DESIGN.md section 3).

Responses are an xarray Dataset with one variable ``responses`` of dims (stimulus, voxel) for
image experiments (one row per trial, coordinates ``stimulus_id``, ``repetition``, ``session``)
or (time, voxel) for narratives (coordinate ``run``), voxel coordinates ``roi``, ``hemi`` and
``vertex``, and provenance in attrs (dataset, subject, space, kind, tr).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import xarray as xr

from alignment import dims
from alignment.io import InputError, read_netcdf

log = logging.getLogger(__name__)


def make_responses(
    data: np.ndarray,
    *,
    kind: str,
    stimulus_id=None,
    repetition=None,
    session=None,
    run=None,
    roi=None,
    hemi=None,
    vertex=None,
    attrs: dict | None = None,
) -> xr.Dataset:
    """Label a (rows, voxels) matrix as Responses.

    Parameters
    ----------
    data : ndarray (n_rows, n_voxels)
        One row per trial (``kind="images"``) or per TR (``kind="narrative"``).
    kind : {"images", "narrative"}
    stimulus_id, repetition, session : array-like (n_rows,), images only
    run : array-like (n_rows,), narrative only (defaults to one run)
    roi, hemi, vertex : array-like (n_voxels,), optional voxel labels
    attrs : dict
        Provenance (dataset, subject, space, tr...).
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2:
        raise InputError(f"responses must be 2-D (rows, voxels), got shape {data.shape}")
    n, v = data.shape
    voxel_coords = {
        dims.ROI: (dims.VOXEL, np.asarray(roi if roi is not None else [dims.NO_ROI] * v, dtype=str)),
        dims.HEMI: (dims.VOXEL, np.asarray(hemi if hemi is not None else ["unknown"] * v, dtype=str)),
        dims.VERTEX: (dims.VOXEL, np.asarray(vertex if vertex is not None else np.arange(v), dtype=np.int64)),
    }
    if kind == "images":
        if stimulus_id is None:
            raise InputError("image responses need a stimulus_id for every row")
        row = dims.STIMULUS
        row_coords = {
            dims.STIMULUS_ID: (row, np.asarray(stimulus_id, dtype=str)),
            dims.REPETITION: (row, np.asarray(repetition if repetition is not None else np.zeros(n), dtype=np.int64)),
            dims.SESSION: (row, np.asarray(session if session is not None else np.zeros(n), dtype=np.int64)),
        }
    elif kind == "narrative":
        row = dims.TIME
        row_coords = {dims.RUN: (row, np.asarray(run if run is not None else ["run-1"] * n, dtype=str))}
    else:
        raise InputError(f"kind must be 'images' or 'narrative', got {kind!r}")
    for name, (_, values) in {**row_coords, **voxel_coords}.items():
        expected = n if name in row_coords else v
        if len(values) != expected:
            raise InputError(f"coordinate {name!r} has {len(values)} values for {expected} rows/voxels")
    ds = xr.Dataset(
        {dims.RESPONSES: ((row, dims.VOXEL), data)},
        coords={**row_coords, **voxel_coords},
        attrs={**(attrs or {}), "kind": kind},
    )
    return ds


def row_dim(responses: xr.Dataset) -> str:
    """The row dimension: ``stimulus`` for images, ``time`` for narratives."""
    return dims.TIME if dims.TIME in responses[dims.RESPONSES].dims else dims.STIMULUS


def validate_responses(responses: xr.Dataset, source: str | Path = "responses", on_bad_voxels: str = "error") -> xr.Dataset:
    """Check shape, labels and values; name the file and the problem on failure.

    NaN/infinite or constant voxels raise :class:`InputError` unless ``on_bad_voxels="drop"``,
    which removes them (the count is recorded in ``attrs["dropped_voxels"]``).
    """
    if dims.RESPONSES not in responses:
        raise InputError(f"{source}: no variable {dims.RESPONSES!r}; found {list(responses.data_vars)}")
    arr = responses[dims.RESPONSES]
    row = row_dim(responses)
    if arr.dims != (row, dims.VOXEL):
        raise InputError(f"{source}: responses must have dims ({row!r}, 'voxel'), got {arr.dims}")
    if row == dims.TIME:
        tr = responses.attrs.get("tr")
        try:
            tr_ok = tr is not None and float(tr) > 0
        except (TypeError, ValueError):
            tr_ok = False
        if not tr_ok:
            raise InputError(
                f"{source}: narrative responses need a positive 'tr' attribute (seconds); "
                f"got {tr!r}"
            )
        if dims.RUN not in responses.coords:
            raise InputError(f"{source}: narrative responses need a 'run' coordinate on 'time'")
    if row == dims.STIMULUS and dims.STIMULUS_ID not in responses.coords:
        raise InputError(f"{source}: image responses need a 'stimulus_id' coordinate on 'stimulus'")
    values = arr.values
    nonfinite = ~np.isfinite(values).all(axis=0)
    constant = np.zeros_like(nonfinite)
    finite_cols = ~nonfinite
    constant[finite_cols] = np.ptp(values[:, finite_cols], axis=0) == 0
    bad = nonfinite | constant
    if bad.any():
        if on_bad_voxels != "drop":
            first = np.flatnonzero(bad)[:5].tolist()
            raise InputError(
                f"{source}: {int(nonfinite.sum())} voxel(s) with NaN/inf and {int(constant.sum())} "
                f"constant voxel(s) (first indices {first}); fix the data or set "
                "on_bad_voxels: drop for this dataset"
            )
        responses = responses.isel({dims.VOXEL: ~bad})
        responses.attrs["dropped_voxels"] = int(bad.sum())
        log.warning(
            "%s: dropping %d voxel(s) (%d with NaN/inf, %d constant) as on_bad_voxels: drop says; "
            "%d remain",
            source,
            int(bad.sum()),
            int(nonfinite.sum()),
            int(constant.sum()),
            responses.sizes[dims.VOXEL],
        )
        if responses.sizes[dims.VOXEL] == 0:
            raise InputError(f"{source}: every voxel is NaN/inf or constant; nothing to analyse")
    if responses.sizes[row] < 10:
        raise InputError(f"{source}: only {responses.sizes[row]} rows; too few to cross-validate")
    return responses


def load_responses(path: str | Path, on_bad_voxels: str = "error") -> xr.Dataset:
    """Read and validate a Responses netCDF file."""
    return validate_responses(read_netcdf(path), source=path, on_bad_voxels=on_bad_voxels)


def average_repeats(values: np.ndarray, stimulus_ids) -> tuple[np.ndarray, np.ndarray]:
    """Mean response per stimulus id, in order of first appearance.

    Returns
    -------
    means : ndarray (n_unique, n_voxels)
    ids : ndarray (n_unique,) of str
    """
    ids = np.asarray(stimulus_ids, dtype=str)
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    sums = np.zeros((len(unique), values.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, values)
    counts = np.bincount(inverse, minlength=len(unique))[:, None]
    return (sums / counts)[order].astype(np.float32), unique[order]


def align_ids(wanted, available, *, wanted_source: str, available_source: str) -> np.ndarray:
    """Indices into ``available`` for every id in ``wanted``; a clear error for missing ids."""
    available = np.asarray(available, dtype=str)
    index = {sid: i for i, sid in enumerate(available)}
    missing = [sid for sid in np.asarray(wanted, dtype=str) if sid not in index]
    if missing:
        raise InputError(
            f"stimulus ids do not match: {len(set(missing))} id(s) in {wanted_source} are not in "
            f"{available_source} (first: {[str(m) for m in sorted(set(missing))[:5]]}); "
            "the features must come from "
            "the same stimulus set as the responses"
        )
    return np.array([index[sid] for sid in np.asarray(wanted, dtype=str)], dtype=np.int64)
