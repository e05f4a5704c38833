"""Writing a features store incrementally: memory-bounded, resumable, never read half-written.

The store is built in a sibling folder ``.<name>.partial``, one zarr group per layer (the layout
of :func:`alignment.io.write_zarr_layers`, which :func:`alignment.io.read_zarr_layers` reads).
Rows are chunked independently of the batch size (about 8 MiB a chunk, and at least 8 chunks
per store so that a killed run loses at most an eighth of its work); batches are buffered until
they fill whole chunks, which are written uncompressed (features barely compress, and
compression costs more than the forward pass on a GPU) by writer threads that overlap the next
forward pass, one task per layer. After each flush ``progress.json`` records the rows done
(written atomically, after the data; zarr replaces each chunk file atomically too, so a chunk is
never half-written). A killed run leaves the partial folder; a rerun with the same cache key and
stimuli resumes at its first unwritten chunk, whatever its batch size. Only when every row is
written does the folder get its root attributes and move onto the final name by one rename, so
a later step never sees a half-written store.

Coordinates are written once with xarray (for the first layer) and copied to the other layer
groups, which is much cheaper than one ``to_zarr`` per layer for deep models.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import xarray as xr

from alignment.io import InputError, _clean_attrs, write_json

log = logging.getLogger(__name__)

PROGRESS = "progress.json"
CHUNK_BYTES = 8 * 2**20
MIN_CHUNKS = 8


def partial_path(out: str | os.PathLike) -> Path:
    """The folder an unfinished store lives in."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _ids_hash(ids) -> str:
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:16]


