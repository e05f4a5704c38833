"""RSA and CKA against direct formulas, and the real human IT RDMs of Kriegeskorte et al. 2008."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import pdist, squareform

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


def test_rsa_scores_find_the_layer_that_shaped_an_roi():
    import xarray as xr

    from alignment import dims
    from alignment.data.responses import make_responses
    from alignment.metrics.rsa import rsa_scores

    rng = np.random.default_rng(6)
    n_img = 30
    ids = np.array([f"s{i:02d}" for i in range(n_img)])
    good = rng.standard_normal((n_img, 20))
    other = rng.standard_normal((n_img, 20))
    subjects = []
    for _ in range(3):
        w = rng.standard_normal((20, 40))
        data = np.concatenate([good @ w, rng.standard_normal((n_img, 40))], axis=1)
        data = np.tile(data, (2, 1)) + 2.0 * rng.standard_normal((2 * n_img, 80))
        subjects.append(
            make_responses(data, kind="images", stimulus_id=np.tile(ids, 2),
                           repetition=np.repeat([0, 1], n_img), session=np.repeat([0, 1], n_img),
                           roi=["A"] * 40 + ["B"] * 40)
        )  # fmt: skip
    layers = {
        name: xr.DataArray(f, dims=(dims.STIMULUS, dims.UNIT),
                           coords={dims.STIMULUS_ID: (dims.STIMULUS, ids)})
        for name, f in {"good": good, "other": other}.items()
    }  # fmt: skip
    out = rsa_scores(subjects, 0, layers, n_permutations=99)
    assert out["rdm_r"].sel(layer="good", roi_name="A") > 0.3
    assert out["p"].sel(layer="good", roi_name="A") == pytest.approx(0.01)
    assert abs(float(out["rdm_r"].sel(layer="other", roi_name="A"))) < 0.15
    assert float(out["ceiling_lower"].sel(roi_name="A")) > 0.2
    assert out["roi_rdm"].shape == (2, n_img, n_img)
