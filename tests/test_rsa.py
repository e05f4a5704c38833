"""RSA and CKA against direct formulas, and the real human IT RDMs of Kriegeskorte et al. 2008."""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import pdist, squareform

from alignment.io import InputError
from alignment.metrics.rsa import (
    compare_rdms,
    kendall_tau_a,
    linear_cka,
    rdm,
    rdm_noise_ceiling,
    rdm_permutation_test,
    upper_triangle,
)

# ../shared/data beside the repository (a git worktree may sit one level deeper)
_ROOT = Path(__file__).resolve().parents[1]
DATA = next(
    (
        p
        for p in (_ROOT / ".." / "shared" / "data" / "kriegeskorte92",
                  _ROOT / ".." / ".." / "shared" / "data" / "kriegeskorte92")
        if p.is_dir()
    ),
    _ROOT / ".." / "shared" / "data" / "kriegeskorte92",
)  # fmt: skip


def test_rdm_is_correlation_distance():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 30))
    np.testing.assert_allclose(rdm(x), squareform(pdist(x, metric="correlation")), atol=1e-12)
    np.testing.assert_allclose(upper_triangle(rdm(x)), pdist(x, metric="correlation"))
    with pytest.raises(ValueError, match="stimuli"):
        rdm(x[:2])


def test_kendall_tau_a_and_spearman_match_direct_formulas():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4, 40).astype(float)  # many ties, as in a categorical model RDM
    b = a + rng.standard_normal(40)
    direct = sum(
        np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in combinations(range(40), 2)
    ) / (40 * 39 / 2)
    assert kendall_tau_a(a, b) == pytest.approx(direct, abs=1e-12)
    # without ties tau-a is scipy's tau (tau-b); with ties it is smaller in magnitude
    c = rng.standard_normal(40)
    assert kendall_tau_a(c, b) == pytest.approx(stats.kendalltau(c, b)[0], abs=1e-12)
    assert abs(kendall_tau_a(a, b)) < abs(stats.kendalltau(a, b)[0])
    x, y = rng.standard_normal((2, 10, 20))
    assert compare_rdms(rdm(x), rdm(y)) == pytest.approx(
        stats.spearmanr(pdist(x, "correlation"), pdist(y, "correlation"))[0]
    )
    assert compare_rdms(rdm(x), rdm(y), "kendall_tau_a") == pytest.approx(
        kendall_tau_a(pdist(x, "correlation"), pdist(y, "correlation"))
    )
    with pytest.raises(ValueError, match="method"):
        compare_rdms(rdm(x), rdm(y), "cosine")


def _hsic(k, g):
    n = k.shape[0]
    h = np.eye(n) - 1.0 / n
    return np.trace(k @ h @ g @ h) / (n - 1) ** 2


@pytest.mark.parametrize("n_stimuli", [15, 80])  # Gram branch and feature branch
def test_linear_cka_matches_the_hsic_formula(n_stimuli):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n_stimuli, 25))
    y = x[:, :10] @ rng.standard_normal((10, 18)) + 0.5 * rng.standard_normal((n_stimuli, 18))
    k, g = x @ x.T, y @ y.T
    direct = _hsic(k, g) / np.sqrt(_hsic(k, k) * _hsic(g, g))
    assert linear_cka(x, y) == pytest.approx(direct, rel=1e-10)
    q, _ = np.linalg.qr(rng.standard_normal((25, 25)))
    assert linear_cka(3.0 * x @ q + 1.0, y) == pytest.approx(direct, rel=1e-8)
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, rng.standard_normal((n_stimuli, 18))) < direct


def test_noise_ceiling_matches_brute_force_and_brackets_the_truth():
    rng = np.random.default_rng(3)
    truth = rng.standard_normal((20, 50))
    subjects = np.stack([rdm(truth + 1.5 * rng.standard_normal(truth.shape)) for _ in range(6)])
    ceil = rdm_noise_ceiling(subjects)
    vecs = [upper_triangle(s) for s in subjects]
    for s in range(6):
        others = np.mean([v for o, v in enumerate(vecs) if o != s], axis=0)
        assert ceil.lower_per_subject[s] == pytest.approx(stats.spearmanr(vecs[s], others)[0])
        assert ceil.upper_per_subject[s] == pytest.approx(
            stats.spearmanr(vecs[s], np.mean(vecs, axis=0))[0]
        )
    # the true model's RDM lies between the bounds
    true_fit = np.mean([compare_rdms(rdm(truth), s) for s in subjects])
    assert ceil.lower < true_fit < ceil.upper
    with pytest.raises(ValueError, match="at least 2"):
        rdm_noise_ceiling(subjects[:1])


