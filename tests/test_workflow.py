"""The Snakemake workflow: dry run of the default DAG, a tiny real run, and clear failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignment.config import check_config
from alignment.io import InputError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
BIN = Path(sys.executable).parent


def _default_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def _snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    env = {**ENV, "PATH": f"{BIN}{os.pathsep}{ENV.get('PATH', '')}"}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _write_config(workdir: Path, config: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def test_default_config_is_valid():
    check_config(_default_config(), SCHEMA)


def test_dry_run_lists_the_whole_dag(tmp_path):
    _write_config(tmp_path, _default_config())
    out = _snakemake(tmp_path, "-n", "--cores", "1")
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    for rule in ("demo_data", "features", "ceiling", "encode", "report", "summary", "all"):
        assert rule in text
    # ridge: 3 subjects x (4 pooled image + 3 narrative models), plus the in-context encoder on
    # the image ViT; routing: 3 subjects x the tokens model
    words = " ".join(text.split())
    assert "encode 24" in words and "encode_routing 3" in words
    # the in-context encoder: one leave-one-subject-out meta-training per subject; one fewshot
    # job per subject gives the scaling curve, decoding and attention from the same fits
    assert "meta_train 3" in words and "fewshot 3" in words and "decode 3" not in words
    # RSA of the ViT and its random control; group and comparison reports per dataset
    assert "rsa 6" in words and "group_report 2" in words and "compare_report 2" in words


def test_config_typo_fails_at_start_with_a_suggestion(tmp_path):
    config = _default_config()
    config["modles"] = config.pop("models")
    with pytest.raises(InputError, match=r"unknown key 'modles' \(did you mean 'models'\?\)"):
        check_config(config, SCHEMA)
    _write_config(tmp_path, config)
    out = _snakemake(tmp_path, "-n", "--cores", "1")
    assert out.returncode != 0
    assert "did you mean 'models'" in out.stdout + out.stderr


def test_config_undefined_model_and_wrong_modality_are_caught():
    config = _default_config()
    config["datasets"]["demo-images"]["models"] = ["vit-tiny-untraind", "minilm"]
    with pytest.raises(InputError) as err:
        check_config(config, SCHEMA)
    assert "did you mean 'vit-tiny-untrained'" in str(err.value)
    assert "model 'minilm' is a text model but the dataset is images" in str(err.value)


def test_missing_data_file_is_named(tmp_path):
    config = _default_config()
    config["datasets"]["demo-images"]["responses"] = "mydata/sub-{subject}_bold.nc"
    _write_config(tmp_path, config)
    out = _snakemake(tmp_path, "-n", "--cores", "1")
    assert out.returncode != 0
    assert "mydata/sub-01_bold.nc" in out.stdout + out.stderr


def _alignment(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "alignment"), *args], capture_output=True, text=True, env=ENV, check=False
    )


def test_cli_missing_file_exits_2_naming_it(tmp_path):
    out = _alignment(
        "encode",
        "--responses",
        str(tmp_path / "absent.nc"),
        "--features",
        str(tmp_path / "f.zarr"),
        "--out",
        str(tmp_path / "s.nc"),
    )
    assert out.returncode == 2
    assert "absent.nc: missing netCDF file" in out.stderr
    assert not (tmp_path / "s.nc").exists()


TINY = {
    "demo": {
        "subjects": ["01", "02"],
        "seed": 0,
        "images": {"n_images": 48},
        "narrative": {"n_sentences": 30},
    },
    "datasets": {
        "demo-images": {
            "kind": "images",
            "responses": "data/demo/images/sub-{subject}_responses.nc",
            "stimuli": "data/demo/images/stimuli.tsv",
            "subjects": ["01", "02"],
            "models": ["vit", "random-image"],
        },
        "demo-narrative": {
            "kind": "narrative",
            "responses": "data/demo/narrative/sub-{subject}_responses.nc",
            "stimuli": "data/demo/narrative/words.tsv",
            "subjects": ["01", "02"],
            "models": ["minilm"],
        },
    },
    "models": {
        "vit": {
            "source": "data/demo/models/vit-tiny-untrained",
            "modality": "image",
            "layers": [0, 1, 5],
        },
        "minilm": {
            "source": "data/demo/models/all-MiniLM-L6-v2",
            "modality": "text",
            "layers": [0, 3],
            "context_words": 10,
        },
        "random-image": {"kind": "random", "modality": "image", "n_units": 16},
    },
    "encoders": {"ridge": {"kind": "ridge", "alphas": [1.0, 100.0, 10000.0], "backend": "numpy"}},
    "cv": {"n_folds": 3, "inner_folds": 2, "gap_trs": 2},
    "stats": {"n_permutations": 20},
    "report": {"truth": "data/demo/truth.json"},
}


@pytest.mark.workflow
def test_tiny_end_to_end_run(tmp_path):
    _write_config(tmp_path, TINY)
    out = _snakemake(tmp_path, "--cores", "2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for subject in ("01", "02"):
        html = (tmp_path / "results" / f"sub-{subject}" / "report.html").read_text()
        assert (
            "data:image/png;base64," in html and "vit" in html and "RANDOM-FEATURE CONTROL" in html
        )
    summary = (tmp_path / "results" / "summary.txt").read_text()
    assert "sub-01 | demo-images | vit" in summary and "sub-02 | demo-narrative | minilm" in summary
    import xarray as xr

    with xr.open_dataset(tmp_path / "results/sub-01/demo-images/vit/ridge/scores.nc") as scores:
        assert list(scores["layer"].values) == ["layer_00", "layer_01", "layer_05"]
        assert set(scores.data_vars) >= {"r", "r2", "p", "q", "r_null_p95", "alpha", "ceiling"}
        assert len(scores.attrs["config_hash"]) == 12 and scores.attrs["untrained"] == 1
    # every rule wrote a log and a benchmark
    assert list((tmp_path / "results" / "logs" / "encode").glob("*.log"))
    assert list((tmp_path / "results" / "benchmarks" / "encode").glob("*.tsv"))
    # a second run has nothing to do: outputs are complete and trusted
    again = _snakemake(tmp_path, "-n", "--cores", "1")
    assert "Nothing to be done" in again.stdout + again.stderr
    # group answers: one group report and one model comparison per dataset, group first
    assert summary.startswith("== Group answer: demo-images (2 subject(s)")
    assert summary.index("== Per-subject details ==") > summary.index("demo-narrative | minilm")
    group = (tmp_path / "results/group/demo-images/report.html").read_text()
    assert "Group report: demo-images" in group and "cannot give p below 0.25" in group
    assert '<a href="../../sub-01/report.html">sub-01</a>' in group
    csv = (tmp_path / "results/compare/demo-narrative/comparison.csv").read_text().splitlines()
    assert csv[0].startswith("dataset,subject,model,encoder,layer,relative_depth,roi,r,ceiling,p")
    assert len(csv) == 1 + 2 * 2 * 2  # subjects x layers x ROIs of minilm
    # snakemake --report bundles them with their captions
    import zipfile

    made = _snakemake(tmp_path, "--report", "report.zip")
    assert made.returncode == 0, made.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        names = archive.namelist()
        index = archive.read(next(n for n in names if n.endswith("report/report.html")))
    assert sum(n.endswith("/comparison.csv") for n in names) == 2
    assert sum(n.endswith("/group_stats.csv") for n in names) == 2
    assert sum(n.endswith("/report.html") for n in names) >= 1 + 2 + 2 + 2
    for text in (b"Group reports", b"Model comparison", b"relative-depth axis"):
        assert text in index


def test_cli_mismatched_stimulus_ids_fail_clearly(tmp_path):
    import numpy as np

    from alignment.data.responses import make_responses
    from alignment.io import write_netcdf

    ids = [f"a{i}" for i in range(20)]
    resp = make_responses(
        np.random.default_rng(0).standard_normal((40, 5)),
        kind="images",
        stimulus_id=ids * 2,
        repetition=[0] * 20 + [1] * 20,
    )
    write_netcdf(resp, tmp_path / "sub-01.nc")
    (tmp_path / "other.tsv").write_text(
        "stimulus_id\tpath\n" + "".join(f"b{i}\tx.png\n" for i in range(20))
    )
    (tmp_path / "x.png").write_bytes(b"")
    spec = json.dumps({"kind": "random", "modality": "image", "n_units": 4})
    made = _alignment(
        "features",
        "--model",
        "r",
        "--spec",
        spec,
        "--stimuli",
        str(tmp_path / "other.tsv"),
        "--out",
        str(tmp_path / "f.zarr"),
    )
    assert made.returncode == 0, made.stderr
    out = _alignment(
        "encode",
        "--responses",
        str(tmp_path / "sub-01.nc"),
        "--features",
        str(tmp_path / "f.zarr"),
        "--stats",
        '{"n_permutations": 5}',
        "--out",
        str(tmp_path / "s.nc"),
    )
    assert out.returncode == 2
    assert "stimulus ids do not match" in out.stderr and "f.zarr" in out.stderr


def test_slurm_profile_dry_run_plans_every_job(tmp_path):
    _write_config(tmp_path, _default_config())
    out = _snakemake(tmp_path, "--profile", str(REPO / "profiles" / "slurm"), "-n")
    assert out.returncode == 0, out.stderr[-3000:]
    text = " ".join((out.stdout + out.stderr).split())
    assert "encode 24" in text and "encode_routing 3" in text and "features 8" in text
    assert "meta_train 3" in text
