"""Runs that survive: --keep-going past a bad subject, bit-identical reruns, honest caching.

One tiny real run of a bring-your-own study (tests/_study.py: random-feature models, two
subjects, an image and a narrative dataset) serves every test here; a third image subject with a
NaN voxel makes its jobs fail.
"""

from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from _study import (
    alignment as alignment_cli,
)
from _study import (
    image_responses,
    narrative_responses,
    score_targets,
    snakemake,
    study_config,
    write_config,
    write_study,
)

from alignment.io import write_netcdf

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study after a --keep-going run in which subject 03's image data are bad."""
    root = tmp_path_factory.mktemp("study")
    write_study(root, subjects=("01", "02"))
    write_netcdf(image_responses(3, bad="nan"), root / "responses" / "pics_sub-03.nc")
    config = study_config(("01", "02"))
    config["datasets"]["pics"]["subjects"] = ["01", "02", "03"]
    write_config(root, config)
    run = snakemake(root, "--cores", "2", "--keep-going", *score_targets(config))
    # from here on the study is the two good subjects
    good = study_config(("01", "02"))
    write_config(root, good)
    return root, run, good


def test_keep_going_finishes_every_other_subject_and_names_the_bad_one(study):
    root, run, good = study
    assert run.returncode != 0, "a job failed, so snakemake must say so"
    for target in score_targets(good):
        assert (root / target).exists(), target
    assert not (root / "results/sub-03/pics/ceiling.nc").exists()
    summary = (root / "results" / "summary.txt").read_text()
    # the good subjects are summarised...
    assert "sub-01 | pics | rand-img" in summary and "sub-02 | story | rand-txt" in summary
    # ...and the bad one is named, with the log that says why and the reason itself
    (line,) = [ln for ln in summary.splitlines() if ln.startswith("sub-03 | pics")]
    assert "FAILED, see results/logs/ceiling/sub-03_pics.log" in line
    assert "responses/pics_sub-03.nc: 1 voxel(s) with NaN/inf" in line
    assert "INCOMPLETE RUN: 1 of 5 scores missing" in summary


def test_rerun_gives_bit_identical_scores(study):
    root, _, _ = study
    targets = ["results/sub-01/pics/rand-img/ridge/scores.nc"]
    targets.append("results/sub-01/story/rand-txt/ridge/scores.nc")
    before = {t: xr.load_dataset(root / t, engine="h5netcdf") for t in targets}
    run = snakemake(root, *targets, "--cores", "2", "--forcerun", "encode")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("Finished jobid") == 2
    for t in targets:
        after = xr.load_dataset(root / t, engine="h5netcdf")
        assert set(after.data_vars) == set(before[t].data_vars)
        for name in after.data_vars:
            a, b = after[name].values, before[t][name].values
            # bit-identical: same bytes, NaN where NaN
            assert a.tobytes() == b.tobytes(), f"{t}:{name} changed on rerun"
        assert after.attrs == before[t].attrs


def _planned(root: Path, config: dict, configfile: Path | None = None) -> set[str]:
    """Outputs of the jobs a dry run would run."""
    extra = ["--configfile", str(configfile)] if configfile else []
    # targets first: --configfile takes every word after it
    run = snakemake(root, *score_targets(config), "-n", "--nolock", *extra)
    assert run.returncode == 0, run.stderr[-3000:]
    text = run.stdout + run.stderr
    return set(re.findall(r"^\s+output: (\S+)", text, flags=re.M))


E = "results/sub-{s}/{d}/{m}/ridge/scores.nc"
C = "results/sub-{s}/{d}/ceiling.nc"


def _jobs(*patterns: str, subjects=("01", "02"), **fields) -> set[str]:
    return {p.format(s=s, **fields) for p in patterns for s in subjects}


PICS = {"d": "pics", "m": "rand-img"}
STORY = {"d": "story", "m": "rand-txt"}
CASES = {
    "nothing changed": ({}, set()),
    "model spec": (
        {"models": {"rand-img": {"n_units": 9}}},
        {"results/features/pics/rand-img.zarr"} | _jobs(E, **PICS),
    ),
    "model batch_size and device (speed only)": (
        {"models": {"rand-img": {"batch_size": 7, "device": "cpu"}}},
        set(),
    ),
    "encoder spec": (
        {"encoders": {"ridge": {"alphas": [1.0, 10.0]}}},
        _jobs(E, **PICS) | _jobs(E, **STORY),
    ),
    "cv.train_on (images only)": ({"cv": {"train_on": "trials"}}, _jobs(E, **PICS)),
    "cv.gap_trs (narratives only)": ({"cv": {"gap_trs": 3}}, _jobs(E, **STORY)),
    "stats.narrative_null (narratives only)": (
        {"stats": {"narrative_null": "block"}},
        _jobs(E, **STORY),
    ),
    "timeseries.delays (encoders only)": ({"timeseries": {"delays": [1, 2, 3]}}, _jobs(E, **STORY)),
    "timeseries.detrend_order (ceiling too)": (
        {"timeseries": {"detrend_order": 2}},
        _jobs(E, C, **STORY),
    ),
}