def test_permutation_test_detects_structure_and_is_uniform_without_it():
    rng = np.random.default_rng(4)
    truth = rng.standard_normal((16, 40))
    data = rdm(truth + rng.standard_normal(truth.shape))
    obs, p = rdm_permutation_test(rdm(truth), data, n_permutations=199)
    assert obs > 0.3 and p == pytest.approx(1 / 200)
    # the rank shortcut of the null equals scoring every relabelled RDM directly
    _, _, fast = rdm_permutation_test(rdm(truth), data, n_permutations=5, return_null=True)
    g = np.random.default_rng(0)
    for value in fast:
        perm = g.permutation(16)
        assert value == pytest.approx(compare_rdms(rdm(truth)[np.ix_(perm, perm)], data))
    ps = [
        rdm_permutation_test(
            rdm(rng.standard_normal((16, 40))), data, n_permutations=99, random_state=i
        )[1]
        for i in range(60)
    ]
    assert stats.kstest(ps, "uniform").pvalue > 0.01


# ---------------------------------------------------------------------------------------------
# real data: human IT, 92 objects, 4 subjects x 2 sessions (Kriegeskorte et al. 2008)


@pytest.fixture(scope="module")
def k92():
    if not (DATA / "92_brainRDMs.mat").exists():
        pytest.skip(f"real data absent: {DATA} (see DESIGN.md section 8)")
    from scipy.io import loadmat

    brain = loadmat(DATA / "92_brainRDMs.mat", squeeze_me=True, struct_as_record=False)["RDMs"]
    models = loadmat(DATA / "92_modelRDMs.mat", squeeze_me=True, struct_as_record=False)
    sessions = np.array([[s.RDM for s in subject] for subject in brain])  # (4, 2, 92, 92)
    return {
        "subjects": sessions.mean(axis=1),  # each subject's RDM: mean of its two sessions
        "models": {m.name: np.asarray(m.RDM, dtype=float) for m in models["Models"]},
    }


def test_k92_lower_noise_ceiling_is_about_0_38(k92):
    ceil = rdm_noise_ceiling(k92["subjects"])
    assert ceil.lower == pytest.approx(0.38, abs=0.01)
    assert ceil.upper > ceil.lower + 0.2
    tau = rdm_noise_ceiling(k92["subjects"], method="kendall_tau_a")
    assert 0 < tau.lower < ceil.lower  # tau-a runs lower than Spearman's rho


def test_k92_animacy_model_beats_the_label_permutation_null(k92):
    animacy = k92["models"]["animacy"]
    obs, p, null = rdm_permutation_test(
        animacy, k92["subjects"], n_permutations=200, return_null=True
    )
    assert obs > 0.3 and p == pytest.approx(1 / 201)
    assert obs > np.percentile(null, 99) + 0.2
    # and it reaches the lower noise ceiling (the paper's point that category explains hIT)
    assert obs >= rdm_noise_ceiling(k92["subjects"]).lower - 0.02
    # a low-level model does not come near
    v1 = np.mean([compare_rdms(k92["models"]["V1"], s) for s in k92["subjects"]])
    assert v1 < 0.1


N_IMG = 30


def _planted():
    """3 subjects: ROI A carries the geometry of layer 'good' (plus noise), ROI B none."""
    import xarray as xr

    from alignment import dims
    from alignment.data.responses import make_responses

    rng = np.random.default_rng(6)
    ids = np.array([f"s{i:02d}" for i in range(N_IMG)])
    good = rng.standard_normal((N_IMG, 20))
    other = rng.standard_normal((N_IMG, 20))
    subjects = []
    for k in range(3):
        w = rng.standard_normal((20, 40))
        data = np.concatenate([good @ w, rng.standard_normal((N_IMG, 40))], axis=1)
        data = np.tile(data, (2, 1)) + 2.0 * rng.standard_normal((2 * N_IMG, 80))
        subjects.append(
            make_responses(data, kind="images", stimulus_id=np.tile(ids, 2),
                           repetition=np.repeat([0, 1], N_IMG), session=np.repeat([0, 1], N_IMG),
                           roi=["A"] * 40 + ["B"] * 40,
                           attrs={"dataset": "toy", "subject": f"{k + 1:02d}"})
        )  # fmt: skip
    layers = {
        name: xr.DataArray(f, dims=(dims.STIMULUS, dims.UNIT),
                           coords={dims.STIMULUS_ID: (dims.STIMULUS, ids)})
        for name, f in {"good": good, "other": other}.items()
    }  # fmt: skip
    return subjects, layers


