"""Voxelwise ridge regression with a per-voxel alpha chosen by inner cross-validation.

By default (``solver: auto``) the fast layer sweep (:mod:`alignment.encoders.sweep`, pure torch
on the CPU or a GPU) solves it wherever it does less work than himalaya, i.e. whenever there are
at least as many samples as features (:func:`sweep_pays`); it gives himalaya's ``RidgeCV``
solution (alpha choices differ only on near-ties that float32 himalaya cannot resolve, where
the sweep's float64 selection agrees with float64 himalaya). ``solver: himalaya`` runs himalaya
itself: the primal form (``himalaya.ridge.RidgeCV``) when there are fewer features than samples
and the dual form (``himalaya.kernel_ridge.KernelRidgeCV``) otherwise, on the backend named
(``numpy`` on a CPU, ``torch_cuda`` on a GPU).

:meth:`RidgeEncoder.fit_layers` fits several layers on the same responses and folds in one
batched sweep; the CV loop uses it through the registry's generic ``fit_layers`` capability.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from alignment.encoders.registry import EncoderContext, register_encoder
from alignment.encoders.sweep import SweepFit, ridge_sweep

DEFAULT_ALPHAS = np.logspace(-2, 7, 19)


def available_backend(name: str = "auto") -> str:
    """himalaya backend name; ``auto`` = ``torch_cuda`` when CUDA is present, else ``numpy``."""
    name = {"cpu": "numpy", "cuda": "torch_cuda"}.get(name, name)
    if name != "auto":
        return name
    try:
        import torch

        return "torch_cuda" if torch.cuda.is_available() else "numpy"
    except ImportError:
        return "numpy"


def _check_xy(X, Y=None):
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (samples, features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"X has {int((~np.isfinite(X)).sum())} non-finite value(s)")
    if Y is None:
        return X
    Y = np.asarray(Y, dtype=np.float32)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[0] != X.shape[0]:
        raise ValueError(
            f"Y must be (samples, targets) with {X.shape[0]} samples, got shape {Y.shape}"
        )
    if not np.isfinite(Y).all():
        raise ValueError(f"Y has {int((~np.isfinite(Y)).sum())} non-finite value(s)")
    return X, Y


def sweep_pays(n_samples: int, n_features: int, inner_cv, n_alphas: int = 10) -> bool:
    """Whether the sweep does fewer floating-point operations per voxel than himalaya.

    The sweep's count is :func:`alignment.encoders.sweep.sweep_flops`; himalaya's RidgeCV (or
    KernelRidgeCV) predicts every validation row for every alpha through an
    (alphas, n_val, n_train) hat matrix (2 A n_val n_train per voxel and fold) and refits
    through an (alphas, features, samples) one (2 A p n per voxel). The primal sweep wins
    wherever there are at least as many training samples as features (demo images: 192 x 96,
    1.5x fewer; NSD: 9,000 x 768, about 15x fewer); with more features than samples (the dual
    form, e.g. time series with FIR delays) himalaya's kernel solver does less work.
    """
    from alignment.encoders.sweep import sweep_flops

    if isinstance(inner_cv, int | np.integer):
        from sklearn.model_selection import KFold

        inner_cv = list(KFold(int(inner_cv)).split(np.arange(n_samples)))
    folds = [(len(t), len(v)) for t, v in inner_cv]
    form = "primal" if n_features <= min(n_t for n_t, _ in folds) else "dual"
    ours = sweep_flops(n_samples, n_features, 1, 1, n_alphas, inner_cv, solver=form)["float32"]
    theirs = sum(2 * n_alphas * n_v * n_t for n_t, n_v in folds)
    theirs += 2 * n_alphas * min(n_features, n_samples) * n_samples
    return ours < theirs


@register_encoder("ridge", experiments=("images", "narrative", "sentences"))
class RidgeEncoder(RegressorMixin, BaseEstimator):
    """Ridge regression from features to every voxel, with alpha chosen per voxel by inner CV.

    Features are standardised with the training mean and standard deviation, so one alpha grid
    serves layers of any scale; an intercept is fitted.

    Parameters
    ----------
    alphas : array-like
        Grid of regularisation strengths searched for each voxel.
    cv : int or iterable of (train, test)
        Inner cross-validation over the training samples. Pass explicit folds (grouped for
        repeated images, blocked with a gap for time series); an int means contiguous KFold.
    backend : str
        Device: ``auto`` (CUDA when present), ``numpy``/``cpu``, ``torch_cuda``/``cuda``
        (himalaya backend names are accepted for both solvers).
    solver : {"auto", "primal", "dual", "himalaya"}
        The sweep in the primal or dual form, or himalaya's RidgeCV / KernelRidgeCV (primal
        when n_features <= n_samples). ``auto`` (default): the sweep wherever it does less work
        than himalaya (:func:`sweep_pays`: whenever there are at least as many inner training
        samples as features, e.g. the demo's images and NSD), himalaya's kernel solver
        otherwise (more features than samples).
    n_targets_batch : int, optional
        Voxels solved at once (default: from free memory).

    Attributes
    ----------
    best_alphas_ : ndarray (n_voxels,)
    solver_ : str
    n_features_in_ : int
    """

    def __init__(
        self, alphas=DEFAULT_ALPHAS, cv=5, backend="numpy", solver="auto", n_targets_batch=None
    ):
        self.alphas = alphas
        self.cv = cv
        self.backend = backend
        self.solver = solver
        self.n_targets_batch = n_targets_batch

    @classmethod
    def from_spec(cls, spec: dict, context: EncoderContext) -> RidgeEncoder:
        """Build from a config entry; the inner folds come from the fold's context."""
        spec = dict(spec)
        if "alphas" in spec:
            spec["alphas"] = np.asarray(spec["alphas"], dtype=float)
        return cls(cv=context.inner_cv or 5, **spec)

    @classmethod
    def fit_layers(cls, spec: dict, contexts: list, Xs: list, Y) -> list:
        """Fit one encoder per layer on the same responses and folds, in one batched sweep.

        The registry's optional capability (:func:`alignment.encoders.registry.fit_encoders`):
        ``contexts[i]`` and ``Xs[i]`` belong to layer ``i``; returns the fitted encoders.
        """
        encoders = [cls.from_spec(spec, c) for c in contexts]
        first = encoders[0]
        n, p = len(Y), max(np.shape(X)[1] for X in Xs)
        if first._use_himalaya(n, p) or len(encoders) == 1:
            return [e.fit(X, Y) for e, X in zip(encoders, Xs, strict=True)]
        _, Y = _check_xy(Xs[0], Y)
        fits = ridge_sweep(
            [_check_xy(X) for X in Xs],
            Y,
            first._alphas(),
            first._inner_cv(len(Y)),
            device=first.backend,
            solver=first.solver,
            n_targets_batch=first.n_targets_batch,
        )
        for enc, fit in zip(encoders, fits, strict=True):
            enc._set_sweep(fit)
        return encoders

    def _use_himalaya(self, n: int, p: int) -> bool:
        if self.solver == "auto":
            return not sweep_pays(n, p, self._inner_cv(n), len(self._alphas()))
        return self.solver == "himalaya"

    def _alphas(self):
        alphas = np.asarray(self.alphas, dtype=float).ravel()
        if alphas.size == 0 or (alphas <= 0).any():
            raise ValueError(f"alphas must be positive numbers, got {alphas}")
        return alphas

    def _inner_cv(self, n):
        if isinstance(self.cv, int | np.integer):
            from sklearn.model_selection import KFold  # himalaya's reading of an int cv

            return list(KFold(int(self.cv)).split(np.arange(n)))
        return [(np.asarray(t), np.asarray(s)) for t, s in self.cv]

    def _set_sweep(self, fit: SweepFit) -> None:
        self.sweep_ = fit
        self.mean_, self.scale_ = fit.mean, fit.scale
        self.best_alphas_ = fit.best_alphas
        self.cv_scores_ = fit.cv_scores
        self.solver_ = fit.solver
        self.n_features_in_ = len(fit.mean)

    def fit(self, X, Y):
        """Fit on (samples, features) and (samples, voxels); returns self."""
        X, Y = _check_xy(X, Y)
        if self.solver not in ("auto", "primal", "dual", "himalaya"):
            raise ValueError(
                f"solver must be 'auto', 'primal', 'dual' or 'himalaya', got {self.solver!r}"
            )
        if not self._use_himalaya(*X.shape):
            fit = ridge_sweep(
                [X],
                Y,
                self._alphas(),
                self._inner_cv(len(Y)),
                device=self.backend,
                solver=self.solver,
                n_targets_batch=self.n_targets_batch,
            )[0]
            self._set_sweep(fit)
            return self
        return self._fit_himalaya(X, Y)

    def _fit_himalaya(self, X, Y):
        from himalaya.backend import set_backend
        from himalaya.kernel_ridge import KernelRidgeCV
        from himalaya.ridge import RidgeCV

        backend = set_backend(available_backend(self.backend), on_error="warn")
        self.mean_ = X.mean(0)
        scale = X.std(0)
        self.scale_ = np.where(scale > 0, scale, 1.0).astype(np.float32)
        Xs = (X - self.mean_) / self.scale_
        cv = self.cv if isinstance(self.cv, int) else list(self.cv)
        self.solver_ = "primal" if X.shape[1] <= X.shape[0] else "dual"
        alphas = np.asarray(self.alphas, dtype=np.float32)
        params = {"n_targets_batch": self.n_targets_batch} if self.n_targets_batch else None
        if self.solver_ == "primal":
            model = RidgeCV(alphas=alphas, cv=cv, fit_intercept=True, solver_params=params)
        else:
            model = KernelRidgeCV(
                alphas=alphas, kernel="linear", cv=cv, fit_intercept=True, solver_params=params
            )
        model.fit(backend.asarray(Xs), backend.asarray(Y))
        self.sweep_ = None
        self.model_ = model
        self.backend_ = backend
        self.best_alphas_ = backend.to_numpy(model.best_alphas_)
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        """Predicted responses, (samples, voxels) numpy array."""
        X = _check_xy(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features; the encoder was fitted on {self.n_features_in_}"
            )
        if self.sweep_ is not None:
            return self.sweep_.predict(X)
        pred = self.model_.predict(self.backend_.asarray((X - self.mean_) / self.scale_))
        return np.asarray(self.backend_.to_numpy(pred), dtype=np.float32)
