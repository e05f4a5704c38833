"""Small helpers shared by the dataset adapters (private)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import xarray as xr

from alignment import dims
from alignment.io import InputError

#: Spaces a Responses object may declare (``attrs["space"]``).
SPACES = ("fsaverage5", "fsaverage6", "fsaverage", "MNI152", "roi", "native")


def require_dir(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or an InputError naming it and what it should hold."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: missing folder ({what}); see data/README.md for the layout")
    return path


def require(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or an InputError naming it and what it should hold."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: missing {what}; see data/README.md for the layout")
    return path


def repetition_index(ids) -> np.ndarray:
    """0 for the first presentation of each id, 1 for the second, ... (in row order)."""
    ids = np.asarray(ids, dtype=str)
    seen: dict[str, int] = {}
    out = np.empty(len(ids), dtype=np.int64)
    for i, sid in enumerate(ids):
        out[i] = seen.get(sid, 0)
        seen[sid] = out[i] + 1
    return out


def zscore_rows(values: np.ndarray) -> np.ndarray:
    """Z-score every column over rows (``ddof=0``); constant columns become 0."""
    values = np.asarray(values, dtype=np.float32)
    mean = values.mean(axis=0, dtype=np.float64)
    sd = values.std(axis=0, dtype=np.float64)
    out = (values - mean.astype(np.float32)) / np.where(sd > 0, sd, 1.0).astype(np.float32)
    out[:, sd == 0] = 0.0
    return out


def hemi_from_name(name: str) -> str:
    """``left``/``right`` from a region name such as ``LHPPA``, ``lh.V1``, ``L_A1`` or ``V1_left``."""
    n = str(name).strip()
    low = n.lower()
    if re.match(r"^(lh|left)[._\- ]?", low) or re.match(r"^l[._\-]", low) or n.startswith("LH"):
        return "left"
    if re.match(r"^(rh|right)[._\- ]?", low) or re.match(r"^r[._\-]", low) or n.startswith("RH"):
        return "right"
    if re.search(r"[._\- ](lh|left|l)$", low):
        return "left"
    if re.search(r"[._\- ](rh|right|r)$", low):
        return "right"
    return "unknown"


def attach_ceiling(responses: xr.Dataset, ceiling, method: str) -> xr.Dataset:
    """Store the dataset's own noise ceiling (fraction of variance, per voxel) in Responses.

    :func:`alignment.evaluation.noise_ceiling` uses it instead of estimating one (for datasets
    whose released responses are already averaged over repeats, or whose repeats are a separate
    recording such as a repeated test story). NaN means "not available".
    """
    values = np.asarray(ceiling, dtype=np.float32).ravel()
    if values.size != responses.sizes[dims.VOXEL]:
        raise InputError(
            f"ceiling has {values.size} values for {responses.sizes[dims.VOXEL]} voxels"
        )
    out = responses.copy()
    out[dims.CEILING] = xr.DataArray(values, dims=(dims.VOXEL,), attrs={"method": method})
    out.attrs["ceiling_method"] = method
    return out


def subject_path(pattern: str, subject: str, **fields) -> Path:
    """Fill ``{subject}`` (and other fields) in a path pattern."""
    try:
        return Path(str(pattern).format(subject=subject, **fields))
    except KeyError as err:
        raise InputError(f"{pattern}: unknown field {err} in the path pattern") from err