@pytest.fixture(scope="module")
def planted():
    return _planted()


@pytest.fixture(scope="module")
def planted_rsa(planted):
    from alignment.metrics.rsa import rsa_scores

    subjects, layers = planted
    return rsa_scores(subjects, 0, layers, n_permutations=99, random_state=3,
                      attrs={"dataset": "toy", "subject": "01", "model": "m"})  # fmt: skip


def test_rsa_scores_find_the_layer_that_shaped_an_roi(planted_rsa):
    out = planted_rsa
    assert out["rdm_r"].sel(layer="good", roi_name="A") > 0.3
    assert out["p"].sel(layer="good", roi_name="A") == pytest.approx(0.01)
    assert abs(float(out["rdm_r"].sel(layer="other", roi_name="A"))) < 0.15
    assert float(out["ceiling_lower"].sel(roi_name="A")) > 0.2
    assert out["roi_rdm"].shape == (2, N_IMG, N_IMG)
    assert list(out["layer_index"].values) == [0, 1]


def test_rsa_scores_batched_null_equals_the_direct_permutation_test(planted_rsa):
    # rsa_scores draws one set of permutations for every layer and ROI, in the order
    # rdm_permutation_test draws them: same seed, same null
    for layer in ("good", "other"):
        for roi in ("A", "B"):
            obs, p, null = rdm_permutation_test(
                planted_rsa["layer_rdm"].sel(layer=layer).values,
                planted_rsa["roi_rdm"].sel(roi_name=roi).values,
                n_permutations=99,
                random_state=3,
                return_null=True,
            )
            cell = planted_rsa.sel(layer=layer, roi_name=roi)
            assert float(cell["rdm_r"]) == pytest.approx(obs, abs=1e-12)
            assert float(cell["p"]) == pytest.approx(p)
            assert float(cell["null_p95"]) == pytest.approx(np.percentile(null, 95), abs=1e-12)


def test_rsa_scores_kendall_path_agrees_with_compare_rdms(planted):
    from alignment.metrics.rsa import rsa_scores

    subjects, layers = planted
    out = rsa_scores(subjects, 1, layers, method="kendall_tau_a", n_permutations=5)
    direct = compare_rdms(out["layer_rdm"].sel(layer="good").values,
                          out["roi_rdm"].sel(roi_name="A").values, "kendall_tau_a")  # fmt: skip
    assert float(out["rdm_r"].sel(layer="good", roi_name="A")) == pytest.approx(direct)


def test_rsa_verb_writes_a_valid_rsa_file_and_rejects_bad_input(planted, tmp_path):
    import xarray as xr

    from alignment.cli import main
    from alignment.io import write_netcdf, write_zarr_layers

    subjects, layers = planted
    paths = []
    for k, ds in enumerate(subjects):
        paths.append(str(tmp_path / f"sub-{k}.nc"))
        write_netcdf(ds, paths[-1])
    write_zarr_layers(layers, tmp_path / "f.zarr", {"model": "toy-model"})
    args = ["rsa", "--responses", *paths, "--features", str(tmp_path / "f.zarr")]
    out = tmp_path / "rsa.nc"
    spec = '{"kind": "rsa", "n_permutations": 19, "layers": ["good"]}'
    assert main([*args, "--index", "2", "--encoder-spec", spec, "--out", str(out)]) == 0
    with xr.open_dataset(out) as ds:
        assert list(ds["layer"].values) == ["good"]  # the spec's layers
        assert set(ds.data_vars) >= {"rdm_r", "p", "null_p95", "ceiling_lower", "ceiling_upper",
                                     "roi_rdm", "layer_rdm"}  # fmt: skip
        assert ds.attrs["subject"] == "03" and ds.attrs["model"] == "toy-model"
        assert ds.attrs["n_permutations"] == 19 and ds.attrs["method"] == "spearman"
        assert float(ds["p"].sel(layer="good", roi_name="A")) == pytest.approx(0.05)
    bad = tmp_path / "bad.nc"
    assert main([*args, "--index", "5", "--out", str(bad)]) == 2
    assert main([*args, "--index", "0", "--encoder-spec", '{"method": "cosine"}',
                 "--out", str(bad)]) == 2  # fmt: skip
    assert not bad.exists()


