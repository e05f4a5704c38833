"""The fast ridge layer sweep: every alpha, inner fold and layer from one decomposition each.

Ridge with an intercept and a per-voxel alpha chosen by inner cross-validation, in pure torch
(CPU or CUDA), giving the same solution as ``himalaya.ridge.RidgeCV`` (same alphas, same inner
folds, same selection score: the mean over inner folds of the negative mean squared error,
``himalaya.scoring.l2_neg_loss``, with ties broken towards the larger alpha) and as
scikit-learn's ``Ridge`` for a single alpha. What it shares:

- each training set (every inner fold and the whole outer training set) is decomposed once: the
  eigendecomposition ``G = Q diag(lam) Q^T`` of its centred Gram matrix (primal, when features
  <= samples) or of its centred kernel (dual, mapped to the same basis) serves every alpha, since
  ``(G + alpha I)^-1 = Q diag(1 / (lam + alpha)) Q^T``;
- the cross-products ``X_T^T Y_T`` of the inner training sets come from the full one by
  subtraction of the held-out rows' part;
- the validation loss of every alpha comes from small (rank x rank) matrices without
  materialised predictions: with ``B = Q^T C_T``, ``E = Q^T Xv^T Yv`` and ``M = Q^T Xv^T Xv Q``,
  ``||Yv - Xv W||^2 = ||Yv||^2 - 2 sum(d E B) + sum(d B * M (d B))`` for ``d = 1/(lam+alpha)``;
  predictions are materialised only when the validation set is smaller than the rank;
- the layers of a model with the same width are stacked and solved in one batched program, and
  voxels go in batches sized from free memory (:mod:`alignment.encoders.memory`).

Decompositions run in float64 (``decomp_dtype``), the large products in float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: `alignment` CLI start-up stays light
    import torch

log = logging.getLogger(__name__)

__all__ = ["SweepFit", "resolve_device", "ridge_sweep"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` = CUDA when present, else CPU; himalaya backend names are accepted too."""
    import torch

    if isinstance(device, torch.device):
        return device
    aliases = {"numpy": "cpu", "torch": "cpu", "torch_cuda": "cuda", "cupy": "cuda"}
    device = aliases.get(device, device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


@dataclass
class SweepFit:
    """Fitted ridge of one layer (features standardised with the training mean and scale).

    Prediction: ``((X - mean) / scale) @ coef + intercept``.
    """

    mean: np.ndarray  # (p,)
    scale: np.ndarray  # (p,)
    coef: torch.Tensor  # (p, v), on the sweep's device
    intercept: torch.Tensor  # (v,)
    best_alphas: np.ndarray  # (v,)
    cv_scores: np.ndarray  # (n_alphas, v): mean over inner folds of -MSE
    solver: str  # "primal" or "dual"

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted responses (samples, voxels) as float32 numpy."""
        import torch

        dev = self.coef.device
        Xs = torch.as_tensor((np.asarray(X, np.float32) - self.mean) / self.scale, device=dev)
        return (Xs @ self.coef + self.intercept).cpu().numpy()


@dataclass
class _Basis:
    """Decomposition of one training set, for a stack of layers (leading dim L)."""

    lam: torch.Tensor  # (L, r) eigenvalues (>= 0; padded components have lam=inf)
    Q: torch.Tensor  # (L, p, r) float32 basis of the row space
    x_mean: torch.Tensor  # (L, p) training mean of the (standardised) features


def _basis(Xt: torch.Tensor, solver: str, decomp_dtype) -> _Basis:
    """Eigenbasis of the centred training features ``Xt`` (L, n, p)."""
    import torch

    x_mean = Xt.mean(1)
    Xc = (Xt - x_mean[:, None]).to(decomp_dtype)
    if solver == "primal":
        lam, Q = torch.linalg.eigh(Xc.transpose(1, 2) @ Xc)
    else:
        lam, U = torch.linalg.eigh(Xc @ Xc.transpose(1, 2))
    # components without energy (lam ~ 0: collinear features, the direction centring removed)
    # carry no part of the ridge solution, which lies in the row space of Xc: drop them, as their
    # rounding noise would otherwise be amplified by 1 / alpha
    tol = lam[:, -1:].clamp_min(1e-30) * (max(Xc.shape[1:]) * torch.finfo(decomp_dtype).eps)
    keep = lam > tol
    if solver == "dual":
        # the kernel's eigenvectors map to the right singular vectors V = Xc^T U / s
        s = lam.clamp_min(1e-300).sqrt()
        Q = (Xc.transpose(1, 2) @ U) / s[:, None, :]
    Q = torch.where(keep[:, None, :], Q, 0.0)
    lam = torch.where(keep, lam, torch.full_like(lam, float("inf")))
    return _Basis(lam, Q.to(torch.float32), x_mean)


def _as_index(idx, device) -> torch.Tensor:
    import torch

    return torch.as_tensor(np.asarray(idx, dtype=np.int64), device=device)


class _FoldStats:
    """What an inner fold needs besides the voxels: its basis, its validation Gram in the basis."""

    def __init__(self, X, train, val, solver, decomp_dtype):
        import torch

        n = X.shape[1]
        self.train, self.val = train, val
        held = np.setdiff1d(np.arange(n), train)  # rows out of the inner training set
        self.extra = np.setdiff1d(held, val)  # held out but not validated (gaps)
        dev = X.device
        self.t_idx, self.v_idx = _as_index(train, dev), _as_index(val, dev)
        self.e_idx = _as_index(self.extra, dev)
        self.basis = _basis(X[:, self.t_idx], solver, decomp_dtype)
        self.n_t, self.n_v = len(train), len(val)
        Xv = X[:, self.v_idx] - self.basis.x_mean[:, None]  # validation rows, centred on train
        self.rank = self.basis.Q.shape[2]
        self.materialise = self.n_v < self.rank
        if self.materialise:
            self.Zv = Xv @ self.basis.Q  # (L, n_v, r)
        else:
            Xv64 = Xv.to(decomp_dtype)
            Q64 = self.basis.Q.to(decomp_dtype)
            self.M = (Q64.transpose(1, 2) @ (Xv64.transpose(1, 2) @ Xv64) @ Q64).to(torch.float32)
        self.xv_sum = X[:, self.v_idx].sum(1)  # (L, p)


def _fold_scores(X, Y, XtY, y_sum, fold: _FoldStats, alphas):
    """Mean squared validation error (negated) per layer, alpha and voxel: (L, A, v)."""
    import torch

    b = fold.basis
    Yv = Y[fold.v_idx]
    XvYv = X[:, fold.v_idx].transpose(1, 2) @ Yv  # (L, p, v)
    held = XvYv
    y_held = Yv.sum(0)
    if len(fold.extra):
        Ye = Y[fold.e_idx]
        held = held + X[:, fold.e_idx].transpose(1, 2) @ Ye
        y_held = y_held + Ye.sum(0)
    y_mean = (y_sum - y_held) / fold.n_t  # (v,)
    # centred training cross-product by subtraction: X_T^T Y_T - n_T xbar ybar^T
    C = XtY - held - fold.n_t * b.x_mean[:, :, None] * y_mean[None, None, :]
    B = b.Q.transpose(1, 2) @ C  # (L, r, v)
    d = 1.0 / (b.lam[:, None, :] + alphas[None, :, None])  # (L, A, r), 0 on padded components
    d = d.to(torch.float32)
    yv_ss = (Yv * Yv).sum(0) - 2 * y_mean * Yv.sum(0) + fold.n_v * y_mean**2  # ||Yv - ybar||^2
    if fold.materialise:
        # validation predictions per alpha, (L, A, n_v, v), from the small (L, A, n_v, r) Zv D
        L, A = d.shape[:2]
        Zd = (fold.Zv[:, None] * d[:, :, None, :]).reshape(L, A * fold.n_v, -1)
        pred = torch.bmm(Zd, B).reshape(L, A, fold.n_v, -1)  # no broadcast copy of B
        E = fold.Zv.transpose(1, 2) @ (Yv - y_mean)  # (L, r, v)
        cross = torch.bmm(d, B * E)  # sum over rows of pred * (Yv - ybar): (L, A, v)
        err = yv_ss[None, None] - 2 * cross + torch.linalg.vector_norm(pred, dim=2) ** 2
    else:
        # Xv_c^T Yv_c = Xv^T Yv - xbar (sum Yv)^T - (sum Xv) ybar^T + n_v xbar ybar^T
        xm = b.x_mean[:, :, None]
        XcYc = (
            XvYv
            - xm * Yv.sum(0)[None, None, :]
            - fold.xv_sum[:, :, None] * y_mean[None, None, :]
            + fold.n_v * xm * y_mean[None, None, :]
        )
        E = b.Q.transpose(1, 2) @ XcYc  # (L, r, v)
        dB = d[..., None] * B[:, None]  # (L, A, r, v)
        quad = (dB * (fold.M[:, None] @ dB)).sum(2)  # (L, A, v)
        err = yv_ss[None, None] - 2 * torch.bmm(d, B * E) + quad
    return -err / fold.n_v


def _solver(n: int, p: int, solver: str) -> str:
    if solver == "auto":
        return "primal" if p <= n else "dual"
    if solver not in ("primal", "dual"):
        raise ValueError(f"solver must be 'auto', 'primal' or 'dual', got {solver!r}")
    return solver


def ridge_sweep(
    Xs,
    Y,
    alphas,
    inner_cv,
    *,
    device="auto",
    solver: str = "auto",
    decomp_dtype=None,
    n_targets_batch: int | None = None,
) -> list[SweepFit]:
    """Fit ridge with a per-voxel alpha on every layer of a model at once.

    Parameters
    ----------
    Xs : sequence of ndarray (n_samples, n_features_l)
        Training features of each layer (raw; standardised here with their mean and std).
    Y : ndarray (n_samples, n_voxels)
        Training responses.
    alphas : array-like (n_alphas,)
        Regularisation grid (searched per voxel).
    inner_cv : list of (train, validation) index arrays
        Inner folds over the rows of ``Y`` (e.g. :func:`alignment.folds.inner_folds`).
    device : str
        ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1`` or a himalaya backend name.
    solver : {"auto", "primal", "dual"}
        ``auto``: primal (features x features Gram) when features <= samples, else dual.
    decomp_dtype : torch dtype, optional
        Precision of the Gram matrices and eigendecompositions (default float64).
    n_targets_batch : int, optional
        Voxels per batch; default from free memory (:func:`alignment.encoders.memory.voxel_batch`).

    Returns
    -------
    list of SweepFit, one per layer, in the order of ``Xs``.
    """
    import torch

    from alignment.encoders.memory import voxel_batch

    decomp_dtype = decomp_dtype or torch.float64
    dev = resolve_device(device)
    Y = np.asarray(Y, dtype=np.float32)
    if Y.ndim == 1:
        Y = Y[:, None]
    n, v = Y.shape
    alphas_np = np.asarray(alphas, dtype=np.float64).ravel()
    if alphas_np.size == 0 or (alphas_np <= 0).any():
        raise ValueError(f"alphas must be positive, got {alphas_np}")
    inner_cv = [(np.asarray(t), np.asarray(s)) for t, s in inner_cv]
    if not inner_cv:
        raise ValueError("ridge_sweep needs at least one inner fold")
    for t, s in inner_cv:
        if len(t) == 0 or len(s) == 0:
            raise ValueError("an inner fold has an empty training or validation set")
    fits: list[SweepFit | None] = [None] * len(Xs)
    # group layers of equal width: one batched program per group
    widths: dict[int, list[int]] = {}
    for i, X in enumerate(Xs):
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] != n:
            raise ValueError(f"layer {i}: X must be (samples={n}, features), got {X.shape}")
        widths.setdefault(X.shape[1], []).append(i)
    alphas_t = torch.as_tensor(alphas_np, dtype=decomp_dtype, device=dev)
    for p, members in widths.items():
        form = _solver(min(len(t) for t, _ in inner_cv), p, solver)
        Xraw = np.stack([np.asarray(Xs[i], dtype=np.float32) for i in members])
        mean = Xraw.mean(1)
        scale = Xraw.std(1)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        X = torch.as_tensor((Xraw - mean[:, None]) / scale[:, None], device=dev)
        del Xraw
        L = len(members)
        folds = [_FoldStats(X, t, s, form, decomp_dtype) for t, s in inner_cv]
        full = _basis(X, _solver(n, p, solver), decomp_dtype)
        batch = n_targets_batch or voxel_batch(
            n_samples=n,
            n_features=p,
            n_layers=L,
            n_alphas=len(alphas_np),
            rank=max(f.rank for f in folds),
            device=dev,
        )
        coef = torch.empty((L, p, v), dtype=torch.float32, device=dev)
        intercept = torch.empty((L, v), dtype=torch.float32, device=dev)
        best = np.empty((L, v))
        cv_scores = np.empty((L, len(alphas_np), v))
        for start in range(0, v, batch):
            sl = slice(start, min(start + batch, v))
            Yb = torch.as_tensor(Y[:, sl], device=dev)
            XtY = X.transpose(1, 2) @ Yb  # (L, p, vb)
            y_sum = Yb.sum(0)
            score = torch.zeros((L, len(alphas_np), Yb.shape[1]), dtype=torch.float64, device=dev)
            for fold in folds:
                score += _fold_scores(X, Yb, XtY, y_sum, fold, alphas_t).to(torch.float64)
            score /= len(folds)
            cv_scores[:, :, sl] = score.cpu().numpy()
            # ties go to the larger alpha, as in himalaya
            pick = (score + 1e-10 * torch.log(alphas_t)[None, :, None]).argmax(1)  # (L, vb)
            best_alpha = alphas_t[pick]  # (L, vb)
            best[:, sl] = best_alpha.cpu().numpy()
            y_mean = y_sum / n
            C = XtY - n * full.x_mean[:, :, None] * y_mean[None, None, :]
            Bf = full.Q.transpose(1, 2) @ C  # (L, r, vb)
            d = (1.0 / (full.lam[:, :, None] + best_alpha[:, None, :])).to(torch.float32)
            W = full.Q @ (d * Bf)  # (L, p, vb)
            coef[:, :, sl] = W
            intercept[:, sl] = y_mean[None] - (full.x_mean[:, None, :] @ W)[:, 0]
        for j, i in enumerate(members):
            fits[i] = SweepFit(
                mean=mean[j],
                scale=scale[j],
                coef=coef[j],
                intercept=intercept[j],
                best_alphas=best[j],
                cv_scores=cv_scores[j],
                solver=_solver(n, p, solver),
            )
    return fits
