"""The fast ridge layer sweep: every alpha, inner fold and layer from one decomposition each.

Ridge with an intercept and a per-voxel alpha chosen by inner cross-validation, in pure torch
(CPU or CUDA), giving the same solution as ``himalaya.ridge.RidgeCV`` (same alphas, same inner
folds, same selection score: the mean over inner folds of the negative mean squared error of
the validation rows centred on the training mean, ``himalaya.scoring.l2_neg_loss``, with ties
broken towards the larger alpha by the same ``1e-10 log(alpha)`` slope) and as scikit-learn's
``Ridge`` for a single alpha. What it shares:

- the Gram matrices of every inner training set come from the full one by subtraction of the
  validation (and gap) rows' Grams, in float64; each training set's centred Gram is
  eigendecomposed once, in float64, ``G = Q diag(lam) Q^T``, and serves every alpha, since
  ``(G + alpha I)^-1 = Q diag(1 / (lam + alpha)) Q^T`` (dual form: the centred kernel, mapped to
  the same basis, when features > samples);
- the cross-products: each fold's validation part ``Xv^T Yv`` is computed once and the full
  ``X^T Y`` is their sum (the validation sets partition the rows), so every training part is a
  subtraction;
- the validation loss of every alpha needs no predictions: with ``B = Q^T C_T`` (training
  cross-products), ``E = Q^T Xv^T Yv`` (both centred on the training mean) and a factor ``F``
  of the projected validation Gram ``M = Q^T Xv^T Xv Q = F^T F``,
  ``||Yv - Yv_hat||^2 = ||Yv||^2 - 2 sum(d B E) + ||F (d B)||^2`` for ``d = 1/(lam+alpha)``;
  ``F`` is the (upper triangular) Cholesky factor of ``M``, whose triangle halves the product,
  or the projected validation rows ``Xv Q`` when there are fewer of them than components;
- the layers of a model with the same width are stacked and solved as batched matrix products,
  voxels go in batches sized from free memory (:mod:`alignment.encoders.memory`), and nothing
  leaves the device inside the voxel loop.

Decompositions, Grams and the alpha-selection sums run in float64 (``decomp_dtype``), the
products over voxels in float32. :func:`sweep_flops` counts the work.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: `alignment` CLI start-up stays light
    import torch

log = logging.getLogger(__name__)

__all__ = ["SweepFit", "resolve_device", "ridge_sweep", "sweep_flops"]

# triangular factors are split into this many row blocks (the product skips the zero blocks:
# (n + 1) / (2 n) of the dense work)
TRIANGLE_BLOCKS = 4
# bytes of one voxel batch's per-alpha validation product on a CPU (cache-sized)
CPU_CACHE_BYTES = 2**23


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
        """Predicted responses (samples, voxels), numpy in the sweep's ``dtype``."""
        import torch

        dev = self.coef.device
        X = torch.as_tensor(np.asarray(X), device=dev).to(self.coef.dtype)
        mean = torch.as_tensor(self.mean, device=dev)
        scale = torch.as_tensor(self.scale, device=dev)
        return torch.addmm(self.intercept, (X - mean) / scale, self.coef).cpu().numpy()


def _as_index(idx, device) -> torch.Tensor:
    import torch

    return torch.as_tensor(np.asarray(idx, dtype=np.int64), device=device)


_EIGH_DEVICE: dict = {}


def _eigh_device(G, decomp_device):
    """Where to eigendecompose ``G``: ``decomp_device``, or for ``auto`` on CUDA the faster of
    the GPU and the CPU, timed once per process and matrix size (cuSOLVER loops over a batch of
    large matrices, and some torch/CUDA builds have much slower eigh kernels)."""
    import torch

    if decomp_device != "auto":
        return decomp_device
    if G.device.type != "cuda":
        return G.device
    key = (str(G.device), G.shape[-1], G.dtype)
    if key not in _EIGH_DEVICE:
        seconds = {}
        for dev in (G.device, torch.device("cpu")):
            one = G[:1].to(dev)
            torch.linalg.eigh(one)  # warm-up (kernels, workspace)
            torch.cuda.synchronize(G.device)
            start = time.perf_counter()
            torch.linalg.eigh(G[:2].to(dev))
            torch.cuda.synchronize(G.device)
            seconds[dev] = time.perf_counter() - start
        _EIGH_DEVICE[key] = min(seconds, key=seconds.get)
        log.info("eigendecompositions of size %d run on %s", G.shape[-1], _EIGH_DEVICE[key])
    return _EIGH_DEVICE[key]


