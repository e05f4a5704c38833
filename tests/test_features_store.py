"""Streaming features into zarr: equal to in-memory extraction, resumable, never half-read."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from _images import write_image_table

from alignment import dims
from alignment.cli import main
from alignment.features import extract_features, extract_to_store, prepare
from alignment.features.store import partial_path, write_store
from alignment.io import InputError, read_zarr_attrs, read_zarr_layers


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(folder, n, seed=5):
    table = write_image_table(folder, n, random_state=seed)
    table[["stimulus_id", "path"]].to_csv(folder / "stimuli.tsv", sep="\t", index=False)
    return table


def _assert_same(store, layers):
    back = read_zarr_layers(store)
    assert list(back) == list(layers)
    for name, arr in layers.items():
        got = back[name]
        assert got.dims == arr.dims
        np.testing.assert_allclose(got.values, arr.values, rtol=1e-6, atol=1e-6)
        assert float(got["relative_depth"]) == float(arr["relative_depth"])
        assert int(got["layer_index"]) == int(arr["layer_index"])
        assert list(got[dims.STIMULUS_ID].values) == list(arr[dims.STIMULUS_ID].values)


def test_store_equals_in_memory_extraction(tiny_vit, tmp_path):
    table = _images(tmp_path / "img", 10)
    spec = {"source": str(tiny_vit), "modality": "image", "pooling": "tokens",
            "layers": [0.0, 1.0], "batch_size": 4}  # fmt: skip
    layers, attrs = extract_features(spec, table)
    out = tmp_path / "f.zarr"
    extract_to_store(spec, table, out, name="tiny")
    _assert_same(out, layers)
    root = read_zarr_attrs(out)
    assert root["n_hidden_states"] == 4 and root["layers"] == ["layer_00", "layer_03"]
    assert root["token_grid"] == [4, 4] and root["cache_key"] == attrs["cache_key"]
    assert list(read_zarr_layers(out)["layer_03"].attrs["token_grid"]) == [4, 4]
    assert not partial_path(out).exists()


def test_interrupted_store_is_never_read_and_resumes(tiny_vit, tmp_path, caplog):
    table = _images(tmp_path / "img", 12)
    spec = {"source": str(tiny_vit), "modality": "image", "batch_size": 3}
    out = tmp_path / "f.zarr"
    job = prepare(spec, table, name="tiny")

    def die_after_two(job, it, start):
        for k, item in enumerate(it):
            if k == 2:
                raise KeyboardInterrupt
            yield item

    with pytest.raises(KeyboardInterrupt):
        write_store(job, out, progress=die_after_two)
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(InputError, match="missing features store"):
        read_zarr_layers(out)
    progress = json.loads((partial_path(out) / "progress.json").read_text())
    assert progress["rows_done"] == 6
    # resume with another batch size: the rows already done are not recomputed
    seen = []

    def record(job, it, start):
        seen.append(start)
        yield from it

    with caplog.at_level(logging.INFO):
        write_store(prepare({**spec, "batch_size": 5}, table), out, progress=record)
    assert seen == [6] and "resuming at row 6" in caplog.text
    layers, _ = extract_features(spec, table)
    _assert_same(out, layers)
    # a finished store with the same cache key is kept; another key re-extracts
    seen.clear()
    write_store(prepare(spec, table), out, progress=record)
    assert seen == []
    write_store(prepare({**spec, "pooling": "cls"}, table), out, progress=record)
    assert seen == [0] and read_zarr_attrs(out)["pooling"] == "cls"


def test_kill_9_mid_extraction_then_rerun(tiny_vit, tmp_path):
    """A real `alignment features` process, killed with SIGKILL mid-run, then rerun."""
    table = _images(tmp_path / "img", 150)
    spec = {"source": str(tiny_vit), "modality": "image", "batch_size": 1, "layers": [1, 3]}
    out = tmp_path / "features.zarr"
    args = ["features", "--model", "tiny", "--spec", json.dumps(spec),
            "--stimuli", str(tmp_path / "img" / "stimuli.tsv"), "--out", str(out)]  # fmt: skip
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "alignment.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    progress = partial_path(out) / "progress.json"
    deadline = time.time() + 120
    rows = 0
    while time.time() < deadline and proc.poll() is None:
        if progress.exists():
            rows = json.loads(progress.read_text())["rows_done"]
            if rows >= 5:
                break
        time.sleep(0.01)
    assert proc.poll() is None, "extraction finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing half-written under the final name
    done = json.loads(progress.read_text())["rows_done"]
    assert 5 <= done < 150
    assert main([*args, "--batch-size", "16"]) == 0  # rerun resumes
    assert not partial_path(out).exists()
    layers, _ = extract_features(spec, table)
    _assert_same(out, layers)


def test_raw_chunk_writes_equal_zarr_writes(tmp_path):
    """Whole chunks written as files read back as zarr wrote them, the last one padded."""
    import zarr

    from alignment.features.store import _raw_chunks, write_chunks

    data = np.random.default_rng(0).standard_normal((10, 3, 4)).astype(np.float16)
    arrays = []
    for name in ("zarr", "raw"):
        g = zarr.open_group(str(tmp_path / name), mode="w")
        arrays.append(g.create_array("f", shape=data.shape, chunks=(4, 3, 4), dtype="f2",
                                     fill_value=np.nan, compressors=None))  # fmt: skip
    arrays[0][:] = data
    assert _raw_chunks(arrays[1])
    write_chunks(tmp_path / "raw" / "f", 0, data[:8], 4, 10)
    write_chunks(tmp_path / "raw" / "f", 8, data[8:], 4, 10)  # the partial last chunk
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "raw" / "f"))[:], data)
    for k in range(3):
        a, b = (tmp_path / n / "f" / "c" / str(k) / "0" / "0" for n in ("zarr", "raw"))
        assert a.read_bytes() == b.read_bytes()
    with pytest.raises(RuntimeError, match="last"):
        write_chunks(tmp_path / "raw" / "f", 0, data[:6], 4, 10)


def test_narrative_store_equals_in_memory_with_context_counts(tmp_path):
    """Decoder windows yield uneven row counts per batch; chunks fill across batches, and the
    per-word context counts (known only after extraction) reach every layer."""
    import pandas as pd

    from alignment.features.tiny import build_tiny_decoder
    from alignment.stimuli.narrative import generate_story, time_words

    story = generate_story(60, random_state=0)
    path = build_tiny_decoder(tmp_path / "m", story, n_layers=3, hidden_size=32)
    a = time_words(story[:2], run="a", random_state=0)
    words = pd.concat([a, time_words(story[2:4], run="b", random_state=1)], ignore_index=True)
    spec = {"source": str(path), "modality": "text", "context_words": 12, "batch_size": 3}
    extract_to_store(spec, words, tmp_path / "f.zarr", name="m")
    back = read_zarr_layers(tmp_path / "f.zarr")
    layers, _ = extract_features(spec, words)
    assert list(back) == list(layers) == [f"layer_0{k}" for k in range(4)]
    for name, arr in layers.items():
        np.testing.assert_allclose(back[name].values, arr.values, atol=1e-6)
        np.testing.assert_array_equal(back[name]["n_context_words"], arr["n_context_words"])
        assert list(back[name]["text"].values) == list(words["word"])
