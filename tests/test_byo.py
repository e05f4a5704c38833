"""Bring your own data, no code: every format through snakemake, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import yaml

from alignment import dims
from alignment.data import byo
from alignment.io import InputError, read_netcdf
from tests.test_textgrid import LONG

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REGIONS = ["lh.A1", "rh.A1", "lh.STS", "rh.STS", "L_IFG"]
TR = 2.0


def _story_words(n_words=60, start=4.0):
    """A single-run TextGrid (long format) with words every 1.5 s."""
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0"]
    onsets = start + 1.5 * np.arange(n_words)
    end = onsets[-1] + 0.5
    lines += [f"xmax = {end}", "tiers? <exists>", "size = 1", "item []:", "    item [1]:"]
    lines += ['        class = "IntervalTier"', '        name = "words"', "        xmin = 0"]
    lines += [f"        xmax = {end}", f"        intervals: size = {n_words}"]
    for i, t in enumerate(onsets):
        lines += [f"        intervals [{i + 1}]:", f"            xmin = {t}"]
        lines += [f"            xmax = {t + 0.5}", f'            text = "w{i % 17}"']
    return "\n".join(lines) + "\n", end


def _images(root: Path, n=12):
    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = ["stimulus_id\tpath"]
    for i in range(n):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(root / "img" / f"s{i}.png")
        rows.append(f"s{i}\timg/s{i}.png")
    (root / "stimuli.tsv").write_text("\n".join(rows) + "\n")
    order = [f"s{i % n}" for i in range(2 * n)]  # every image twice
    (root / "order.txt").write_text("\n".join(order) + "\n")
    return order


def _write_all(root: Path):
    """Tiny files in every format; returns the config's datasets."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    grid, end = _story_words()
    (root / "story.TextGrid").write_text(grid)
    n_tr = int(np.ceil(end / TR)) + 3
    order = _images(root)
    n_rows = len(order)
    for s in ("01", "02"):
        shared = rng.standard_normal((n_tr, len(REGIONS)))
        np.savetxt(root / f"sub-{s}_rois.txt", shared + 0.5 * rng.standard_normal(shared.shape))
    s = "img"
    np.save(root / f"sub-{s}.npy", rng.standard_normal((n_rows, 7)).astype(np.float32))
    with h5py.File(root / f"sub-{s}.h5", "w") as fh:
        fh["betas"] = rng.standard_normal((n_rows, 6)).astype(np.float32)
        fh["other"] = np.zeros(3)
    vol = rng.standard_normal((3, 3, 2, n_rows)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), root / f"sub-{s}_bold.nii.gz")
    for h in ("lh", "rh"):
        data = rng.standard_normal((9, 1, 1, n_rows)).astype(np.float32)
        nib.save(nib.MGHImage(data, np.eye(4)), root / f"sub-{s}_{h}.mgh")
    arrays = [nib.gifti.GiftiDataArray(rng.standard_normal(8).astype(np.float32)) for _ in order]
    nib.save(nib.GiftiImage(darrays=arrays), root / f"sub-{s}.func.gii")
    mask = np.zeros((3, 3, 2), np.int8)
    mask[:2, :2, :] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), root / "mask.nii.gz")
    images = {"kind": "images", "stimuli": "byo/stimuli.tsv", "stimulus_order": "byo/order.txt"}
    # one subject (image ceilings come from its repeats), not in the ROI study's report
    base = {"subjects": ["img"], "models": ["random-image"]}
    return {
        "rois-text": {
            "kind": "narrative",
            "format": "text",
            "responses": "byo/sub-{subject}_rois.txt",
            "stimuli": "byo/story.TextGrid",
            "tr": TR,
            "first_volume_time": 0.0,
            "space": "roi",
            "region_names": REGIONS,
            "subjects": ["01", "02"],
            "models": ["random-text"],
        },
        "npy": {**images, **base, "format": "npy", "responses": "byo/sub-{subject}.npy"},
        "h5": {
            **images,
            **base,
            "format": "h5",
            "responses": "byo/sub-{subject}.h5",
            "h5_key": "betas",
        },
        "nifti": {
            **images,
            **base,
            "format": "nifti",
            "responses": "byo/sub-{subject}_bold.nii.gz",
            "mask": "byo/mask.nii.gz",
            "space": "MNI152",
        },
        "mgh": {
            **images,
            **base,
            "format": "mgh",
            "responses": "byo/sub-{subject}_{hemi}.mgh",
            "space": "fsaverage5",
        },
        "gifti": {
            **images,
            **base,
            "format": "gifti",
            "responses": "byo/sub-{subject}.func.gii",
            "hemi": "left",
        },
    }


