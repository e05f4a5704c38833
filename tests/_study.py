"""A tiny bring-your-own study written from scratch (no demo, no model weights) for workflow tests.

Images: 24 stimuli shown twice, tiny PNGs. Narrative: two runs of word timings heard by every
subject. Responses are random with a little planted structure; models are random-feature ones,
so every job is cheap and the numbers are still real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MPLBACKEND": "Agg",
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
}
N_IMAGES, N_VOXELS, N_TRS, TR = 24, 12, 60, 2.0


def write_images(root: Path) -> Path:
    """A stimulus table of N_IMAGES tiny PNGs; returns the table's path."""
    from PIL import Image

    folder = root / "stimuli"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["stimulus_id\tpath"]
    for i in range(N_IMAGES):
        name = f"im{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / name)
        rows.append(f"im{i:02d}\t{name}")
    (folder / "images.tsv").write_text("\n".join(rows) + "\n")
    return folder / "images.tsv"


def write_words(root: Path) -> Path:
    """Word timings over two runs of N_TRS TRs each."""
    lines = ["word\tonset\toffset\trun"]
    for run in ("story-a", "story-b"):
        t = 1.0
        for k in range(150):
            lines.append(f"w{k % 17}\t{t:.2f}\t{t + 0.3:.2f}\t{run}")
            t += 0.75
    path = root / "stimuli" / "words.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def image_responses(seed: int, bad: str | None = None):
    """Image Responses of one subject; ``bad`` plants a NaN or constant voxel."""
    from alignment.data.responses import make_responses

    rng = np.random.default_rng(seed)
    signal = np.random.default_rng(100).standard_normal((N_IMAGES, N_VOXELS))
    data = np.concatenate([signal + rng.standard_normal(signal.shape) for _ in range(2)])
    if bad == "nan":
        data[3, 2] = np.nan
    elif bad == "constant":
        data[:, 5] = 1.0
    ids = [f"im{i:02d}" for i in range(N_IMAGES)] * 2
    return make_responses(
        data,
        kind="images",
        stimulus_id=ids,
        repetition=[0] * N_IMAGES + [1] * N_IMAGES,
        session=[0] * N_IMAGES + [1] * N_IMAGES,
        roi=["early"] * 6 + ["late"] * 6,
        attrs={"subject": f"{seed:02d}", "dataset": "pics"},
    )


def narrative_responses(seed: int, n_trs: int = N_TRS):
    from alignment.data.responses import make_responses

    rng = np.random.default_rng(seed)
    shared = np.random.default_rng(200).standard_normal((2 * n_trs, N_VOXELS))
    data = shared + rng.standard_normal(shared.shape)
    return make_responses(
        data,
        kind="narrative",
        run=["story-a"] * n_trs + ["story-b"] * n_trs,
        roi=["auditory"] * 6 + ["language"] * 6,
        attrs={"subject": f"{seed:02d}", "dataset": "story", "tr": TR, "first_volume_time": 0.0},
    )


def write_study(root: Path, subjects=("01", "02")) -> None:
    """Stimuli and every subject's responses under ``root``."""
    from alignment.io import write_netcdf

    write_images(root)
    write_words(root)
    for s in subjects:
        write_netcdf(image_responses(int(s)), root / "responses" / f"pics_sub-{s}.nc")
        write_netcdf(narrative_responses(int(s)), root / "responses" / f"story_sub-{s}.nc")


def study_config(subjects=("01", "02")) -> dict:
    return {
        "datasets": {
            "pics": {
                "kind": "images",
                "responses": "responses/pics_sub-{subject}.nc",
                "stimuli": "stimuli/images.tsv",
                "subjects": list(subjects),
                "models": ["rand-img"],
            },
            "story": {
                "kind": "narrative",
                "responses": "responses/story_sub-{subject}.nc",
                "stimuli": "stimuli/words.tsv",
                "subjects": list(subjects),
                "models": ["rand-txt"],
            },
        },
        "models": {
            "rand-img": {"kind": "random", "modality": "image", "n_units": 8},
            "rand-txt": {"kind": "random", "modality": "text", "n_units": 6},
        },
        "encoders": {"ridge": {"kind": "ridge", "alphas": [1.0, 100.0], "backend": "numpy"}},
        "cv": {"n_folds": 3, "inner_folds": 2, "gap_trs": 2, "train_on": "mean"},
        "timeseries": {"delays": [1, 2], "detrend": "polynomial", "detrend_order": 1},
        "stats": {"n_permutations": 20},
        "report": {"truth": None},
    }


def score_targets(config: dict) -> list[str]:
    """Every Scores file the config asks for."""
    return [
        f"results/sub-{s}/{d}/{m}/{e}/scores.nc"
        for d, spec in config["datasets"].items()
        for s in spec["subjects"]
        for m in spec["models"]
        for e in spec.get("encoders", list(config["encoders"]))
    ]


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        check=False,
    )


def alignment(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "alignment"), *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        check=False,
        timeout=300,
    )
