"""Voxelwise ridge regression with a per-voxel alpha, through himalaya.

The estimator chooses the primal form (``himalaya.ridge.RidgeCV``) when there are fewer features
than samples and the dual form (``himalaya.kernel_ridge.KernelRidgeCV``) otherwise, batches
targets to bound memory, and runs on the backend named (``numpy`` on a CPU, ``torch_cuda`` on a
GPU).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from alignment.encoders.registry import EncoderContext, register_encoder

DEFAULT_ALPHAS = np.logspace(-2, 7, 19)


def available_backend(name: str = "auto") -> str:
    """Resolve ``auto`` to ``torch_cuda`` when a CUDA device is present, else ``numpy``."""
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


@register_encoder("ridge")
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
        himalaya backend: ``numpy``, ``torch``, ``torch_cuda`` or ``auto``.
    solver : {"auto", "primal", "dual"}
        ``auto`` picks primal when n_features <= n_samples.
    n_targets_batch : int, optional
        Voxels solved at once (memory bound).

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

    def fit(self, X, Y):
        """Fit on (samples, features) and (samples, voxels); returns self."""
        from himalaya.backend import set_backend
        from himalaya.kernel_ridge import KernelRidgeCV
        from himalaya.ridge import RidgeCV

        X, Y = _check_xy(X, Y)
        if self.solver not in ("auto", "primal", "dual"):
            raise ValueError(f"solver must be 'auto', 'primal' or 'dual', got {self.solver!r}")
        backend = set_backend(available_backend(self.backend), on_error="warn")
        self.mean_ = X.mean(0)
        scale = X.std(0)
        self.scale_ = np.where(scale > 0, scale, 1.0).astype(np.float32)
        Xs = (X - self.mean_) / self.scale_
        cv = self.cv if isinstance(self.cv, int) else list(self.cv)
        self.solver_ = (
            self.solver
            if self.solver != "auto"
            else ("primal" if X.shape[1] <= X.shape[0] else "dual")
        )
        alphas = np.asarray(self.alphas, dtype=np.float32)
        params = {"n_targets_batch": self.n_targets_batch} if self.n_targets_batch else None
        if self.solver_ == "primal":
            model = RidgeCV(alphas=alphas, cv=cv, fit_intercept=True, solver_params=params)
        else:
            model = KernelRidgeCV(
                alphas=alphas, kernel="linear", cv=cv, fit_intercept=True, solver_params=params
            )
        model.fit(backend.asarray(Xs), backend.asarray(Y))
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
        pred = self.model_.predict(self.backend_.asarray((X - self.mean_) / self.scale_))
        return np.asarray(self.backend_.to_numpy(pred), dtype=np.float32)
