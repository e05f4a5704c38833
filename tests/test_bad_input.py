"""Every input a user can get wrong gives ONE clear line naming the file and the problem, exit
status 2, and no output (not even a half-written one).

The table CASES is the reference list of bad inputs and the message each gives; the CLI verbs are
called in-process (``alignment.cli.main``) as a rule would call them.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from _study import (
    N_IMAGES,
    image_responses,
    narrative_responses,
    snakemake,
    study_config,
    write_config,
    write_images,
    write_study,
    write_words,
)

from alignment.cli import main
from alignment.data.responses import make_responses
from alignment.io import write_netcdf

RANDOM_IMAGE = json.dumps({"kind": "random", "modality": "image", "n_units": 4})
RANDOM_TEXT = json.dumps({"kind": "random", "modality": "text", "n_units": 4})
STATS = '{"n_permutations": 5}'
CV = '{"n_folds": 3, "inner_folds": 2}'


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Good stimuli, responses of two subjects and random features for both experiments."""
    root = tmp_path_factory.mktemp("good")
    write_study(root, subjects=("01", "02"))
    for model, spec, table in (
        ("img", RANDOM_IMAGE, "images.tsv"),
        ("txt", RANDOM_TEXT, "words.tsv"),
    ):
        argv = ["features", "--model", model, "--spec", spec]
        argv += ["--stimuli", str(root / "stimuli" / table), "--out", str(root / f"{model}.zarr")]
        assert main(argv) == 0
    write_config(root, study_config())
    return root


def _encode(responses, features, out, *extra):
    argv = ["encode", "--responses", str(responses), "--features", str(features)]
    return [*argv, "--cv", CV, "--stats", STATS, *extra, "--out", str(out)]


def _features(stimuli, out, spec=RANDOM_IMAGE):
    return [
        "features",
        "--model",
        "m",
        "--spec",
        spec,
        "--stimuli",
        str(stimuli),
        "--out",
        str(out),
    ]


def _ceiling(out, *responses, index=0):
    return [
        "ceiling",
        "--responses",
        *map(str, responses),
        "--index",
        str(index),
        "--out",
        str(out),
    ]


def _config(base: Path, tmp: Path, edit) -> list[str]:
    config = study_config()
    edit(config)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return ["check-config", str(path)]


def _set(section, key, value):
    def edit(config):
        target = config
        for part in section.split("."):
            target = target[part]
        target[key] = value

    return edit


# --- the table: id -> (build(base, tmp) -> argv, message fragments) ---------------------------


def c_unknown_key(base, tmp):
    return _config(base, tmp, lambda c: c.update(modles=c.pop("models")))


def c_nested_typo(base, tmp):
    return _config(base, tmp, lambda c: c["encoders"]["ridge"].update(alpha=[1.0]))


def c_wrong_type(base, tmp):
    return _config(base, tmp, _set("cv", "n_folds", "five"))


def c_undefined_model(base, tmp):
    return _config(base, tmp, _set("datasets.pics", "models", ["rand-imgg"]))


def c_undefined_encoder(base, tmp):
    return _config(base, tmp, _set("datasets.pics", "encoders", ["ridg"]))


def c_numeric_subjects(base, tmp):
    path = tmp / "config.yaml"
    text = yaml.safe_dump(study_config(), sort_keys=False)
    # what a user types: subjects: [01, 02] (unquoted), which YAML reads as the numbers 1 and 2
    path.write_text(text.replace("- '01'\n    - '02'", "- 01\n    - 02", 1))
    assert yaml.safe_load(path.read_text())["datasets"]["pics"]["subjects"] == [1, 2]
    return ["check-config", str(path)]


def c_bad_yaml(base, tmp):
    (tmp / "config.yaml").write_text("datasets:\n  pics: {kind: images\nmodels: {}\n")
    return ["check-config", str(tmp / "config.yaml")]


def c_missing_config(base, tmp):
    return ["check-config", str(tmp / "absent.yaml")]


def r_missing(base, tmp):
    return _encode(tmp / "sub-01.nc", base / "img.zarr", tmp / "out.nc")


def r_unreadable(base, tmp):
    (tmp / "sub-01.nc").write_bytes(b"not a netCDF file\n" * 50)
    return _encode(tmp / "sub-01.nc", base / "img.zarr", tmp / "out.nc")


def r_no_variable(base, tmp):
    write_netcdf(image_responses(1).rename({"responses": "betas"}), tmp / "sub-01.nc")
    return _encode(tmp / "sub-01.nc", base / "img.zarr", tmp / "out.nc")


