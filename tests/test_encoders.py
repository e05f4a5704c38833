"""Ridge encoder: agreement with scikit-learn, per-voxel alpha, planted recovery, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from alignment.encoders import make_encoder
from alignment.encoders.ridge import RidgeEncoder


def _data(n=120, p=20, v=6, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) * rng.uniform(0.5, 3, p)
    W = rng.standard_normal((p, v))
    Y = X @ W + noise * rng.standard_normal((n, v)) + 2.0
    return X.astype(np.float32), Y.astype(np.float32)


@pytest.mark.parametrize("solver", ["primal", "dual"])
def test_single_alpha_matches_sklearn_ridge_on_standardised_features(solver):
    X, Y = _data()
    enc = RidgeEncoder(alphas=[3.0], cv=3, solver=solver).fit(X[:100], Y[:100])
    scaler = StandardScaler().fit(X[:100])
    ref = Ridge(alpha=3.0).fit(scaler.transform(X[:100]), Y[:100])
    np.testing.assert_allclose(
        enc.predict(X[100:]), ref.predict(scaler.transform(X[100:])), rtol=2e-3, atol=2e-3
    )
    assert enc.solver_ == solver


def test_alpha_is_chosen_per_voxel():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 30)).astype(np.float32)
    signal = X @ rng.standard_normal((30, 1))
    Y = np.hstack(
        [signal + 0.1 * rng.standard_normal((200, 1)), rng.standard_normal((200, 1)) * 5]
    ).astype(np.float32)
    enc = RidgeEncoder(alphas=np.logspace(-3, 6, 10), cv=5).fit(X, Y)
    assert enc.best_alphas_.shape == (2,)
    assert enc.best_alphas_[0] < enc.best_alphas_[1]  # pure noise gets shrunk hardest


def test_recovers_planted_weights_out_of_sample():
    X, Y = _data(n=300, noise=0.1)
    enc = RidgeEncoder(alphas=np.logspace(-3, 3, 7), cv=5).fit(X[:250], Y[:250])
    pred = enc.predict(X[250:])
    r = [np.corrcoef(pred[:, j], Y[250:, j])[0, 1] for j in range(Y.shape[1])]
    assert min(r) > 0.99


def test_explicit_inner_folds_are_accepted():
    X, Y = _data()
    folds = [(np.arange(60, 120), np.arange(60)), (np.arange(60), np.arange(60, 120))]
    enc = RidgeEncoder(alphas=[0.1, 10.0], cv=folds).fit(X, Y)
    assert enc.predict(X).shape == Y.shape


def test_bad_input_raises_clear_errors():
    X, Y = _data()
    with pytest.raises(ValueError, match="samples"):
        RidgeEncoder().fit(X, Y[:-1])
    bad = Y.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        RidgeEncoder().fit(X, bad)
    enc = RidgeEncoder(alphas=[1.0], cv=3).fit(X, Y)
    with pytest.raises(ValueError, match="features"):
        enc.predict(X[:, :5])
    with pytest.raises(ValueError, match="unknown encoder kind"):
        make_encoder({"kind": "lasso"})
    with pytest.raises(ValueError, match="solver"):
        RidgeEncoder(solver="qr").fit(X, Y)


def test_registry_builds_every_kind_from_spec_and_context():
    from alignment.encoders import BUILTIN, ENCODERS, EncoderContext, accepts, encoder_kind
    from alignment.encoders.registry import select_layers

    for name, (_, inputs, experiments) in BUILTIN.items():  # the table matches the modules
        kind = encoder_kind(name)
        assert (kind.inputs, kind.experiments) == (inputs, experiments)
        assert ENCODERS[name] is kind
    folds = [(np.arange(60, 120), np.arange(60)), (np.arange(60), np.arange(60, 120))]
    enc = make_encoder(
        {"kind": "ridge", "alphas": [1.0, 10.0], "layers": ["b"]}, EncoderContext(folds)
    )
    assert isinstance(enc, RidgeEncoder) and enc.cv == folds
    layers = {"a": 0, "b": 1, "c": 2}
    assert list(select_layers({"layers": ["b", -1]}, layers)) == ["b", "c"]
    assert list(select_layers({}, layers)) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="layer 'z'"):
        select_layers({"kind": "ridge", "layers": ["z"]}, layers)
    assert accepts({"kind": "ridge"}, {"pooling": "mean"}, "narrative")
    assert not accepts({"kind": "ridge"}, {"pooling": "tokens"}, "images")
