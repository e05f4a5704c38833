"""Encode jobs: voxel shards merge into the unsharded Scores; a killed job resumes per layer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from alignment import dims
from alignment.cli import main
from alignment.data.responses import make_responses
from alignment.io import read_netcdf, write_netcdf, write_zarr_layers

SPEC = {"kind": "ridge", "alphas": [0.1, 10.0, 1000.0], "null": "refit", "layer_batch": 1}
VARS = [dims.R, dims.R2, dims.P, dims.Q, dims.ALPHA, dims.R_NULL_MEAN, dims.R_NULL_P95]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # small tensors: on a loaded 2-core machine torch's spinning thread pool costs 30x
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Responses and a 4-layer features store on disk, and the uninterrupted run's Scores."""
    root = tmp_path_factory.mktemp("encode")
    rng = np.random.default_rng(0)
    n_img, v, n_rep = 80, 45, 2
    ids = np.array([f"s{i:03d}" for i in range(n_img)])
    F = [rng.standard_normal((n_img, 6)).astype(np.float32) for _ in range(4)]
    signal = F[2] @ rng.standard_normal((6, v)) * (np.arange(v) < 20)
    reps = np.repeat(np.arange(n_rep), n_img)
    resp = make_responses(
        np.concatenate([signal + rng.standard_normal((n_img, v)) for _ in range(n_rep)]),
        kind="images",
        stimulus_id=np.tile(ids, n_rep),
        repetition=reps,
        session=reps,
        roi=np.array(["a"] * 20 + ["b"] * (v - 20)),
    )
    write_netcdf(resp, root / "responses.nc")
    layers = {
        f"layer_{i:02d}": xr.DataArray(
            f, dims=(dims.STIMULUS, dims.UNIT), coords={dims.STIMULUS_ID: (dims.STIMULUS, ids)}
        )
        for i, f in enumerate(F)
    }
    write_zarr_layers(layers, root / "features.zarr", {"model": "toy"})
    args = _args(root, root / "full.nc")
    assert main([*args, "--no-checkpoint"]) == 0
    return root, read_netcdf(root / "full.nc")


def _args(root, out, extra=()):
    return [
        "encode",
        "--responses",
        str(root / "responses.nc"),
        "--features",
        str(root / "features.zarr"),
        "--encoder-spec",
        json.dumps(SPEC),
        "--cv",
        json.dumps({"n_folds": 4, "inner_folds": 3}),
        "--stats",
        json.dumps({"n_permutations": 100}),
        "--out",
        str(out),
        *extra,
    ]


def _same(a, b):
    for var in VARS:
        np.testing.assert_allclose(a[var].values, b[var].values, rtol=1e-5, atol=1e-6)
    assert list(a.layer.values) == list(b.layer.values)


def test_voxel_shards_merge_into_the_unsharded_scores(job):
    root, full = job
    paths = []
    for i in (2, 0, 1):  # any order
        out = root / f"shard{i}.nc"
        assert main([*_args(root, out), "--shard", f"{i}/3", "--no-checkpoint"]) == 0
        paths.append(str(out))
    assert read_netcdf(paths[1]).sizes[dims.VOXEL] == 15
    assert main(["merge-scores", "--scores", *paths, "--out", str(root / "merged.nc")]) == 0
    merged = read_netcdf(root / "merged.nc")
    _same(merged, full)  # FDR over all voxels after the merge, same null permutations
    assert "voxel_shard" not in merged.attrs
    assert main(["merge-scores", "--scores", *paths[:2], "--out", str(root / "bad.nc")]) == 2


def test_killed_encode_job_resumes_from_its_layer_checkpoints(job):
    root, full = job
    out = root / "killed.nc"
    cmd = [sys.executable, "-c", "import sys; from alignment.cli import main; sys.exit(main())"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*cmd, *_args(root, out)[0:]], env=env, stderr=subprocess.DEVNULL)
    folder = Path(f"{out}.checkpoints")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list(folder.glob("*/*.npz"))) >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be killed mid-run"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = list(folder.glob("*/*.npz"))
    assert 1 <= len(saved) < 4 and not out.exists()
    assert main(_args(root, out)) == 0  # the rerun fits only the missing layers
    _same(read_netcdf(out), full)
    assert not folder.exists()  # removed once the Scores are written