def _eig_basis(G, decomp_dtype, tol_dim: int, decomp_device="auto"):
    """Eigenbasis of centred Grams ``G`` (L, m, m): (lam, U, keep), lam = inf where dropped."""
    import torch

    home = G.device
    G = G.to(decomp_dtype)
    lam, U = torch.linalg.eigh(G.to(_eigh_device(G, decomp_device)))
    lam, U = lam.to(home), U.to(home)
    # components without energy (lam ~ 0: collinear features, the direction centring removed)
    # carry no part of the ridge solution, which lies in the row space of the centred features:
    # drop them, as their rounding noise would otherwise be amplified by 1 / alpha
    tol = lam[:, -1:].clamp_min(1e-30) * (tol_dim * torch.finfo(decomp_dtype).eps)
    keep = lam > tol
    return lam, U, keep


@dataclass
class _Fold:
    """One inner training set: its basis, and the factor of its projected validation Gram."""

    lam: torch.Tensor  # (L, r) eigenvalues, float64, inf on dropped components
    Q: torch.Tensor  # (L, p, r) float32 basis (zero columns where dropped)
    x_mean: torch.Tensor  # (L, p) float32 training mean of the standardised features
    n_t: int
    v_idx: torch.Tensor | None = None  # validation rows (None: the full training set)
    e_idx: torch.Tensor | None = None  # held-out rows that are not validated (gaps)
    n_v: int = 0
    Xv: torch.Tensor | None = None  # (L, n_v, p) float32 validation rows
    xv_sum: torch.Tensor | None = None  # (L, p)
    Xe: torch.Tensor | None = None  # (L, n_e, p)
    # per-alpha factor blocks: list of (FD (L, A * rows, cols), first column, rows)
    blocks: list | None = None
    qm: torch.Tensor | None = None  # (L, r, 1) Q^T xbar
    qmv: torch.Tensor | None = None  # (L, r, 2) [Q^T xbar, Q^T sum Xv]


def _factor_blocks(F, d, triangular: bool, dtype):
    """Per-alpha products ``F diag(d_a)`` stacked over alphas, in row blocks.

    ``F`` (L, k, r) float64, ``d`` (L, A, r). A triangular ``F`` is cut into row blocks that skip
    the zero columns left of the diagonal. Returns [(FD (L, A * rows, r - col), col, rows)].
    """

    L, k, r = F.shape
    A = d.shape[1]
    nb = TRIANGLE_BLOCKS if triangular and r >= 64 else 1
    edges = np.linspace(0, k, nb + 1).round().astype(int)
    out = []
    for i in range(nb):
        lo, hi = int(edges[i]), int(edges[i + 1])
        col = lo if triangular else 0
        Fi = F[:, lo:hi, col:]  # (L, rows, r - col)
        FD = Fi[:, None] * d[:, :, None, col:]  # (L, A, rows, r - col)
        out.append((FD.reshape(L, A * (hi - lo), r - col).to(dtype), col, hi - lo))
    return out


