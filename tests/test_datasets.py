"""Dataset adapters on tiny fixtures that mirror each released layout, names and dtypes."""

from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest
from scipy.io import savemat

from alignment import dims
from alignment.data import algonauts, bold5000, lebel, nsd, pereira
from alignment.data.prepare import prepare_responses, prepare_stimuli, resolve_datasets
from alignment.evaluation import noise_ceiling
from alignment.io import InputError, read_netcdf
from alignment.metrics.ceilings import ncsnr_ceiling
from alignment.stimuli.images import load_images, read_image_table

# --------------------------------------------------------------------------------------------
# NSD


def test_nsd_index_arithmetic_by_hand():
    # subject 2 saw its 10k images 3, 1, 3 (1-based); its 10k image k is 73k id subjectim[1, k-1]
    design = {
        "masterordering": np.array([3, 1, 3]),
        "subjectim": np.array([[11, 12, 13], [21, 22, 23]]),
        "sharedix": np.array([23]),
    }
    assert nsd.trial_images(design, 2, 3).tolist() == [22, 20, 22]  # 0-based: 23-1, 21-1
    assert nsd.trial_images(design, 1, 2).tolist() == [12, 10]
    assert nsd.stimulus_ids([22, 5]).tolist() == ["nsd-00022", "nsd-00005"]
    assert nsd.subject_number("subj03") == 3 and nsd.subject_number("1") == 1
    with pytest.raises(InputError, match=r"NSD has subjects 01\.\.08; '09'"):
        nsd.subject_number("09")


GRID = (4, 3, 2)


def _nsd_root(tmp_path, n_sessions=2, space="func1pt8mm"):
    rng = np.random.default_rng(0)
    root = tmp_path / "nsd"
    exp = root / "nsddata/experiments/nsd"
    exp.mkdir(parents=True)
    n_trials = 750 * n_sessions
    # 40 distinct 10k images, shown about 37 times each across the sessions
    masterordering = rng.integers(1, 41, size=30000)
    subjectim = np.tile(np.arange(1, 10001), (8, 1)) + np.arange(8)[:, None] * 7000
    sharedix = subjectim[0, :5]  # the subject's first 5 images are "shared"
    savemat(
        exp / "nsd_expdesign.mat",
        {
            "masterordering": masterordering[None],
            "subjectim": subjectim,
            "sharedix": sharedix[None],
        },
    )
    stim = root / "nsddata_stimuli/stimuli/nsd"
    stim.mkdir(parents=True)
    with h5py.File(stim / "nsd_stimuli.hdf5", "w") as fh:
        brick = np.zeros((60, 8, 8, 3), np.uint8)
        brick[:, 0, 0, 0] = np.arange(60)  # image i has red value i at pixel (0, 0)
        fh["imgBrick"] = brick
    affine = np.diag([1.8, 1.8, 1.8, 1.0])
    betas = root / "nsddata_betas/ppdata/subj01" / space / nsd.BETAS
    betas.mkdir(parents=True)
    label = root / "nsddata/freesurfer/fsaverage/label"
    label.mkdir(parents=True)
    (label / "prf-visualrois.mgz.ctab").write_text("0 Unknown\n1 V1v\n2 V1d\n")
    signal = rng.standard_normal((60, 24))  # per 73k image and voxel
    ids = (subjectim[0, masterordering[:n_trials] - 1] - 1) % 60
    trials = (signal[ids] + 0.5 * rng.standard_normal((n_trials, 24))) * 300
    if space == "func1pt8mm":
        roi = root / "nsddata/ppdata/subj01/func1pt8mm/roi"
        roi.mkdir(parents=True)
        general = np.zeros(GRID, np.int16)
        general.ravel()[:10] = 1
        general.ravel()[20:] = -1
        prf = np.zeros(GRID, np.int16)
        prf.ravel()[:3] = [1, 2, 2]
        nib.save(nib.Nifti1Image(general, affine), roi / "nsdgeneral.nii.gz")
        nib.save(nib.Nifti1Image(prf, affine), roi / "prf-visualrois.nii.gz")
        for s in range(n_sessions):
            block = trials[s * 750 : (s + 1) * 750].T.reshape(*GRID, 750).astype(np.int16)
            nib.save(nib.Nifti1Image(block, affine), betas / f"betas_session{s + 1:02d}.nii.gz")
    else:
        for h, lo in (("lh", 0), ("rh", 12)):
            mask = np.zeros((12, 1, 1), np.float32)
            mask[:5] = 1
            prf = np.zeros((12, 1, 1), np.float32)
            prf[:2] = 1
            nib.save(nib.MGHImage(mask, np.eye(4)), label / f"{h}.nsdgeneral.mgz")
            nib.save(nib.MGHImage(prf, np.eye(4)), label / f"{h}.prf-visualrois.mgz")
            for s in range(n_sessions):
                block = trials[s * 750 : (s + 1) * 750, lo : lo + 12].T / 300
                nib.save(
                    nib.MGHImage(block.reshape(12, 1, 1, 750).astype(np.float32), np.eye(4)),
                    betas / f"{h}.betas_session{s + 1:02d}.mgh",
                )
    return root, ids