@pytest.mark.workflow
def test_every_format_end_to_end_through_snakemake(tmp_path):
    datasets = _write_all(tmp_path / "byo")
    config = {
        "datasets": datasets,
        "models": {
            "random-text": {"kind": "random", "modality": "text", "n_units": 8},
            "random-image": {"kind": "random", "modality": "image", "n_units": 8},
        },
        "encoders": {"ridge": {"kind": "ridge", "alphas": [1.0, 100.0], "backend": "numpy"}},
        "cv": {"n_folds": 3, "inner_folds": 2, "gap_trs": 1},
        "stats": {"n_permutations": 20},
    }
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    prepared = [f"results/data/{d}/sub-img_responses.nc" for d in datasets if d != "rois-text"]
    # the ROI time courses go all the way to the report; every format is prepared
    targets = [*prepared, "results/sub-01/report.html"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MPLBACKEND": "Agg"}
    out = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(tmp_path / "mine.yaml"), "--cores", "2", *targets],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    shapes = {}
    for d in datasets:
        if d == "rois-text":
            continue
        ds = read_netcdf(tmp_path / f"results/data/{d}/sub-img_responses.nc")
        shapes[d] = dict(ds.sizes)
        if d != "rois-text":
            assert ds[dims.STIMULUS_ID].values[:2].tolist() == ["s0", "s1"]
            assert ds[dims.REPETITION].values[12] == 1
    assert shapes["npy"] == {"stimulus": 24, "voxel": 7}
    assert shapes["h5"] == {"stimulus": 24, "voxel": 6}
    assert shapes["nifti"] == {"stimulus": 24, "voxel": 8}  # the 8 voxels of the mask
    assert shapes["mgh"] == {"stimulus": 24, "voxel": 18}  # 9 vertices per hemisphere
    assert shapes["gifti"] == {"stimulus": 24, "voxel": 8}
    text = read_netcdf(tmp_path / "results/data/rois-text/sub-01_responses.nc")
    # the single response run takes the name of the single run of the word timings
    assert set(text[dims.RUN].values) == {"story"}
    assert text[dims.ROI].values.tolist() == REGIONS
    assert text[dims.HEMI].values.tolist() == ["left", "right", "left", "right", "left"]
    scores = read_netcdf(tmp_path / "results/sub-01/rois-text/random-text/ridge/scores.nc")
    assert scores[dims.ROI].values.tolist() == REGIONS and scores.attrs["space"] == "roi"
    html = (tmp_path / "results/sub-01/report.html").read_text()
    assert "No brain maps" not in html and all(name in html for name in REGIONS)
    assert html.count("data:image/png;base64,") >= 3  # profiles + per-region charts
    # the demo's datasets do not leak into a --configfile run
    assert not (tmp_path / "data" / "demo").exists()


def _spec(tmp_path, **kw):
    grid, _ = _story_words()
    (tmp_path / "story.TextGrid").write_text(grid)
    return {"kind": "narrative", "format": "text", "responses": str(tmp_path / "sub-{subject}.txt"),
            "stimuli": str(tmp_path / "story.TextGrid"), "tr": TR, **kw}  # fmt: skip


def test_row_count_that_does_not_cover_the_words_is_named(tmp_path):
    spec = _spec(tmp_path)
    np.savetxt(tmp_path / "sub-01.txt", np.random.default_rng(0).standard_normal((30, 3)))
    with pytest.raises(InputError, match=r"sub-01.txt: 30 rows of TR 2 s .* at least 47 rows"):
        byo.read_responses(spec, "01")
    np.savetxt(tmp_path / "sub-01.txt", np.random.default_rng(0).standard_normal((120, 3)))
    with pytest.raises(InputError, match=r"sub-01.txt: 120 rows .* far past the last word"):
        byo.read_responses(spec, "01")


def test_dropped_volumes_shift_the_first_volume_and_header_names_regions(tmp_path):
    spec = _spec(tmp_path, dropped_volumes=2)
    values = np.random.default_rng(0).standard_normal((46, 2))
    np.savetxt(tmp_path / "sub-01.txt", values, header="lh.A1 rh.A1", comments="")
    ds = byo.read_responses(spec, "01")
    assert ds.attrs["first_volume_time"] == 4.0
    assert ds[dims.ROI].values.tolist() == ["lh.A1", "rh.A1"]
    np.testing.assert_allclose(ds[dims.RESPONSES].values, values, rtol=1e-6)


def test_bad_inputs_are_named(tmp_path):
    np.savetxt(tmp_path / "sub-01.txt", np.zeros((48, 3)))
    with pytest.raises(InputError, match="3 columns but region_names lists 2"):
        byo.read_responses(_spec(tmp_path, region_names=["a", "b"]), "01")
    with pytest.raises(InputError, match=r"sub-02.txt: missing response file"):
        byo.read_responses(_spec(tmp_path), "02")
    (tmp_path / "g.TextGrid").write_text(LONG)
    spec = {**_spec(tmp_path), "stimuli": str(tmp_path / "g.TextGrid"), "runs": ["a", "b"]}
    with pytest.raises(InputError, match=r"runs lists 2 runs; put \{run\} in the pattern"):
        byo.read_responses(spec, "01")
    with h5py.File(tmp_path / "two.h5", "w") as fh:
        fh["a"], fh["b"] = np.zeros((3, 2)), np.zeros((3, 2))
    with pytest.raises(InputError, match=r"two.h5: holds 2 datasets \['a', 'b'\]; name one"):
        byo.read_matrix(tmp_path / "two.h5", "h5")


def test_example_config_replaces_the_demo_config(tmp_path):
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())  # the demo's
    out = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(REPO / "config" / "nsd.yaml"), "-n", "--cores", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 0, text[-3000:]
    assert "prepare_responses 1" in text and "prepare_stimuli 1" in text
    assert "demo_data" not in text and "demo-images" not in text  # nothing of the demo leaks