def _primal_folds(X, inner_cv, alphas, decomp_dtype, decomp_device):
    """Bases of every inner training set and of the full set, from Grams by subtraction."""
    import torch

    L, n, p = X.shape
    dev = X.device
    X64 = X.to(decomp_dtype)
    G_full = X64.transpose(1, 2) @ X64  # (L, p, p)
    s_full = X64.sum(1)  # (L, p)
    folds, grams = [], []
    for train, val in inner_cv:
        held = np.setdiff1d(np.arange(n), train)
        extra = np.setdiff1d(held, val)
        v_idx, e_idx = _as_index(val, dev), _as_index(extra, dev)
        Xv64 = X64[:, v_idx]
        G_v, s_v = Xv64.transpose(1, 2) @ Xv64, Xv64.sum(1)
        G_h, s_h = G_v, s_v
        if len(extra):
            Xe64 = X64[:, e_idx]
            G_h, s_h = G_v + Xe64.transpose(1, 2) @ Xe64, s_v + Xe64.sum(1)
        n_t = len(train)
        m_t = (s_full - s_h) / n_t
        G_t = G_full - G_h - n_t * m_t[:, :, None] * m_t[:, None, :]
        # the validation rows centred on the training mean
        G_vc = (
            G_v
            - m_t[:, :, None] * s_v[:, None, :]
            - s_v[:, :, None] * m_t[:, None, :]
            + len(val) * m_t[:, :, None] * m_t[:, None, :]
        )
        grams.append((G_t, G_vc, m_t))
        folds.append(
            _Fold(
                lam=None,
                Q=None,
                x_mean=m_t.to(X.dtype),
                n_t=n_t,
                v_idx=v_idx,
                e_idx=e_idx if len(extra) else None,
                n_v=len(val),
                Xv=X[:, v_idx].contiguous(),
                xv_sum=X[:, v_idx].sum(1),
                Xe=X[:, e_idx].contiguous() if len(extra) else None,
            )
        )
    m_full = s_full / n
    G_fc = G_full - n * m_full[:, :, None] * m_full[:, None, :]
    # one batched eigendecomposition of every training set's Gram (folds and full set)
    stack = torch.cat([g[0] for g in grams] + [G_fc])
    lam, U, keep = _eig_basis(stack, decomp_dtype, max(n, p), decomp_device)
    K = len(folds)
    for k, (fold, (_, G_vc, _)) in enumerate(zip(folds, grams, strict=True)):
        sl = slice(k * L, (k + 1) * L)
        _set_basis(fold, lam[sl], U[sl], keep[sl])
        _set_factor(fold, U[sl], keep[sl], G_vc, alphas, decomp_dtype)
    full = _Fold(lam=None, Q=None, x_mean=m_full.to(X.dtype), n_t=n)
    sl = slice(K * L, (K + 1) * L)
    _set_basis(full, lam[sl], U[sl], keep[sl])
    return folds, full


def _set_basis(fold: _Fold, lam, Q64, keep):
    import torch

    fold.Q = torch.where(keep[:, None, :], Q64, 0.0).to(fold.x_mean.dtype)
    fold.lam = torch.where(keep, lam, torch.full_like(lam, float("inf")))
    Qt = fold.Q.transpose(1, 2)
    fold.qm = Qt @ fold.x_mean[:, :, None]
    if fold.xv_sum is not None:
        fold.qmv = torch.cat([fold.qm, Qt @ fold.xv_sum[:, :, None]], 2)


def _set_factor(fold: _Fold, Q64, keep, G_vc, alphas, decomp_dtype):
    """Factor ``F`` with ``F^T F = Q^T G_vc Q`` (projected validation Gram), as per-alpha blocks."""
    import torch

    r = Q64.shape[2]
    Q64 = torch.where(keep[:, None, :], Q64, 0.0)
    d = 1.0 / (fold.lam[:, None, :] + alphas[None, :, None])  # (L, A, r), 0 where dropped
    dense_rows = fold.n_v
    tri_cost = r * r * (TRIANGLE_BLOCKS + 1) / (2 * TRIANGLE_BLOCKS)
    if dense_rows * r <= tri_cost:
        # fewer validation rows than (triangle-weighted) components: F = the projected rows
        Xv = (fold.Xv.to(decomp_dtype) - fold.x_mean.to(decomp_dtype)[:, None]) @ Q64
        fold.blocks = _factor_blocks(Xv, d, False, fold.x_mean.dtype)
        return
    M = Q64.transpose(1, 2) @ G_vc @ Q64
    # dropped components have d = 0: a unit diagonal there keeps M positive definite
    M = M + torch.diag_embed((~keep).to(M.dtype))
    R, info = torch.linalg.cholesky_ex(M)
    if bool((info == 0).all()):
        fold.blocks = _factor_blocks(R.transpose(1, 2), d, True, fold.x_mean.dtype)
        return
    mu, P = torch.linalg.eigh(M)  # singular validation Gram (e.g. collinear rows)
    F = mu.clamp_min(0).sqrt()[:, :, None] * P.transpose(1, 2)
    fold.blocks = _factor_blocks(F, d, False, fold.x_mean.dtype)