def r_nan_voxel(base, tmp):
    write_netcdf(image_responses(1, bad="nan"), tmp / "sub-01.nc")
    return _encode(tmp / "sub-01.nc", base / "img.zarr", tmp / "out.nc")


def r_inf_voxel(base, tmp):
    ds = image_responses(1)
    ds["responses"].values[4, 7] = np.inf
    write_netcdf(ds, tmp / "sub-01.nc")
    return _encode(tmp / "sub-01.nc", base / "img.zarr", tmp / "out.nc")


def r_constant_voxel(base, tmp):
    write_netcdf(image_responses(1, bad="constant"), tmp / "sub-01.nc")
    return _encode(tmp / "sub-01.nc", base / "img.zarr", tmp / "out.nc")


def r_all_voxels_bad_dropped(base, tmp):
    ds = image_responses(1)
    ds["responses"].values[:] = 1.0
    write_netcdf(ds, tmp / "sub-01.nc")
    return _encode(tmp / "sub-01.nc", base / "img.zarr", tmp / "out.nc", "--on-bad-voxels", "drop")


def r_no_tr(base, tmp):
    ds = narrative_responses(1)
    del ds.attrs["tr"]
    write_netcdf(ds, tmp / "sub-01.nc")
    return _encode(tmp / "sub-01.nc", base / "txt.zarr", tmp / "out.nc")


def r_stimulus_ids(base, tmp):
    ds = image_responses(1)
    ds = ds.assign_coords(stimulus_id=("stimulus", [f"x{s}" for s in ds.stimulus_id.values]))
    write_netcdf(ds, tmp / "sub-01.nc")
    return _encode(tmp / "sub-01.nc", base / "img.zarr", tmp / "out.nc")


def r_runs(base, tmp):
    ds = narrative_responses(1)
    runs = ds.run.values.astype(object)
    runs[runs == "story-b"] = "story-c"
    write_netcdf(ds.assign_coords(run=("time", runs.astype(str))), tmp / "sub-01.nc")
    return _encode(tmp / "sub-01.nc", base / "txt.zarr", tmp / "out.nc")


def r_tr_count(base, tmp):
    # responses cut short: 30 TRs a run while the words run for ~113 s (56 TRs)
    write_netcdf(narrative_responses(1, n_trs=30), tmp / "sub-01.nc")
    return _encode(tmp / "sub-01.nc", base / "txt.zarr", tmp / "out.nc")


def r_few_stimuli(base, tmp):
    # 8 images shown twice: too few for 5 outer folds of 3 inner folds each
    keep = image_responses(1).isel(stimulus=np.r_[0:8, N_IMAGES : N_IMAGES + 8])
    write_netcdf(keep, tmp / "sub-01.nc")
    argv = _encode(tmp / "sub-01.nc", base / "img.zarr", tmp / "out.nc")
    argv[argv.index(CV)] = '{"n_folds": 5, "inner_folds": 3}'
    return argv


def r_few_trs(base, tmp):
    write_netcdf(narrative_responses(1), tmp / "sub-01.nc")
    argv = _encode(tmp / "sub-01.nc", base / "txt.zarr", tmp / "out.nc")
    argv[argv.index(CV)] = '{"n_folds": 50, "inner_folds": 5, "gap_trs": 3}'
    return argv


def r_missing_features(base, tmp):
    return _encode(base / "responses" / "pics_sub-01.nc", tmp / "absent.zarr", tmp / "out.nc")


def r_ceiling_voxels(base, tmp):
    ds = image_responses(1).isel(voxel=slice(0, 6))
    write_netcdf(ds, tmp / "sub-01.nc")
    shutil.copy(base / "responses" / "pics_sub-01.nc", tmp / "full.nc")
    assert main(_ceiling(tmp / "ceiling.nc", tmp / "full.nc")) == 0
    argv = _encode(tmp / "sub-01.nc", base / "img.zarr", tmp / "out.nc")
    return [*argv[:-2], "--ceiling", str(tmp / "ceiling.nc"), *argv[-2:]]


def r_no_repeats(base, tmp):
    ids = [f"im{i:02d}" for i in range(N_IMAGES)]
    data = np.random.default_rng(0).standard_normal((N_IMAGES, 5))
    write_netcdf(make_responses(data, kind="images", stimulus_id=ids), tmp / "sub-01.nc")
    return _ceiling(tmp / "out.nc", tmp / "sub-01.nc")


def r_isc_timing(base, tmp):
    write_netcdf(narrative_responses(1), tmp / "sub-01.nc")
    write_netcdf(narrative_responses(2, n_trs=50), tmp / "sub-02.nc")
    return _ceiling(tmp / "out.nc", tmp / "sub-01.nc", tmp / "sub-02.nc")


