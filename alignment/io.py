"""Reading and writing the labelled objects of DESIGN.md section 3, atomically, with clear errors.

Every writer goes through a temporary sibling and a rename, so an interrupted run never leaves a
half-written file that a resumed run would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr


class InputError(ValueError):
    """Bad input: the message names the file and the problem."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    Works for files and for directories (zarr stores). The temporary sibling is removed when the
    block raises, so nothing half-written survives.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically, with numpy scalars and arrays converted."""

    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"cannot serialise {type(o).__name__}")

    write_text(path, json.dumps(obj, indent=2, default=default) + "\n")


def read_json(path: str | os.PathLike):
    """Read JSON, naming the file in any error."""
    path = Path(path)
    require_file(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Return ``path`` as a Path, or raise InputError naming it when it does not exist."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: missing {what}")
    return path


def _clean_attrs(attrs: dict) -> dict:
    """netCDF attributes must be str, numbers or arrays: serialise the rest as JSON."""
    out = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, str | int | float | np.number | np.ndarray):
            out[key] = value
        else:
            out[key] = json.dumps(value, default=str)
    return out


def write_netcdf(ds: xr.Dataset | xr.DataArray, path: str | os.PathLike) -> None:
    """Write an xarray object to netCDF (h5netcdf engine) atomically."""
    ds = ds.copy()
    ds.attrs = _clean_attrs(ds.attrs)
    if isinstance(ds, xr.Dataset):
        for name in ds.variables:
            ds[name].attrs = _clean_attrs(ds[name].attrs)
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")


def read_netcdf(path: str | os.PathLike) -> xr.Dataset:
    """Load a netCDF file fully into memory (the file is closed on return)."""
    path = require_file(path, "netCDF file")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            return ds.load()
    except OSError as err:
        raise InputError(f"{path}: cannot be read as netCDF ({err})") from err


def write_zarr_layers(
    layers: dict[str, xr.DataArray], path: str | os.PathLike, attrs: dict
) -> None:
    """Write one zarr group per layer (DESIGN.md section 3), chunked on the first dimension.

    Parameters
    ----------
    layers : dict of str to DataArray
        Layer name to features, e.g. dims (stimulus, unit).
    path : path-like
        The zarr store (a directory) to create atomically.
    attrs : dict
        Provenance stored on the root group and on each layer.
    """
    attrs = _clean_attrs(attrs)
    with atomic_path(path) as tmp:
        for i, (name, arr) in enumerate(layers.items()):
            ds = arr.to_dataset(name="features")
            index = int(arr["layer_index"]) if "layer_index" in arr.coords else i
            ds.attrs = {**attrs, "layer": name, "layer_index": index}
            # chunked on the first dimension (whole rows of tokens and units per chunk)
            encoding = {"features": {"chunks": (_chunk_rows(arr), *arr.shape[1:])}}
            ds.to_zarr(tmp, group=name, mode="a", consolidated=False, encoding=encoding)
        import zarr

        root = zarr.open_group(str(tmp), mode="a")
        root.attrs.update({**attrs, "layers": list(layers)})


def _chunk_rows(arr: xr.DataArray, target_bytes: int = 16 * 2**20) -> int:
    """Rows (stimuli) per chunk: at most 1024, and about ``target_bytes`` for token arrays."""
    row_bytes = max(1, int(np.prod(arr.shape[1:])) * arr.dtype.itemsize)
    return max(1, min(arr.shape[0], 1024, target_bytes // row_bytes))


def read_zarr_layers(
    path: str | os.PathLike, layers: list[str] | None = None
) -> dict[str, xr.DataArray]:
    """Read the layers of a features store written by :func:`write_zarr_layers`, in order."""
    import zarr

    path = require_file(path, "features store")
    root = zarr.open_group(str(path), mode="r")
    names = list(root.attrs["layers"])
    if layers is not None:
        unknown = sorted(set(layers) - set(names))
        if unknown:
            raise InputError(f"{path}: no layer(s) {unknown}; the store holds {names}")
        names = [n for n in names if n in layers]
    out = {}
    for name in names:
        with xr.open_zarr(path, group=name, consolidated=False) as ds:
            arr = ds["features"].load()
        # zarr v3 returns strings as numpy StringDType; use fixed-width str like netCDF does
        out[name] = arr.assign_coords(
            {
                c: (arr[c].dims, np.asarray(arr[c].values.tolist(), dtype=str))
                for c in arr.coords
                if arr[c].dtype.kind in "TO"
            }
        )
    return out


def read_zarr_attrs(path: str | os.PathLike) -> dict:
    """Root attributes (provenance and layer names) of a features store."""
    import zarr

    path = require_file(path, "features store")
    return dict(zarr.open_group(str(path), mode="r").attrs)