def _dual_folds(X, inner_cv, alphas, decomp_dtype, decomp_device):
    """Dual form (features > samples): each training set's centred kernel, mapped to features."""
    import torch

    _, n, p = X.shape
    dev = X.device

    def basis(rows):
        Xt = X[:, rows]
        x_mean = Xt.mean(1)
        Xc = (Xt - x_mean[:, None]).to(decomp_dtype)
        K = Xc @ Xc.transpose(1, 2)
        lam, U, keep = _eig_basis(K, decomp_dtype, max(n, p), decomp_device)
        # the kernel's eigenvectors map to the right singular vectors V = Xc^T U / s
        s = lam.clamp_min(1e-300).sqrt()
        Q64 = (Xc.transpose(1, 2) @ U) / s[:, None, :]
        return lam, Q64, keep, x_mean

    folds = []
    for train, val in inner_cv:
        held = np.setdiff1d(np.arange(n), train)
        extra = np.setdiff1d(held, val)
        v_idx, e_idx, t_idx = _as_index(val, dev), _as_index(extra, dev), _as_index(train, dev)
        lam, Q64, keep, x_mean = basis(t_idx)
        fold = _Fold(
            lam=None,
            Q=None,
            x_mean=x_mean,
            n_t=len(train),
            v_idx=v_idx,
            e_idx=e_idx if len(extra) else None,
            n_v=len(val),
            Xv=X[:, v_idx].contiguous(),
            xv_sum=X[:, v_idx].sum(1),
            Xe=X[:, e_idx].contiguous() if len(extra) else None,
        )
        _set_basis(fold, lam, Q64, keep)
        Q64 = torch.where(keep[:, None, :], Q64, 0.0)
        d = 1.0 / (fold.lam[:, None, :] + alphas[None, :, None])
        Zv = (fold.Xv.to(decomp_dtype) - x_mean.to(decomp_dtype)[:, None]) @ Q64
        fold.blocks = _factor_blocks(Zv, d, False, fold.x_mean.dtype)
        folds.append(fold)
    lam, Q64, keep, x_mean = basis(_as_index(np.arange(n), dev))
    full = _Fold(lam=None, Q=None, x_mean=x_mean, n_t=n)
    _set_basis(full, lam, Q64, keep)
    return folds, full


def _partition(inner_cv, n: int):
    """Rows validated by no fold, or None when validation sets overlap (no sum for X^T Y)."""
    counts = np.bincount(np.concatenate([np.asarray(v) for _, v in inner_cv]), minlength=n)
    if counts.max() > 1:
        return None
    return np.flatnonzero(counts == 0)


def _scores(X, Y, folds, rest, alphas, log_alphas):
    """Selection scores (L, A, v) float64 (mean over folds of -MSE), X^T Y and Y's sum."""
    import torch

    L = X.shape[0]
    vb = Y.shape[1]
    XvYv, yv_sums, Yvs = [], [], []
    for fold in folds:
        Yv = Y[fold.v_idx]
        XvYv.append(fold.Xv.transpose(1, 2) @ Yv)  # (L, p, vb)
        yv_sums.append(Yv.sum(0))
        Yvs.append(Yv)
    y_sum = Y.sum(0)
    if rest is None:
        XtY = X.transpose(1, 2) @ Y
    else:
        XtY = XvYv[0].clone()
        for part in XvYv[1:]:
            XtY += part
        if len(rest):
            XtY += X[:, rest].transpose(1, 2) @ Y[rest]
    total = torch.zeros((L, len(alphas), vb), dtype=torch.float64, device=Y.device)
    base = torch.zeros(vb, dtype=torch.float64, device=Y.device)
    for fold, XvYv_k, yv_sum, Yv in zip(folds, XvYv, yv_sums, Yvs, strict=True):
        C = XtY - XvYv_k
        y_held = yv_sum
        if fold.e_idx is not None:
            Ye = Y[fold.e_idx]
            C -= fold.Xe.transpose(1, 2) @ Ye
            y_held = y_held + Ye.sum(0)
        y_mean = (y_sum - y_held) / fold.n_t  # (vb,)
        ym = y_mean.expand(L, 1, vb)
        Qt = fold.Q.transpose(1, 2)
        # centring as low-rank updates in the basis (one pass each): the training
        # cross-product X_T^T Y_T - n_T xbar ybar^T, and the validation one on the training means
        # Xv^T Yv - xbar (sum Yv - n_v ybar)^T - (sum Xv) ybar^T
        B = (Qt @ C).baddbmm_(fold.qm, ym, alpha=-fold.n_t)  # (L, r, vb)
        del C
        right = torch.stack([yv_sum - fold.n_v * y_mean, y_mean]).expand(L, 2, vb)
        E = (Qt @ XvYv_k).baddbmm_(fold.qmv, right, alpha=-1.0)
        d = 1.0 / (fold.lam[:, None, :] + alphas[None, :, None])  # (L, A, r)
        cross = torch.bmm(d.to(B.dtype), E.mul_(B))  # (L, A, vb): sum_r d B E
        del E
        quad = None
        for FD, col, rows in fold.blocks:
            P = torch.bmm(FD, B[:, col:]).view(L, -1, rows, vb)  # (L, A, rows, vb)
            part = P.square_().sum(2)  # (a strided norm is 3x slower on a CPU)
            quad = part if quad is None else quad.add_(part)
        total += (2 * cross - quad).to(torch.float64) / fold.n_v
        base += ((Yv - y_mean) ** 2).sum(0).to(torch.float64) / fold.n_v  # ||Yv - ybar_T||^2
    score = (total - base) / len(folds)
    # ties go to the larger alpha, by himalaya's slope
    pick = (score + 1e-10 * log_alphas[None, :, None]).argmax(1)  # (L, vb)
    return score, pick, XtY, y_sum