def _merge(config: dict, change: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for section, entries in change.items():
        for key, value in entries.items():
            if isinstance(value, dict) and isinstance(out[section].get(key), dict):
                out[section][key] = {**out[section][key], **value}
            else:
                out[section][key] = value
    return out


@pytest.fixture(scope="module")
def planned(study):
    """The dry-run plan of every case, two at a time (each is a config passed by --configfile)."""
    root, _, good = study
    folder = root / "cases"
    folder.mkdir()
    files = {}
    for i, (case, (change, _)) in enumerate(CASES.items()):
        files[case] = folder / f"case{i}.yaml"
        files[case].write_text(yaml.safe_dump(_merge(good, change), sort_keys=False))
    with ThreadPoolExecutor(max_workers=2) as pool:
        plans = pool.map(lambda case: _planned(root, good, files[case]), list(CASES))
        return dict(zip(CASES, plans, strict=True))


@pytest.mark.parametrize("case", list(CASES))
def test_a_config_change_reruns_exactly_the_affected_jobs(planned, case):
    assert planned[case] == CASES[case][1]


def test_new_responses_rerun_exactly_that_subjects_jobs(study, tmp_path):
    root, _, good = study
    saved = tmp_path / "saved"
    shutil.copytree(root / "responses", saved)
    try:
        # new image data for subject 01: its own ceiling and encoders only (an image ceiling
        # uses the subject's own repeats); new narrative data for subject 02: every subject's
        # inter-subject ceiling changes, so every narrative job reruns; subject 02's image jobs
        # do not
        write_netcdf(image_responses(11), root / "responses" / "pics_sub-01.nc")
        write_netcdf(narrative_responses(12), root / "responses" / "story_sub-02.nc")
        assert _planned(root, good) == (
            {C.format(s="01", d="pics"), E.format(s="01", **PICS)} | _jobs(E, C, **STORY)
        )
    finally:
        for f in saved.iterdir():
            shutil.copy2(f, root / "responses" / f.name)


def test_scores_record_a_hash_of_exactly_their_inputs(study):
    root, _, _ = study
    targets = [
        "results/sub-01/pics/rand-img/ridge/scores.nc",
        "results/sub-02/pics/rand-img/ridge/scores.nc",
        "results/sub-01/story/rand-txt/ridge/scores.nc",
    ]
    values = [xr.load_dataset(root / t, engine="h5netcdf").attrs["config_hash"] for t in targets]
    # same model/encoder/cv/stats for both image subjects; the narrative differs (timeseries)
    assert values[0] == values[1] != values[2]
    assert all(len(h) == 12 for h in values)
    assert np.unique(values).size == 2


def test_kill_9_mid_encode_leaves_nothing_and_a_rerun_gives_the_same_scores(study, tmp_path):
    """A job killed by the scheduler (SIGKILL, e.g. a time limit) leaves no Scores file that a
    resumed run could trust, and the rerun equals an uninterrupted run, bit for bit."""
    import os
    import signal
    import subprocess
    import time

    from _study import BIN, ENV

    root, _, _ = study
    features = tmp_path / "f.zarr"
    spec = json.dumps({"kind": "random", "modality": "image", "n_units": 64, "n_layers": 8})
    made = alignment_cli(
        "features",
        "--model",
        "r",
        "--spec",
        spec,
        "--stimuli",
        str(root / "stimuli/images.tsv"),
        "--out",
        str(features),
    )
    assert made.returncode == 0, made.stderr
    args = [
        "encode",
        "--responses",
        str(root / "responses/pics_sub-01.nc"),
        "--features",
        str(features),
        "--cv",
        '{"n_folds": 3, "inner_folds": 2}',
        "--stats",
        '{"n_permutations": 1000}',
        "--encoder-spec",
        '{"kind": "ridge", "backend": "numpy"}',
    ]
    killed = tmp_path / "killed.nc"
    log = tmp_path / "killed.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [str(BIN / "alignment"), *args, "--out", str(killed)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
        deadline = time.monotonic() + 300
        # kill once the first layer is done, i.e. in the middle of the job
        while "layer_00: median r" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not killed.exists(), "a killed job must not leave a Scores file"
    # the rerun (what Snakemake does after an incomplete job) and an uninterrupted run agree
    assert alignment_cli(*args, "--out", str(killed)).returncode == 0
    clean = tmp_path / "clean.nc"
    assert alignment_cli(*args, "--out", str(clean)).returncode == 0
    a = xr.load_dataset(killed, engine="h5netcdf")
    b = xr.load_dataset(clean, engine="h5netcdf")
    assert list(a["layer"].values) == [f"layer_{i:02d}" for i in range(8)]
    for name in b.data_vars:
        assert a[name].values.tobytes() == b[name].values.tobytes(), name
