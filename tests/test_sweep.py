"""The fast ridge layer sweep: agreement with himalaya and scikit-learn, batching, memory plan."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from alignment.encoders import EncoderContext
from alignment.encoders.memory import sweep_bytes_per_voxel, voxel_batch
from alignment.encoders.registry import fit_encoders
from alignment.encoders.ridge import RidgeEncoder
from alignment.encoders.sweep import ridge_sweep
from alignment.folds import blocked_folds, grouped_folds

ALPHAS = np.logspace(-2, 5, 8)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # tiny tensors: on a loaded 2-core machine, torch's spinning thread pool costs 30x
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n, p, v=24, n_test=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n + n_test, p)) * rng.uniform(0.5, 3, p)
    W = rng.standard_normal((p, v)) * rng.uniform(0, 1, v)  # from pure noise to strong signal
    Y = X @ W / np.sqrt(p) + rng.standard_normal((n + n_test, v)) + 1.5
    return X.astype(np.float32), Y.astype(np.float32)


def _r(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


@pytest.mark.parametrize(
    ("n", "p", "folds"),
    [
        (240, 30, "grouped"),
        (400, 80, "grouped"),  # 80 components: the triangular validation factor in row blocks
        (240, 30, "blocked"),  # inner training sets with a gap: not complements of validation
        (90, 200, "grouped"),  # more features than samples: the dual form
    ],
)
def test_sweep_matches_himalaya_ridgecv(n, p, folds):
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV

    X, Y = _data(n, p)
    cv = grouped_folds(np.arange(n), 4) if folds == "grouped" else blocked_folds(n, 4, gap=3)
    fit = ridge_sweep([X[:n]], Y[:n], ALPHAS, cv)[0]
    assert fit.solver == ("primal" if p <= n else "dual")
    set_backend("numpy")
    Xs = ((X - fit.mean) / fit.scale).astype(np.float64)
    ref = (RidgeCV if p <= n else KernelRidgeCV)(alphas=ALPHAS, cv=cv, fit_intercept=True)
    ref.fit(Xs[:n], Y[:n].astype(np.float64))
    np.testing.assert_allclose(fit.best_alphas, ref.best_alphas_, rtol=1e-6)
    ours, theirs = fit.predict(X[n:]), ref.predict(Xs[n:])
    np.testing.assert_allclose(ours, theirs, atol=2e-4 * np.abs(theirs).max())
    np.testing.assert_allclose(_r(ours, Y[n:]), _r(theirs, Y[n:]), atol=1e-4)


@pytest.mark.parametrize(("n", "p", "folds"), [(300, 80, "grouped"), (60, 120, "blocked")])
def test_sweep_in_float64_matches_sklearn_ridge_on_the_same_alphas_and_folds(n, p, folds):
    # every inner-CV score, every chosen alpha and the refit, against scikit-learn's Ridge
    # fitted fold by fold and alpha by alpha: 1e-6 in float64 (primal and dual forms)
    import torch

    X, Y = _data(n, p)
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    cv = grouped_folds(np.arange(n), 4) if folds == "grouped" else blocked_folds(n, 4, gap=2)
    fit = ridge_sweep([X[:n]], Y[:n], ALPHAS, cv, dtype=torch.float64)[0]
    assert fit.solver == ("primal" if p <= n else "dual")
    Xs = (X - fit.mean) / fit.scale
    scores = np.zeros((len(ALPHAS), Y.shape[1]))
    for train, val in cv:
        for i, alpha in enumerate(ALPHAS):
            pred = Ridge(alpha=alpha).fit(Xs[train], Y[train]).predict(Xs[val])
            scores[i] -= ((Y[val] - pred) ** 2).mean(0) / len(cv)
    np.testing.assert_allclose(fit.cv_scores, scores, rtol=1e-6)
    best = ALPHAS[(scores + 1e-10 * np.log(ALPHAS)[:, None]).argmax(0)]
    np.testing.assert_array_equal(fit.best_alphas, best)
    ref = Ridge(alpha=best).fit(Xs[:n], Y[:n]).predict(Xs[n:])
    np.testing.assert_allclose(fit.predict(X[n:]), ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_layers_batched_and_voxel_batches_give_the_same_fit():
    X, Y = _data(200, 32, v=50)
    rng = np.random.default_rng(3)
    layers = [X[:200], X[:200] @ rng.standard_normal((32, 32)).astype(np.float32), X[:200, :20]]
    cv = grouped_folds(np.arange(200), 5)
    together = ridge_sweep(layers, Y[:200], ALPHAS, cv)
    for layer, fit in zip(layers, together, strict=True):
        alone = ridge_sweep([layer], Y[:200], ALPHAS, cv, n_targets_batch=7)[0]
        np.testing.assert_array_equal(alone.best_alphas, fit.best_alphas)
        scale = np.abs(fit.coef.numpy()).max()
        np.testing.assert_allclose(alone.coef.numpy(), fit.coef.numpy(), atol=1e-4 * scale)


def test_registry_ridge_runs_the_sweep_and_keeps_himalaya_reachable():
    X, Y = _data(150, 20)
    cv = grouped_folds(np.arange(150), 3)
    sweep = RidgeEncoder(alphas=ALPHAS, cv=cv).fit(X[:150], Y[:150])
    hima = RidgeEncoder(alphas=ALPHAS, cv=cv, solver="himalaya").fit(X[:150], Y[:150])
    assert sweep.sweep_ is not None and hima.sweep_ is None
    np.testing.assert_allclose(sweep.best_alphas_, hima.best_alphas_, rtol=1e-5)
    np.testing.assert_allclose(
        _r(sweep.predict(X[150:]), Y[150:]), _r(hima.predict(X[150:]), Y[150:]), atol=1e-4
    )
    contexts = [EncoderContext(inner_cv=cv)] * 2
    fitted = fit_encoders(
        {"kind": "ridge", "alphas": ALPHAS}, contexts, [X[:150], X[:150, :10]], Y[:150]
    )
    assert [e.n_features_in_ for e in fitted] == [20, 10]
    np.testing.assert_array_equal(fitted[0].best_alphas_, sweep.best_alphas_)


def test_sweep_rejects_bad_input_clearly():
    X, Y = _data(60, 5)
    with pytest.raises(ValueError, match="alphas must be positive"):
        ridge_sweep([X[:60]], Y[:60], [0.0, 1.0], grouped_folds(np.arange(60), 3))
    with pytest.raises(ValueError, match="empty"):
        ridge_sweep([X[:60]], Y[:60], ALPHAS, [(np.arange(60), np.array([], int))])
    with pytest.raises(ValueError, match="samples=60"):
        ridge_sweep([X[:50]], Y[:60], ALPHAS, grouped_folds(np.arange(60), 3))
    with pytest.raises(ValueError, match="too few"):
        grouped_folds(np.arange(4), 5)  # more folds than stimuli


def test_voxel_batch_fits_a_whole_cortex_nsd_fit_in_80_gb_and_64_gb():
    # NSD: 9,000 training images, 768 features, 12 layers, 10 alphas, 327,684 fsaverage vertices
    shape = {"n_samples": 9000, "n_features": 768, "n_layers": 12, "n_alphas": 10, "rank": 768}
    per_voxel = sweep_bytes_per_voxel(**shape)
    for gib in (80, 64):
        free = gib * 2**30
        batch = voxel_batch(**shape, available=free)
        assert 100 <= batch < 327_684
        assert batch * per_voxel <= 0.5 * free  # half the free memory at most
    # more memory never gives a smaller batch; a tiny device still gets one voxel at a time
    assert voxel_batch(**shape, available=2**30) <= voxel_batch(**shape, available=2**34)
    assert voxel_batch(**shape, available=10) == 1


def _images(F_by_layer, signal, n_rep=2, seed=0):
    """Image Responses (n_rep repeats + unit noise) of ``signal`` (images, voxels)."""
    import xarray as xr

    from alignment import dims
    from alignment.data.responses import make_responses

    rng = np.random.default_rng(seed)
    n_img, v = signal.shape
    ids = np.array([f"s{i:03d}" for i in range(n_img)])
    rows = [signal + rng.standard_normal((n_img, v)) for _ in range(n_rep)]
    reps = np.repeat(np.arange(n_rep), n_img)
    resp = make_responses(
        np.concatenate(rows),
        kind="images",
        stimulus_id=np.tile(ids, n_rep),
        repetition=reps,
        session=reps,
        roi=np.array(["a", "b", "none"] * (v // 3) + ["none"] * (v % 3)),
    )
    layers = {
        name: xr.DataArray(
            F, dims=(dims.STIMULUS, dims.UNIT), coords={dims.STIMULUS_ID: (dims.STIMULUS, ids)}
        )
        for name, F in F_by_layer.items()
    }
    return resp, layers


def test_planted_layer_is_recovered_per_roi():
    from alignment.evaluation import score_layers

    rng = np.random.default_rng(4)
    n_img, v = 120, 30
    F = {f"layer_{i}": rng.standard_normal((n_img, 8)).astype(np.float32) for i in range(4)}
    signal = np.zeros((n_img, v))
    roi = np.array(["a", "b", "none"] * (v // 3))
    for name, driver in (("a", "layer_1"), ("b", "layer_3")):
        s = F[driver] @ rng.standard_normal((8, (roi == name).sum()))
        signal[:, roi == name] = s / s.std(0)
    resp, layers = _images(F, signal)
    scores = score_layers(
        resp,
        layers,
        encoder_spec={"kind": "ridge", "alphas": [0.1, 10.0, 1000.0]},
        cv={"n_folds": 5, "inner_folds": 3},
        stats_spec={"n_permutations": 50},
    )
    mean_r = scores.r.groupby("roi").mean().transpose("roi", "layer").to_pandas()
    assert mean_r.loc["a"].idxmax() == "layer_1" and mean_r.loc["b"].idxmax() == "layer_3"
    assert mean_r.loc["a", "layer_1"] > 0.6 and mean_r.loc["b", "layer_3"] > 0.6


def test_refit_image_null_is_uniform_and_controls_fdr():
    from scipy import stats as sstats

    from alignment.evaluation import score_layers

    rng = np.random.default_rng(2)
    n_img, v = 90, 160
    F = rng.standard_normal((n_img, 8)).astype(np.float32)
    signal = np.zeros((n_img, v))
    planted = np.arange(v) < 40  # 40 voxels with signal, 120 pure noise
    s = F @ rng.standard_normal((8, planted.sum()))
    signal[:, planted] = 0.6 * s / s.std(0)
    resp, layers = _images({"f": F}, signal, seed=3)
    scores = score_layers(
        resp,
        layers,
        encoder_spec={"kind": "ridge", "alphas": [0.1, 10.0, 1000.0], "null": "refit"},
        cv={"n_folds": 5, "inner_folds": 3},
        stats_spec={"n_permutations": 200},
    )
    assert scores.attrs["null_kind"] == "refit with permuted stimulus labels"
    p, q = scores.p.values[0], scores.q.values[0]
    # under the null (noise voxels) the p-values are uniform: Kolmogorov-Smirnov on 120 voxels
    assert sstats.kstest(p[~planted], "uniform").pvalue > 0.05
    assert 0.01 <= (p[~planted] < 0.1).mean() <= 0.2
    # FDR at its level, with power on the planted voxels
    discoveries = q < 0.05
    assert discoveries[planted].mean() > 0.8
    assert (discoveries & ~planted).sum() / max(discoveries.sum(), 1) <= 0.1


def test_preflight_fails_early_naming_the_setting_to_change(monkeypatch):
    from alignment.encoders import memory
    from alignment.evaluation import score_layers
    from alignment.io import InputError

    # whole-cortex NSD subject in one job: 30,000 trials x 327,684 vertices do not fit 64 GB
    nsd = memory.encode_peak_bytes(
        n_rows=10_000,
        n_trials=30_000,
        n_voxels=327_684,
        n_features=768,
        n_layers=12,
        n_permutations=1000,
    )
    assert nsd > 64 * 2**30
    with pytest.raises(InputError, match=r"mem_mb.*shards"):
        memory.preflight(nsd, "nsd.nc", available=64 * 2**30)
    # a 1/16 voxel shard fitting one layer at a time does
    shard = memory.encode_peak_bytes(
        n_rows=10_000,
        n_trials=30_000,
        n_voxels=327_684 // 16,
        n_features=768,
        n_layers=1,
        n_permutations=1000,
    )
    memory.preflight(shard, "nsd.nc", available=64 * 2**30)
    # the CV loop runs the check before fitting anything
    F = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    resp, layers = _images({"f": F}, np.zeros((30, 6)))
    monkeypatch.setattr(memory, "free_bytes", lambda device="cpu": 1000)
    with pytest.raises(InputError, match="needs about"):
        score_layers(resp, layers, encoder_spec={"kind": "ridge"}, cv={"n_folds": 3}, stats_spec={})


def test_auto_solver_runs_the_sweep_where_it_does_less_work():
    from alignment.encoders.ridge import sweep_pays

    assert sweep_pays(9000, 768, grouped_folds(np.arange(9000), 5))  # NSD
    assert sweep_pays(192, 96, grouped_folds(np.arange(192), 3), 8)  # the demo's images
    # more features than samples (narrative FIR delays): himalaya's kernel solver
    assert not sweep_pays(297, 1536, blocked_folds(297, 3, gap=3), 8)
    X, Y = _data(192, 96)
    enc = RidgeEncoder(alphas=ALPHAS, cv=grouped_folds(np.arange(192), 3)).fit(X[:192], Y[:192])
    assert enc.sweep_ is not None
    X, Y = _data(60, 120)
    enc = RidgeEncoder(alphas=ALPHAS, cv=grouped_folds(np.arange(60), 3)).fit(X[:60], Y[:60])
    assert enc.sweep_ is None


def test_encode_default_path_is_the_sweep_and_equals_the_himalaya_path(monkeypatch):
    # score_layers is what `alignment encode` runs: the default ridge spec goes through the
    # sweep and gives the Scores of `solver: himalaya` within 1e-4
    from alignment.encoders import ridge as ridge_module
    from alignment.evaluation import score_layers

    calls = []

    def counted(*args, **kwargs):
        calls.append(len(args[0]))
        return ridge_sweep(*args, **kwargs)

    monkeypatch.setattr(ridge_module, "ridge_sweep", counted)
    rng = np.random.default_rng(5)
    n_img, v = 150, 24
    F = {f"layer_{i}": rng.standard_normal((n_img, 12)).astype(np.float32) for i in range(3)}
    s = F["layer_1"] @ rng.standard_normal((12, v))
    resp, layers = _images(F, s / s.std(0) * np.linspace(0, 1, v))
    spec = {"kind": "ridge", "alphas": [0.1, 1.0, 10.0, 100.0, 1000.0, 1e4]}
    run = dict(cv={"n_folds": 4, "inner_folds": 3}, stats_spec={"n_permutations": 20})
    default = score_layers(resp, layers, encoder_spec=spec, **run)
    assert calls == [3] * 4  # one batched sweep of the 3 layers per outer fold
    himalaya = score_layers(resp, layers, encoder_spec={**spec, "solver": "himalaya"}, **run)
    assert len(calls) == 4
    np.testing.assert_allclose(default.alpha.values, himalaya.alpha.values, rtol=1e-5)
    for var in ("r", "r2"):
        np.testing.assert_allclose(default[var].values, himalaya[var].values, atol=1e-4)