def _solver(n: int, p: int, solver: str) -> str:
    if solver == "auto":
        return "primal" if p <= n else "dual"
    if solver not in ("primal", "dual"):
        raise ValueError(f"solver must be 'auto', 'primal' or 'dual', got {solver!r}")
    return solver


def sweep_flops(
    n: int,
    p: int,
    v: int,
    n_layers: int,
    n_alphas: int,
    inner_cv,
    n_test: int = 0,
    solver: str = "primal",
) -> dict:
    """Floating-point operations of :func:`ridge_sweep` (2 per multiply-add), by part.

    ``float32`` counts the products over voxels (the part that scales with the voxels and runs
    at matrix-multiply speed), ``float64`` the Grams, projections and eigendecompositions
    (about 9 r^3 each, LAPACK's divide and conquer with vectors), ``elementwise`` the
    per-voxel sums. ``n_test`` adds the test-set predictions.
    """
    folds = [(len(t), len(s)) for t, s in inner_cv]
    r_full = min(n, p)
    f32 = {"cross_products": 2 * n * p * v, "projections": 0, "validation_quad": 0}
    f64 = 0
    elementwise = 0
    nb = TRIANGLE_BLOCKS
    for n_t, n_v in folds:
        r = min(n_t, p)
        f32["projections"] += 2 * 2 * p * r * v  # B and E
        if n_v * r <= r * r * (nb + 1) / (2 * nb) or solver == "dual":
            f32["validation_quad"] += 2 * n_alphas * n_v * r * v
        else:
            f32["validation_quad"] += 2 * n_alphas * r * r * v * (nb + 1) / (2 * nb)
        elementwise += 4 * n_alphas * r * v
        f64 += 2 * n_v * p * p + 9 * r**3 + 4 * p * r * r + 2 * n_alphas * r * r
    f32["refit"] = 2 * 2 * p * r_full * v
    f32["test_predictions"] = 2 * n_test * p * v
    f64 += 2 * n * p * p + 9 * r_full**3
    out = {k: n_layers * float(x) for k, x in f32.items()}
    out["float32"] = sum(out.values())
    out["float64"] = n_layers * float(f64)
    out["elementwise"] = n_layers * float(elementwise)
    return out