def chunk_rows(row_shape, itemsize: int, n_rows: int, target_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk: about ``target_bytes``, and at least :data:`MIN_CHUNKS` chunks."""
    row_bytes = max(1, int(np.prod(row_shape)) * itemsize)
    by_size = max(1, target_bytes // row_bytes)
    return int(max(1, min(by_size, -(-n_rows // MIN_CHUNKS))))


def _raw_chunks(array) -> bool:
    """True when a chunk file is the chunk's bytes as they are: uncompressed, little-endian,
    default ``c/i/j/...`` keys (zarr v3), on a little-endian machine."""
    meta = getattr(array, "metadata", None)
    codecs = getattr(meta, "codecs", ())
    enc = getattr(meta, "chunk_key_encoding", None)
    return (
        sys.byteorder == "little"
        and len(codecs) == 1
        and type(codecs[0]).__name__ == "BytesCodec"
        and str(getattr(codecs[0].endian, "value", codecs[0].endian)) == "little"
        and type(enc).__name__ == "DefaultChunkKeyEncoding"
        and getattr(enc, "separator", None) == "/"
    )


def write_chunks(folder: Path, start: int, block: np.ndarray, rows: int, n_rows: int) -> None:
    """Write rows ``start..start + len(block)`` of an uncompressed zarr v3 array, whole chunks.

    The rows start on a chunk boundary and end on one or at the array's end; a chunk file holds
    exactly the chunk's bytes (the last chunk padded to the full chunk with NaN, as zarr stores
    edge chunks), written to a temporary name and renamed, so a chunk is never half-written.
    This is what ``array[a:b] = block`` does, at about twice the speed (no copies through
    zarr's codec pipeline), which matters at GBs of features a minute.
    """
    suffix = ["0"] * (block.ndim - 1)
    for s in range(0, len(block), rows):
        piece = block[s : s + rows]
        if len(piece) < rows:
            if start + s + len(piece) != n_rows:
                raise RuntimeError("a partial chunk must be the array's last")
            pad = np.full((rows - len(piece), *piece.shape[1:]), np.nan, dtype=piece.dtype)
            piece = np.concatenate([piece, pad])
        path = folder.joinpath("c", str((start + s) // rows), *suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        with open(part, "wb") as fh:
            fh.write(memoryview(np.ascontiguousarray(piece)).cast("B"))
        os.replace(part, path)


def _complete(out: Path, key: str) -> bool:
    import zarr

    try:
        attrs = zarr.open_group(str(out), mode="r").attrs
    except Exception:
        return False
    return attrs.get("cache_key") == key and "layers" in attrs


def _write_coords(root: Path, groups: list[str], coords: dict, scalars: dict, mode: str) -> None:
    """Write ``coords`` into every layer group: once with xarray, then by copying the arrays.

    ``scalars`` maps a group to its own scalar coordinates (layer index, relative depth).
    """
    import zarr

    first = groups[0]
    xr.Dataset(coords={**coords, **scalars.get(first, {})}).to_zarr(
        root, group=first, mode=mode, consolidated=False
    )
    names = list(coords) + list(scalars.get(first, {}))
    for group in groups[1:]:
        (root / group).mkdir(exist_ok=True)
        if not (root / group / "zarr.json").exists():
            shutil.copy2(root / first / "zarr.json", root / group / "zarr.json")
        for name in names:
            dst = root / group / name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(root / first / name, dst)
        for name, value in scalars.get(group, {}).items():
            zarr.open_array(str(root / group / name), mode="r+")[...] = value


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
    start, rows_per_chunk = 0, None
    prog = tmp / PROGRESS
    if prog.exists():
        try:
            saved = json.loads(prog.read_text())
        except json.JSONDecodeError:
            saved = {}
        if all(saved.get(k) == v for k, v in state.items()) and saved.get("chunk_rows"):
            rows_per_chunk = int(saved["chunk_rows"])
            start = int(saved["rows_done"])
            log.info("%s: resuming at row %d of %d", out, start, job.n_rows)
    if start == 0 and tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    groups = [job.name_of(i) for i in job.indices]
    arrays: dict[int, zarr.Array] = {}

    def create_coords():
        scalars = {job.name_of(i): job.layer_coords(i) for i in job.indices}
        _write_coords(tmp, groups, job.row_coords_at_start(), scalars, mode="w")

    def open_arrays(first: dict | None, create: bool):
        nonlocal rows_per_chunk
        for i in job.indices:
            group = job.name_of(i)
            if not create:
                arrays[i] = zarr.open_array(str(tmp / group / "features"), mode="r+")
                continue
            row_shape = first[i].shape[1:]
            if rows_per_chunk is None:
                rows_per_chunk = chunk_rows(row_shape, np.dtype(job.dtype).itemsize, job.n_rows)
            g = zarr.open_group(str(tmp / group), mode="a")
            a = g.create_array(
                "features",
                shape=(job.n_rows, *row_shape),
                chunks=(rows_per_chunk, *row_shape),
                dtype=job.dtype,
                fill_value=np.nan,
                compressors=None,
                dimension_names=list(job.dims_for(len(row_shape) + 1)),
            )
            coords = {**job.row_coords_at_start(), **job.layer_coords(i)}
            a.attrs["coordinates"] = " ".join(sorted(coords))
            arrays[i] = a

    def write_layer(i, a, b, parts):
        block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        block = block.astype(job.dtype, copy=False)
        if a % rows_per_chunk == 0 and _raw_chunks(arrays[i]):
            write_chunks(tmp / job.name_of(i) / "features", a, block, rows_per_chunk, job.n_rows)
        else:
            arrays[i][a:b] = block

    it = job.batches(start, batch_size)
    if progress is not None:
        it = progress(job, it, start)

    n_threads = max(1, min(8, len(job.indices), (os.cpu_count() or 2) // 2))
    buffer: dict[int, list] = {i: [] for i in job.indices}
    buffered_from = start  # first row held in ``buffer``
    done = start  # rows received from the iterator
    pending: deque = deque()  # (futures, rows_done after them)
    written = start

    def settle(keep: int):
        nonlocal written
        while len(pending) > keep or (pending and all(f.done() for f in pending[0][0])):
            futures, rows = pending.popleft()
            for f in futures:
                f.result()
            written = rows
            write_json(prog, {**state, "rows_done": rows, "chunk_rows": rows_per_chunk})

    def flush(upto: int, pool):
        nonlocal buffered_from
        if upto <= buffered_from:
            return
        futures = []
        for i in job.indices:
            parts, take, rest, a = [], upto - buffered_from, [], buffered_from
            for p in buffer[i]:
                if take >= len(p):
                    parts.append(p)
                    take -= len(p)
                elif take > 0:
                    parts.append(p[:take])
                    rest.append(p[take:])
                    take = 0
                else:
                    rest.append(p)
            buffer[i] = rest
            futures.append(pool.submit(write_layer, i, a, upto, parts))
        pending.append((futures, upto))
        buffered_from = upto

    try:
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            # the first batch comes before any writer thread starts: image decoding workers
            # are forked then, from a process with no thread inside zarr or xarray
            for a, b, batch in it:
                if a != done:
                    raise RuntimeError(f"batches out of order: expected row {done}, got {a}")
                if not arrays:
                    if start == 0:
                        create_coords()
                    open_arrays(batch, create=start == 0)
                for i in job.indices:
                    buffer[i].append(batch[i])
                done = b
                boundary = done if done == job.n_rows else done - (done % rows_per_chunk)
                flush(boundary, pool)
                settle(keep=2)
            settle(keep=0)
    except BaseException as err:
        # keep what was computed: the chunks in flight are finished and recorded as done
        with contextlib.suppress(Exception):
            settle(keep=0)
        # bad input with no chunk finished leaves nothing behind; finished chunks stay in
        # the hidden partial store, a resume point that no later step reads
        if isinstance(err, InputError) and written == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not arrays and start > 0:  # killed after the last batch, before the rename
        open_arrays(None, create=False)
    if done != job.n_rows or written != job.n_rows:
        raise RuntimeError(f"extraction stopped at row {done} of {job.n_rows}")

    # per-row coordinates known only now (e.g. context length per word), layer and root attrs
    attrs = _clean_attrs(job.final_attrs())
    late = {k: v for k, v in job.row_coords().items() if k not in job.coords}
    if late:
        _write_coords(tmp, groups, late, {}, mode="a")
    for i in job.indices:
        group = job.name_of(i)
        g = zarr.open_group(str(tmp / group), mode="a")
        feats = g["features"]
        update = {}  # one metadata write per array and group (attrs[k] = v writes each time)
        if late:
            names = set(feats.attrs["coordinates"].split()) | set(late)
            update["coordinates"] = " ".join(sorted(names))
        if "token_grid" in job.info and arrays[i].ndim == 3:
            update["token_grid"] = list(job.info["token_grid"])
        if update:
            feats.update_attributes(update)
        g.update_attributes({**attrs, "layer": group, "layer_index": int(i)})
    root = zarr.open_group(str(tmp), mode="a")
    extra = {"token_grid": list(job.info["token_grid"])} if "token_grid" in job.info else {}
    root.update_attributes({**attrs, "layers": groups, **extra})
    prog.unlink()
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return dict(root.attrs)