def test_nsd_func1pt8mm_trials_rois_split_and_ceiling(tmp_path):
    root, ids = _nsd_root(tmp_path)
    spec = {"format": "nsd", "kind": "images", "root": str(root), "rois": ["prf-visualrois"]}
    ds = nsd.read_responses(spec, "01")
    assert ds[dims.RESPONSES].shape == (1500, 10)  # 2 sessions x 750 trials, nsdgeneral > 0
    assert ds[dims.STIMULUS_ID].values[:3].tolist() == [f"nsd-{i:05d}" for i in ids[:3]]
    assert ds["session"].values.tolist() == [1] * 750 + [2] * 750
    first = ds[dims.STIMULUS_ID].values.tolist().index(ds[dims.STIMULUS_ID].values[0], 1)
    assert ds[dims.REPETITION].values[0] == 0 and ds[dims.REPETITION].values[first] == 1
    assert ds[dims.ROI].values[:4].tolist() == ["V1v", "V1d", "V1d", "none"]  # names from ctab
    assert ds["i"].values[:2].tolist() == [0, 0] and ds["k"].values[:2].tolist() == [0, 1]
    assert set(ds["split"].values[np.isin(ds["nsd_index"].values, np.arange(5))]) == {"test"}
    assert ds.attrs["grid"] == "func1pt8mm" and ds.attrs["space"] == "native"
    z = ds[dims.RESPONSES].values[:750]
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)  # z-scored within the session
    np.testing.assert_allclose(z.std(0), 1, atol=1e-4)
    c = noise_ceiling([ds], 0)
    expected = ncsnr_ceiling(
        ds[dims.RESPONSES].values, ds[dims.STIMULUS_ID].values, ds["session"].values
    )
    np.testing.assert_allclose(c[dims.CEILING].values, expected.ceiling, rtol=1e-5)
    assert (c[dims.CEILING].values > 0.5).all()  # signal sd 1, noise sd 0.5, ~37 repeats


def test_nsd_fsaverage_average_repeats_and_stimuli(tmp_path):
    root, _ = _nsd_root(tmp_path, space="fsaverage")
    spec = {"format": "nsd", "kind": "images", "root": str(root), "space": "fsaverage",
            "rois": ["prf-visualrois"], "average_repeats": True}  # fmt: skip
    ds = nsd.read_responses(spec, "1")
    assert ds[dims.RESPONSES].shape[1] == 10  # 5 vertices per hemisphere
    assert ds[dims.HEMI].values.tolist() == ["left"] * 5 + ["right"] * 5
    assert ds[dims.VERTEX].values.tolist() == [0, 1, 2, 3, 4] * 2
    assert ds[dims.ROI].values.tolist()[:3] == ["V1v", "V1v", "none"]
    n_images = len(set(ds[dims.STIMULUS_ID].values))
    assert ds.sizes[dims.STIMULUS] == n_images  # one row per image
    assert ds[dims.CEILING].attrs["method"].startswith("ncsnr")
    assert noise_ceiling([ds], 0).attrs["method"].startswith("ncsnr")
    out = tmp_path / "stimuli.tsv"
    prepare_stimuli(spec, ["01"], "nsd", out)
    table = read_image_table(out)
    assert set(table[dims.STIMULUS_ID]) == set(ds[dims.STIMULUS_ID].values)
    row = table.iloc[3]
    img = load_images([row["path"]])[0]  # read lazily from nsd_stimuli.hdf5
    assert img.getpixel((0, 0))[0] == row["nsd_index"]


def test_nsd_clear_errors(tmp_path):
    root, _ = _nsd_root(tmp_path)
    spec = {"format": "nsd", "kind": "images", "root": str(root), "rois": []}
    with pytest.raises(InputError, match=r"nope: missing folder \(NSD root\)"):
        nsd.read_responses({**spec, "root": str(tmp_path / "nope")}, "01")
    with pytest.raises(InputError, match=r"subj03: missing folder \(NSD subject\)"):
        nsd.read_responses(spec, "03")
    with pytest.raises(InputError, match=r"betas_session03.nii.gz: missing NSD session 3 betas"):
        nsd.read_responses({**spec, "sessions": 3}, "01")