def ridge_sweep(
    Xs,
    Y,
    alphas,
    inner_cv,
    *,
    device="auto",
    solver: str = "auto",
    dtype=None,
    decomp_dtype=None,
    decomp_device=None,
    n_targets_batch: int | None = None,
    timings: dict | None = None,
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
    dtype : torch dtype, optional
        Precision of the products over samples and voxels (default float32; float64 for
        reference results).
    decomp_dtype : torch dtype, optional
        Precision of the Grams, eigendecompositions and selection sums (default float64).
    decomp_device : str, optional
        Where the eigendecompositions run: ``auto`` (default: on CUDA the faster of the GPU and
        the CPU, timed once per process; else ``device``), ``cpu``, ``cuda``.
    n_targets_batch : int, optional
        Voxels per batch; default from free memory (:func:`alignment.encoders.memory.voxel_batch`).
    timings : dict, optional
        Filled with seconds per phase (``prepare``, ``decompose``, ``voxels``); synchronises the
        device between phases, so leave it out when timing the whole.

    Returns
    -------
    list of SweepFit, one per layer, in the order of ``Xs``.
    """
    import torch

    from alignment.encoders.memory import free_bytes, voxel_batch

    decomp_dtype = decomp_dtype or torch.float64
    dtype = dtype or torch.float32
    dev = resolve_device(device)
    decomp_dev = "auto" if decomp_device in (None, "auto") else resolve_device(decomp_device)

    def tick(name, start):
        if timings is None:
            return start
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - start
        return now

    clock = time.perf_counter()
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    Y = np.asarray(Y, dtype=np_dtype)
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
    alphas64 = torch.as_tensor(alphas_np, dtype=decomp_dtype, device=dev)
    log_alphas = torch.log(alphas64)
    rest = _partition(inner_cv, n)
    rest_idx = None if rest is None else _as_index(rest, dev)
    Y_dev = None
    for p, members in widths.items():
        L = len(members)
        X = torch.stack([torch.as_tensor(np.asarray(Xs[i], dtype=np_dtype)) for i in members])
        X = X.to(dev)
        mean = X.mean(1, dtype=torch.float64)
        scale = (X.to(torch.float64) - mean[:, None]).square().mean(1).sqrt()
        scale = torch.where(scale > 0, scale, 1.0)
        mean, scale = mean.to(dtype), scale.to(dtype)
        X = (X - mean[:, None]) / scale[:, None]
        form = _solver(min(len(t) for t, _ in inner_cv), p, solver)
        clock = tick("prepare", clock)
        make = _primal_folds if form == "primal" else _dual_folds
        folds, full = make(X, inner_cv, alphas64, decomp_dtype, decomp_dev)
        clock = tick("decompose", clock)
        rank = max(f.Q.shape[2] for f in folds)
        rows = max(sum(b[2] for b in f.blocks) for f in folds)
        batch = n_targets_batch or voxel_batch(
            n_samples=n,
            n_features=p,
            n_layers=L,
            n_alphas=len(alphas_np),
            rank=max(rank, rows),
            n_folds=len(folds),
            device=dev,
        )
        if dev.type == "cpu" and not n_targets_batch:
            # on a CPU, batches whose per-alpha products stay in cache run several times faster
            block = max(b[0].shape[1] for f in folds for b in f.blocks)
            batch = min(batch, max(64, CPU_CACHE_BYTES // (4 * block * L)))
        if Y_dev is None and (dev.type == "cpu" or batch >= v or Y.nbytes < free_bytes(dev) / 8):
            # one transfer serves every width and batch (on a CPU, a view of Y)
            Y_dev = torch.as_tensor(Y, device=dev)
        coef = torch.empty((L, p, v), dtype=dtype, device=dev)
        intercept = torch.empty((L, v), dtype=dtype, device=dev)
        best = torch.empty((L, v), dtype=torch.float64, device=dev)
        cv_scores = torch.empty((L, len(alphas_np), v), dtype=torch.float64, device=dev)
        for start in range(0, v, batch):
            sl = slice(start, min(start + batch, v))
            Yb = Y_dev[:, sl] if Y_dev is not None else torch.as_tensor(Y[:, sl], device=dev)
            score, pick, XtY, y_sum = _scores(X, Yb, folds, rest_idx, alphas64, log_alphas)
            cv_scores[:, :, sl] = score
            best_alpha = alphas64[pick]  # (L, vb)
            best[:, sl] = best_alpha
            y_mean = y_sum / n
            Bf = (full.Q.transpose(1, 2) @ XtY).baddbmm_(full.qm, y_mean.expand(L, 1, -1), alpha=-n)
            Bf *= (1.0 / (full.lam[:, :, None] + best_alpha[:, None, :])).to(dtype)
            W = full.Q @ Bf  # (L, p, vb)
            coef[:, :, sl] = W
            intercept[:, sl] = y_mean[None] - (full.x_mean[:, None, :] @ W)[:, 0]
        best_np, cv_np = best.cpu().numpy(), cv_scores.cpu().numpy()  # one transfer per group
        mean_np, scale_np = mean.cpu().numpy(), scale.cpu().numpy()
        clock = tick("voxels", clock)
        for j, i in enumerate(members):
            fits[i] = SweepFit(
                mean=mean_np[j],
                scale=scale_np[j],
                coef=coef[j],
                intercept=intercept[j],
                best_alphas=best_np[j],
                cv_scores=cv_np[j],
                solver=_solver(n, p, solver),
            )
    return fits