def test_report_renders_the_rsa_section(planted_rsa):
    import re

    from test_viz import make_scores

    from alignment.report.html import render_subject_report

    scores = make_scores().assign_attrs(space="MNI152")  # no brain maps: one figure
    html = render_subject_report("01", [scores], {}, {}, dpi=30, rsa=[planted_rsa])
    assert '<h2 id="rsa">Representational similarity</h2>' in html
    assert 'href="#rsa"' in html
    assert len(re.findall(r"data:image/png;base64,", html)) == 1 + 2  # + profiles and RDMs
    assert "noise ceiling from its lower to its upper bound" in html
    # best layer of ROI A is the planted one, with its p
    assert re.search(r"<td>A</td><td>good</td><td class=\"num \">0\.\d+</td>"
                     r"<td class=\"num\">0\.0100</td>", html)  # fmt: skip


def test_rsa_figures(planted_rsa):
    from alignment.io import InputError
    from alignment.viz.rsa import plot_best_rdms, plot_rsa_profiles, rsa_table

    table = rsa_table(planted_rsa)
    assert next(iter(table["best_layer"])) == "good"
    fig = plot_rsa_profiles(planted_rsa)
    assert "best good" in fig.axes[0].get_title(loc="left")
    assert len(plot_best_rdms(planted_rsa).axes) == 2 * 2 + 1  # 2 ROIs x (ROI, layer) + colorbar
    with pytest.raises(InputError, match="null_p95"):
        plot_rsa_profiles(planted_rsa.drop_vars("null_p95"))


def test_layer_profile_shows_the_bootstrap_interval():
    from test_viz import PLANTED, make_scores

    from alignment import dims
    from alignment.viz.profiles import plot_layer_profiles, roi_layer_profile

    scores = make_scores()
    assert roi_layer_profile(scores)["r_ci_low"].isna().all()
    roi = scores[dims.ROI].values
    low = np.full(scores[dims.R].shape, np.nan)
    for k, name in enumerate(PLANTED):
        low[:, roi == name] = 0.01 * (k + 1)
    scores = scores.assign({dims.R_ROI_CI_LOW: ((dims.LAYER, dims.VOXEL), low),
                            dims.R_ROI_CI_HIGH: ((dims.LAYER, dims.VOXEL), low + 0.3)})  # fmt: skip
    prof = roi_layer_profile(scores)
    mid = prof[prof["roi"] == "mid"]
    np.testing.assert_allclose(mid["r_ci_low"], 0.02)
    np.testing.assert_allclose(mid["r_ci_high"], 0.32)
    fig = plot_layer_profiles(scores, prof)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "95% bootstrap CI" in labels


def test_config_with_rsa_dry_runs_listing_rsa_jobs(tmp_path):
    import os
    import subprocess
    import sys

    import yaml
    from test_workflow import REPO, TINY

    from alignment.config import check_config

    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["encoders"]["rsa"] = {"kind": "rsa", "method": "kendall_tau_a", "n_permutations": 9}
    config["datasets"]["demo-images"]["encoders"] = ["ridge", "rsa"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    bin_dir = Path(sys.executable).parent
    out = subprocess.run(
        [str(bin_dir / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory",
         str(tmp_path), "-n", "--cores", "1", "--quiet", "rules"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout + out.stderr, flags=re.M))
    # one job per subject and pooled image model; the narrative dataset (all encoders by
    # default) has none, and rsa adds no encode job
    images = config["datasets"]["demo-images"]
    n_subjects = len({s for d in config["datasets"].values() for s in d["subjects"]})
    assert int(counts["rsa"]) == len(images["subjects"]) * len(images["models"])
    n_encode = sum(len(d["subjects"]) * len(d["models"]) for d in config["datasets"].values())
    assert int(counts["encode"]) == n_encode and int(counts["report"]) == n_subjects
    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    config["datasets"]["demo-narrative"]["encoders"] = ["rsa"]
    with pytest.raises(InputError, match="rsa encoder, which needs an image dataset"):
        check_config(config, schema)
    config["datasets"]["demo-narrative"]["encoders"] = ["ridge"]
    config["encoders"]["rsa"]["method"] = "cosine"
    with pytest.raises(InputError, match="cosine"):
        check_config(config, schema)