# --------------------------------------------------------------------------------------------
# LeBel et al. 2023 (ds003020)

GRID_WORDS = ["so", "it", "began", "one", "day", "in", "town"]


def _textgrid(words, onsets, dur=0.3):
    items = [("", 0.0, onsets[0])]
    for w, t in zip(words, onsets, strict=True):
        items.append((w, t, t + dur))
    xmax = onsets[-1] + dur
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0",
             f"xmax = {xmax}", "tiers? <exists>", "size = 1", "item []:", "    item [1]:",
             '        class = "IntervalTier"', '        name = "word"', "        xmin = 0",
             f"        xmax = {xmax}", f"        intervals: size = {len(items)}"]  # fmt: skip
    for i, (w, a, b) in enumerate(items, 1):
        lines += [f"        intervals [{i}]:", f"            xmin = {a}", f"            xmax = {b}",
                  f'            text = "{w}"']  # fmt: skip
    return "\n".join(lines) + "\n"


def _lebel_root(tmp_path, repeats=True):
    rng = np.random.default_rng(1)
    root = tmp_path / "ds003020"
    der = root / "derivative"
    (der / "TextGrids").mkdir(parents=True)
    respdict = {"alpha": 50, "wheretheressmoke": 45}
    (der / "respdict.json").write_text(json.dumps(respdict))
    for story, n in respdict.items():
        onsets = np.linspace(1.0, (n - 12) * 2.0, len(GRID_WORDS)).round(2).tolist()
        (der / "TextGrids" / f"{story}.TextGrid").write_text(_textgrid(GRID_WORDS, onsets))
    for subject in ("UTS01", "UTS02"):
        sdir = der / "preprocessed_data" / subject
        sdir.mkdir(parents=True)
        for story, n in respdict.items():
            kept = n - 20
            with h5py.File(sdir / f"{story}.hf5", "w") as fh:
                if story == "wheretheressmoke" and repeats:
                    signal = rng.standard_normal((kept, 6))
                    fh["data"] = (signal + 0.3 * rng.standard_normal((4, kept, 6))).astype(
                        np.float32
                    )
                else:
                    fh["data"] = rng.standard_normal((kept, 6)).astype(np.float32)
    return root


def test_lebel_trimming_runs_words_and_ceiling(tmp_path):
    root = _lebel_root(tmp_path)
    spec = {"format": "lebel2023", "kind": "narrative", "root": str(root)}
    ds = lebel.read_responses(spec, "UTS01")
    # respdict 50 and 45 TRs -> 30 and 25 kept by [5 + 5 : -5] after pad 5
    assert ds[dims.RESPONSES].shape == (55, 6)
    assert ds[dims.RUN].values.tolist() == ["alpha"] * 30 + ["wheretheressmoke"] * 25
    assert ds.attrs["first_volume_time"] == 10.0 and ds.attrs["tr"] == 2.0
    assert lebel.kept_trs(50) == (10, 30)
    assert (ds[dims.CEILING].values > 0.7).all()  # 4 repeats, noise sd 0.3
    assert "split-half" in noise_ceiling([ds], 0).attrs["method"]
    words = lebel.read_stimuli(spec, ["UTS01", "UTS02"])
    assert words["run"].unique().tolist() == ["alpha", "wheretheressmoke"]
    assert words["word"].tolist()[:3] == ["so", "it", "began"]  # empty first interval dropped


def test_lebel_errors(tmp_path):
    root = _lebel_root(tmp_path, repeats=False)
    spec = {"format": "lebel2023", "kind": "narrative", "root": str(root)}
    with pytest.raises(
        InputError,
        match=r"UTS09: no such subject in the data \(subjects there: \['UTS01', 'UTS02'\]\)",
    ):
        lebel.read_responses(spec, "UTS09")
    (root / "derivative/respdict.json").write_text(
        json.dumps({"alpha": 52, "wheretheressmoke": 45})
    )
    with pytest.raises(InputError, match=r"alpha.hf5: 30 rows, but respdict gives 52 TRs, i.e. 32"):
        lebel.read_responses(spec, "UTS01")
    with pytest.raises(InputError, match="responses of story 'beta'"):
        lebel.read_responses({**spec, "stories": ["beta"]}, "UTS01")


# --------------------------------------------------------------------------------------------
# Pereira 2018


