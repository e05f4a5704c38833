"""Writing a features store incrementally: memory-bounded, resumable, never read half-written.

The store is built in a sibling folder ``.<name>.partial``, one zarr group per layer (the layout
of :func:`alignment.io.write_zarr_layers`, which :func:`alignment.io.read_zarr_layers` reads).
Every batch is written as it comes (by a writer thread, overlapping the next forward pass);
after each batch ``progress.json`` records the rows done (written atomically, after the data;
zarr replaces each chunk file atomically too, so a chunk is never half-written). Chunks hold a
divisor of the batch size in rows, so a batch fills whole chunks. A killed run leaves the partial
folder; a rerun with the same cache key and stimuli resumes at its first unfinished row. Only
when every row is written does the folder get its root attributes and move onto the final name
by one rename, so a later step never sees a half-written store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import xarray as xr

from alignment.io import InputError, _clean_attrs, write_json

log = logging.getLogger(__name__)

PROGRESS = "progress.json"


def partial_path(out: str | os.PathLike) -> Path:
    """The folder an unfinished store lives in."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _ids_hash(ids) -> str:
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:16]


def _chunk_rows(
    row_shape, itemsize: int, n_rows: int, batch_size: int, target_bytes: int = 16 * 2**20
) -> int:
    """Rows per chunk: a divisor of the batch size (no read-modify-write), about 16 MiB at most."""
    row_bytes = max(1, int(np.prod(row_shape)) * itemsize)
    rows = max(1, min(n_rows, batch_size, target_bytes // row_bytes))
    while batch_size % rows and rows < n_rows:
        rows -= 1
    return rows


def _complete(out: Path, key: str) -> bool:
    import zarr

    try:
        attrs = zarr.open_group(str(out), mode="r").attrs
    except Exception:
        return False
    return attrs.get("cache_key") == key and "layers" in attrs


def write_store(job, out, *, progress=None, batch_size: int | None = None) -> dict:
    """Run ``job`` (a :class:`alignment.features.Job`) into the zarr store ``out``.

    Returns the root attributes written. A finished store with the same cache key is kept
    as is (nothing is recomputed).
    """
    import zarr

    out = Path(out)
    if out.exists() and _complete(out, job.key):
        log.info("%s is up to date (cache key %s)", out, job.key)
        return dict(zarr.open_group(str(out), mode="r").attrs)
    tmp = partial_path(out)
    batch_size = int(batch_size or job.spec["batch_size"])
    state = {"cache_key": job.key, "ids": _ids_hash(job.ids), "n_rows": job.n_rows}
    start, chunk_rows = 0, None
    prog = tmp / PROGRESS
    if prog.exists():
        try:
            saved = json.loads(prog.read_text())
        except json.JSONDecodeError:
            saved = {}
        if all(saved.get(k) == v for k, v in state.items()) and saved.get("chunk_rows"):
            chunk_rows = int(saved["chunk_rows"])
            start = int(saved["rows_done"])
            log.info("%s: resuming at row %d of %d", out, start, job.n_rows)
    if start == 0 and tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=True)

    arrays: dict[int, zarr.Array] = {}

    def open_arrays(first: dict | None, create: bool):
        nonlocal chunk_rows
        for i in job.indices:
            group = job.name_of(i)
            if not create:
                arrays[i] = zarr.open_array(str(tmp / group / "features"), mode="r+")
                continue
            coords = {**job.row_coords_at_start(), **job.layer_coords(i)}
            xr.Dataset(coords=coords).to_zarr(tmp, group=group, mode="w", consolidated=False)
            row_shape = first[i].shape[1:]
            if chunk_rows is None:
                chunk_rows = _chunk_rows(
                    row_shape, np.dtype(job.dtype).itemsize, job.n_rows, batch_size
                )
            g = zarr.open_group(str(tmp / group), mode="a")
            a = g.create_array(
                "features",
                shape=(job.n_rows, *row_shape),
                chunks=(chunk_rows, *row_shape),
                dtype=job.dtype,
                fill_value=np.nan,
                dimension_names=list(job.dims_for(len(row_shape) + 1)),
            )
            a.attrs["coordinates"] = " ".join(sorted(coords))
            arrays[i] = a

    it = job.batches(start, batch_size)
    if progress is not None:
        it = progress(job, it, start)

    def write(a, b, batch):
        for i in job.indices:
            arrays[i][a:b] = batch[i].astype(job.dtype, copy=False)
        write_json(prog, {**state, "rows_done": b, "chunk_rows": chunk_rows})

    done = start
    pending: deque = deque()
    try:
        with ThreadPoolExecutor(max_workers=1) as writer:
            for a, b, batch in it:
                if a != done:
                    raise RuntimeError(f"batches out of order: expected row {done}, got {a}")
                if not arrays:
                    open_arrays(batch, create=start == 0)
                pending.append(writer.submit(write, a, b, batch))
                while len(pending) > 2:
                    pending.popleft().result()
                done = b
            while pending:
                pending.popleft().result()
    except InputError:
        # bad input with no batch finished leaves nothing behind; finished batches stay in
        # the hidden partial store, a resume point that no later step reads
        if done == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not arrays and start > 0:  # killed after the last batch, before the rename
        open_arrays(None, create=False)
    if done != job.n_rows:
        raise RuntimeError(f"extraction stopped at row {done} of {job.n_rows}")

    # per-row coordinates known only now (e.g. context length per word), layer and root attrs
    attrs = _clean_attrs(job.final_attrs())
    for i in job.indices:
        group = job.name_of(i)
        g = zarr.open_group(str(tmp / group), mode="a")
        late = {k: v for k, v in job.row_coords().items() if k not in job.coords}
        if late:
            xr.Dataset(coords=late).to_zarr(tmp, group=group, mode="a", consolidated=False)
            feats = g["features"]
            names = set(feats.attrs["coordinates"].split()) | set(late)
            feats.attrs["coordinates"] = " ".join(sorted(names))
        if "token_grid" in job.info and arrays[i].ndim == 3:
            g["features"].attrs["token_grid"] = list(job.info["token_grid"])
        g.attrs.update({**attrs, "layer": group, "layer_index": int(i)})
    root = zarr.open_group(str(tmp), mode="a")
    root.attrs.update({**attrs, "layers": [job.name_of(i) for i in job.indices]})
    if "token_grid" in job.info:
        root.attrs["token_grid"] = list(job.info["token_grid"])
    prog.unlink()
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return dict(root.attrs)