def s_missing_table(base, tmp):
    return _features(tmp / "images.tsv", tmp / "f.zarr")


def s_missing_column(base, tmp):
    (tmp / "images.tsv").write_text("stimulus_id\tfile\nim00\tim00.png\n")
    return _features(tmp / "images.tsv", tmp / "f.zarr")


def s_duplicate_ids(base, tmp):
    table = write_images(tmp)
    table.write_text(table.read_text() + "im03\tim04.png\n")
    return _features(table, tmp / "f.zarr")


def s_missing_image(base, tmp):
    table = write_images(tmp)
    (table.parent / "im07.png").unlink()
    return _features(table, tmp / "f.zarr")


def s_corrupt_image(base, tmp, tiny_vit):
    table = write_images(tmp)
    (table.parent / "im05.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    spec = json.dumps({"source": str(tiny_vit), "modality": "image", "layers": [1]})
    return _features(table, tmp / "f.zarr", spec)


def s_missing_model_folder(base, tmp):
    spec = json.dumps({"source": str(tmp / "models" / "vit"), "modality": "image"})
    return _features(base / "stimuli" / "images.tsv", tmp / "f.zarr", spec)


def s_not_a_model_folder(base, tmp):
    (tmp / "models" / "vit").mkdir(parents=True)
    (tmp / "models" / "vit" / "weights.bin").write_bytes(b"")
    spec = json.dumps({"source": str(tmp / "models" / "vit"), "modality": "image"})
    return _features(base / "stimuli" / "images.tsv", tmp / "f.zarr", spec)


def s_word_times(base, tmp):
    words = write_words(tmp)
    lines = words.read_text().splitlines()
    lines[5] = "w4\t5.00\t4.00\tstory-a"
    words.write_text("\n".join(lines) + "\n")
    return _features(words, tmp / "f.zarr", RANDOM_TEXT)


CASES = {
    # id: (builder, [fragments of the one-line message]) -- FILE stands for the file's path
    "config: unknown key": (
        c_unknown_key,
        ["FILE", "unknown key 'modles' (did you mean 'models'?)"],
    ),
    "config: nested typo": (
        c_nested_typo,
        ["FILE", "encoders.ridge: unknown key 'alpha' (did you mean 'alphas'?)"],
    ),
    "config: wrong type": (c_wrong_type, ["FILE", "cv.n_folds: 'five' is not valid"]),
    "config: undefined model": (
        c_undefined_model,
        [
            "datasets.pics.models: 'rand-imgg' is not defined under models",
            "(did you mean 'rand-img'?)",
        ],
    ),
    "config: undefined encoder": (
        c_undefined_encoder,
        ["datasets.pics.encoders: 'ridg' is not defined under encoders"],
    ),
    "config: subject ids read as numbers": (
        c_numeric_subjects,
        ["datasets.pics.subjects.0: subject id 1 is a number; quote subject ids"],
    ),
    "config: invalid YAML": (c_bad_yaml, ["FILE:3: invalid YAML"]),
    "config: missing file": (c_missing_config, ["absent.yaml: missing config file"]),
    "responses: missing": (r_missing, ["sub-01.nc: missing netCDF file"]),
    "responses: not netCDF": (r_unreadable, ["sub-01.nc: cannot be read as netCDF"]),
    "responses: no variable": (r_no_variable, ["sub-01.nc: no variable 'responses'"]),
    "responses: NaN voxel": (r_nan_voxel, ["sub-01.nc: 1 voxel(s) with NaN/inf", "on_bad_voxels"]),
    "responses: infinite voxel": (r_inf_voxel, ["sub-01.nc: 1 voxel(s) with NaN/inf"]),
    "responses: constant voxel": (
        r_constant_voxel,
        ["sub-01.nc: 0 voxel(s) with NaN/inf and 1 constant"],
    ),
    "responses: every voxel bad (drop)": (r_all_voxels_bad_dropped, ["sub-01.nc: every voxel is"]),
    "responses: narrative without tr": (
        r_no_tr,
        ["sub-01.nc: narrative responses need a positive 'tr'"],
    ),
    "responses: stimulus ids differ": (r_stimulus_ids, ["stimulus ids do not match", "img.zarr"]),
    "responses: runs differ": (
        r_runs,
        ["runs ['story-c'] of the responses have no words in", "txt.zarr"],
    ),
    "responses: TR count": (
        r_tr_count,
        ["sub-01.nc: run 'story-a' has 30 TRs (60.0 s", "TR count or 'tr' does not match"],
    ),
    "responses: too few stimuli for the folds": (
        r_few_stimuli,
        ["sub-01.nc: 8 distinct stimuli are too few for the folds", "lower cv.n_folds"],
    ),
    "responses: too few TRs for the folds": (
        r_few_trs,
        ["sub-01.nc: 120 TRs are too few for the folds", "cv.gap_trs"],
    ),
    "features: missing store": (r_missing_features, ["absent.zarr: missing features store"]),
    "ceiling: voxel count differs": (r_ceiling_voxels, ["ceiling.nc: 12 voxels, but", "has 6"]),
    "ceiling: no repeats": (
        r_no_repeats,
        ["sub-01.nc: no noise ceiling: no stimulus has 2 or more"],
    ),
    "ceiling: subjects' TR counts differ": (r_isc_timing, ["sub-02.nc: shape", "differs from"]),
    "stimuli: missing table": (s_missing_table, ["images.tsv: missing stimulus file"]),
    "stimuli: missing column": (s_missing_column, ["images.tsv: missing column(s) ['path']"]),
    "stimuli: duplicate ids": (s_duplicate_ids, ["images.tsv: duplicate stimulus_id(s) ['im03']"]),
    "stimuli: missing image": (
        s_missing_image,
        ["images.tsv: 1 image file(s) missing", "im07.png"],
    ),
    "stimuli: corrupt image": (s_corrupt_image, ["im05.png: cannot be read as an image"]),
    "stimuli: word offset before onset": (s_word_times, ["words.tsv: offset before onset"]),
    "model: folder missing": (s_missing_model_folder, ["vit: model folder does not exist"]),
    "model: not a model folder": (
        s_not_a_model_folder,
        ["vit: not a model folder (no config.json"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_exit_2_and_no_output(case, base, tmp_path, capsys, request):
    build, fragments = CASES[case]
    extra = (
        {"tiny_vit": request.getfixturevalue("tiny_vit")}
        if "tiny_vit" in str(build.__code__.co_varnames)
        else {}
    )
    argv = build(base, tmp_path, **extra)
    capsys.readouterr()
    before = set(tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("alignment ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    (line,) = lines
    assert line.startswith(f"alignment {argv[0]}: error: ")
    for fragment in fragments:
        fragment = fragment.replace("FILE", argv[1] if argv[0] == "check-config" else "FILE")
        assert fragment in line, f"{fragment!r} not in {line!r}"
    # nothing written: no output, no temporary sibling left behind
    assert set(tmp_path.rglob("*")) == before
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    assert out is None or not out.exists()


def test_bad_voxels_dropped_when_asked_and_logged(base, tmp_path, caplog):
    write_netcdf(image_responses(1, bad="nan"), tmp_path / "sub-01.nc")
    out = tmp_path / "scores.nc"
    argv = _encode(tmp_path / "sub-01.nc", base / "img.zarr", out, "--on-bad-voxels", "drop")
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert (
        f"{tmp_path / 'sub-01.nc'}: dropping 1 voxel(s) (1 with NaN/inf, 0 constant)" in caplog.text
    )
    import xarray as xr

    scores = xr.load_dataset(out, engine="h5netcdf")
    assert scores.sizes["voxel"] == 11 and 2 not in scores["vertex"].values


def test_paths_with_spaces(base, tmp_path):
    """A study under a folder with spaces runs through the CLI, and the rules quote its paths."""
    root = tmp_path / "my study"
    shutil.copytree(base / "responses", root / "fMRI data")
    shutil.copytree(base / "stimuli", root / "stimuli")
    table = root / "stimuli" / "images.tsv"
    assert main(_features(table, root / "f.zarr")) == 0
    ceiling = root / "ceiling.nc"
    assert main(_ceiling(ceiling, root / "fMRI data" / "pics_sub-01.nc")) == 0
    argv = _encode(root / "fMRI data" / "pics_sub-01.nc", root / "f.zarr", root / "s.nc")
    assert main([*argv[:-2], "--ceiling", str(ceiling), *argv[-2:]]) == 0
    # the workflow: a dry run shows every shell command with the spaced paths quoted
    config = study_config()
    config["datasets"]["pics"]["responses"] = "fMRI data/pics_sub-{subject}.nc"
    config["datasets"]["story"]["responses"] = "fMRI data/story_sub-{subject}.nc"
    write_config(root, config)
    run = snakemake(
        root, "-n", "-p", "--cores", "1", "results/sub-01/pics/rand-img/ridge/scores.nc"
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--responses 'fMRI data/pics_sub-01.nc' --index 0" in run.stdout
    assert "alignment encode --responses 'fMRI data/pics_sub-01.nc'" in run.stdout