def _cell(*items):
    """A MATLAB cell array (1-D object array) as savemat writes it."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def _pereira_root(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "pereira"
    n_vox = 12
    for subject in ("M02", "P01"):
        (root / subject).mkdir(parents=True)
        sentences = np.array([[f"Sentence number {i}."] for i in range(16)], dtype=object)
        meta = {
            "colToCoord": np.arange(n_vox * 3).reshape(n_vox, 3) + 1,
            "atlases": np.array(["gordon", "languageLH", "languageRH"], dtype=object),
            "rois": _cell(_cell("G1"), _cell("LH_AntTemp", "LH_IFG"), _cell("RH_AntTemp")),
            "roiMultimask": _cell(
                np.ones((n_vox, 1)),
                np.array([[1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]).T,
                np.array([[0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]]).T,
            ),
        }
        savemat(
            root / subject / "examples_384sentences.mat",
            {
                "examples": rng.standard_normal((16, n_vox)),
                "keySentences": sentences,
                "labelsPassageForEachSentence": (np.arange(16) // 4 + 1)[:, None],
                "meta": meta,
            },
        )
    return root


def test_pereira_language_voxels_passages_and_sentences(tmp_path):
    root = _pereira_root(tmp_path)
    spec = {"format": "pereira2018", "kind": "sentences", "root": str(root)}
    ds = pereira.read_responses(spec, "M02")
    assert ds[dims.RESPONSES].shape == (16, 4)  # language LH + RH voxels only
    assert ds[dims.ROI].values.tolist() == ["LH_AntTemp", "LH_IFG", "RH_AntTemp", "RH_AntTemp"]
    assert ds[dims.HEMI].values.tolist() == ["left", "left", "right", "right"]
    assert ds["passage"].values.tolist() == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert ds[dims.STIMULUS_ID].values[0] == "pereira384-001"
    assert ds["i"].values.tolist()[:2] == [1, 4]
    assert np.isnan(noise_ceiling([ds], 0)[dims.CEILING].values).all()
    table = pereira.read_stimuli(spec, ["M02", "P01"])
    assert table.columns.tolist() == ["stimulus_id", "sentence", "passage"]
    assert table["sentence"][3] == "Sentence number 3."
    with pytest.raises(InputError, match=r"no atlas matching 'aal'"):
        pereira.read_responses({**spec, "atlas": "aal"}, "M02")
    with pytest.raises(InputError, match=r"M09: no such subject in the data"):
        pereira.read_responses(spec, "M09")


# --------------------------------------------------------------------------------------------
# Algonauts 2023


def _algonauts_root(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    root = tmp_path / "algonauts_2023_challenge_data"
    sdir = root / "subj01"
    imgs = sdir / "training_split/training_images"
    imgs.mkdir(parents=True)
    fmri = sdir / "training_split/training_fmri"
    fmri.mkdir(parents=True)
    masks = sdir / "roi_masks"
    masks.mkdir(parents=True)
    for i, nsd_id in enumerate([13, 5, 907, 44, 61, 2, 3, 8, 9, 10, 11, 12]):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(imgs / f"train-{i + 1:04d}_nsd-{nsd_id:05d}.png")
    for h, n in (("lh", 5), ("rh", 4)):
        np.save(fmri / f"{h}_training_fmri.npy", rng.standard_normal((12, n)).astype(np.float32))
        used = np.zeros(20, bool)
        used[np.arange(n) * 2] = True
        np.save(masks / f"{h}.all-vertices_fsaverage_space.npy", used.astype(np.float32))
        np.save(masks / f"{h}.prf-visualrois_challenge_space.npy", np.array([1, 7] + [0] * (n - 2)))
    np.save(masks / "mapping_prf-visualrois.npy", {0: "Unknown", 1: "V1v", 7: "hV4"})
    return root


def test_algonauts_vertices_rois_and_images(tmp_path):
    root = _algonauts_root(tmp_path)
    spec = {
        "format": "algonauts2023",
        "kind": "images",
        "root": str(root),
        "rois": ["prf-visualrois"],
    }
    ds = algonauts.read_responses(spec, "01")
    assert ds[dims.RESPONSES].shape == (12, 9)
    assert ds[dims.VERTEX].values.tolist() == [0, 2, 4, 6, 8, 0, 2, 4, 6]  # fsaverage indices
    assert ds[dims.ROI].values.tolist()[:3] == ["V1v", "hV4", "none"]
    assert ds[dims.STIMULUS_ID].values[:3].tolist() == ["nsd-00013", "nsd-00005", "nsd-00907"]
    assert ds.attrs["space"] == "fsaverage"
    table = algonauts.read_stimuli(spec, ["01"])
    assert load_images(table["path"][:2])[1].getpixel((0, 0)) == (1, 0, 0)
    with pytest.raises(InputError, match="subj02: no such subject"):
        algonauts.read_responses(spec, "02")


# --------------------------------------------------------------------------------------------
# BOLD5000


def _bold5000_root(tmp_path, fmt="h5"):
    from PIL import Image

    rng = np.random.default_rng(4)
    root = tmp_path / "BOLD5000"
    (root / "ROIs/stim_lists").mkdir(parents=True)
    names = ["rep_a.jpg", "COCO_b.jpg", "n01_c.JPEG", "rep_a.jpg", "d.jpg", "rep_a.jpg"] * 3
    (root / "ROIs/stim_lists/CSI01_stim_lists.txt").write_text("\n".join(names) + "\n")
    sizes = {"LHPPA": 3, "RHPPA": 2, "LHEarlyVis": 4, "RHEarlyVis": 4}
    data = {k: rng.standard_normal((len(names), n)).astype(np.float32) for k, n in sizes.items()}
    if fmt == "h5":
        (root / "ROIs/CSI1/h5").mkdir(parents=True)
        with h5py.File(root / "ROIs/CSI1/h5/CSI1_ROIs_TR34.h5", "w") as fh:
            for k, v in data.items():
                fh[k] = v
    else:
        (root / "ROIs/CSI1/mat").mkdir(parents=True)
        savemat(root / "ROIs/CSI1/mat/CSI1_ROIs_TR34.mat", data)
    pres = root / "BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli"
    for folder, name in (
        ("Scene", "a.jpg"),
        ("COCO", "COCO_b.jpg"),
        ("ImageNet", "n01_c.JPEG"),
        ("Scene", "d.jpg"),
    ):
        (pres / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(pres / folder / name, format="JPEG")
    return root


@pytest.mark.parametrize("fmt", ["h5", "mat"])
def test_bold5000_rois_repeats_and_images(tmp_path, fmt):
    root = _bold5000_root(tmp_path, fmt)
    spec = {"format": "bold5000", "kind": "images", "root": str(root)}
    ds = bold5000.read_responses(spec, "CSI1")
    assert ds[dims.RESPONSES].shape == (18, 13)
    assert sorted(set(ds[dims.ROI].values)) == ["EarlyVis", "PPA"]
    assert (
        ds[dims.HEMI].values[ds[dims.ROI].values == "PPA"] == ["left"] * 3 + ["right"] * 2
    ).all()
    ids = ds[dims.STIMULUS_ID].values
    assert ids[0] == "a.jpg" and (ids == "a.jpg").sum() == 9  # rep_ stripped: one image, 9 trials
    assert ds[dims.REPETITION].values[ids == "a.jpg"].tolist() == list(range(9))
    table = bold5000.read_stimuli(spec, ["1"])
    assert table[dims.STIMULUS_ID].tolist() == ["a.jpg", "COCO_b.jpg", "n01_c.JPEG", "d.jpg"]
    assert table["path"][2].endswith("ImageNet/n01_c.JPEG")
    with pytest.raises(InputError, match=r"CSI2_ROIs_TR34\.h5: missing BOLD5000 ROI file"):
        bold5000.read_responses(spec, "2")


# --------------------------------------------------------------------------------------------
# prepare: config entries -> results/data


def test_resolve_datasets_points_format_entries_at_prepared_files():
    datasets = {
        "demo": {"kind": "images", "responses": "d/sub-{subject}.nc", "stimuli": "s.tsv"},
        "mine": {
            "kind": "narrative",
            "format": "text",
            "responses": "m/{subject}.txt",
            "stimuli": "story.TextGrid",
        },
        "nsd": {"kind": "images", "format": "nsd", "root": "/data/nsd"},
    }
    out = resolve_datasets(datasets)
    assert out["demo"] == datasets["demo"]
    assert out["mine"]["responses"] == "results/data/mine/sub-{subject}_responses.nc"
    assert out["mine"]["source_responses"] == "m/{subject}.txt"
    assert out["mine"]["stimuli"] == "story.TextGrid"
    assert out["nsd"]["stimuli"] == "results/data/nsd/stimuli.tsv"
    assert "source_responses" not in datasets["mine"]  # the config itself is untouched


def test_prepare_responses_writes_validated_netcdf(tmp_path):
    root = _bold5000_root(tmp_path)
    out = tmp_path / "r.nc"
    prepare_responses({"format": "bold5000", "kind": "images", "root": str(root)}, "1", "b5k", out)
    ds = read_netcdf(out)
    assert ds.attrs["format"] == "bold5000" and ds.attrs["dataset"] == "b5k"
    assert ds.sizes == {"stimulus": 18, "voxel": 13}
