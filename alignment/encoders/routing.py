"""The attention-routing encoder: a transformer brain encoder (Adeli, Sun & Kriegeskorte 2025).

Frozen patch tokens of a vision model are read by a set of learned queries, one per ROI per
hemisphere plus a ``rest`` query for vertices in no ROI (DESIGN.md section 6). Each query
cross-attends to the tokens, whose keys carry a 2-D sine positional encoding, so a query can
route information by content (a face wherever it is) or by position (one image quadrant).
Every query's output token is read out to the vertices of its ROI by one linear map per
hemisphere, gated by ROI membership::

    keys   = tokens + pos          values = tokens
    tgt    = 0
    tgt   += Dropout(MHA(q = LN(tgt) + query, k = keys, v = values))
    tgt   += Dropout(FFN(LN(tgt)))
    z      = LN(tgt)                                  (batch, queries, width)
    y[b,v] = sum_q member[q, v] * (W_h[v] . z[b, q]) + c_h[v]      (einsum, no V x V tensor)

In the per-vertex mode every vertex has its own query (``y[b, v] = W[v] . z[b, v] + c[v]``).

This is our own implementation from the published description; it shares no code with the
reference implementation.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from tqdm.auto import tqdm

from alignment import dims
from alignment.encoders.registry import EncoderContext, register_encoder
from alignment.io import InputError

log = logging.getLogger(__name__)

REST = "rest"  # label of the query that serves vertices in no ROI
MODES = ("roi", "vertex")
PRECISIONS = ("fp32", "bf16")
CENTERINGS = ("unit", "position", "image", "median")
IMAGE_CENTERINGS = ("image", "median")  # within each image first, then the training mean


# --------------------------------------------------------------------------------------------
# pure functions


def sine_positional_encoding(
    grid, width: int, temperature: float = 10000.0, scale: float = 2 * math.pi
) -> np.ndarray:
    """2-D sine positional encoding of a token grid, DETR style.

    Half the channels encode the row and half the column; channel ``i`` of one axis is
    ``sin`` (even ``i``) or ``cos`` (odd ``i``) of ``pos / temperature ** (2 * (i // 2) / n)``
    with ``pos`` the 1-based position normalised to ``(0, scale]``.

    Parameters
    ----------
    grid : (int, int)
        Token grid (rows, columns); tokens are in row-major order.
    width : int
        Token width (channels); rows get ``width // 2`` channels, columns the rest.
    temperature, scale : float

    Returns
    -------
    ndarray (rows * columns, width), float32
    """
    h, w = (int(g) for g in grid)
    if h < 1 or w < 1 or width < 2:
        raise ValueError(f"need a positive grid and width >= 2, got grid {grid}, width {width}")
    eps = 1e-6
    rows = np.arange(1, h + 1, dtype=np.float64) / (h + eps) * scale
    cols = np.arange(1, w + 1, dtype=np.float64) / (w + eps) * scale

    def axis(pos, n):
        i = np.arange(n)
        dim_t = temperature ** (2 * (i // 2) / n)
        arg = pos[:, None] / dim_t
        return np.where(i % 2 == 0, np.sin(arg), np.cos(arg))

    n_rows = width // 2
    pos_y = axis(rows, n_rows)  # (h, n_rows)
    pos_x = axis(cols, width - n_rows)  # (w, n_cols)
    pos = np.concatenate(
        [np.repeat(pos_y[:, None], w, axis=1), np.repeat(pos_x[None], h, axis=0)], axis=-1
    )
    return pos.reshape(h * w, width).astype(np.float32)


@dataclass
class QueryLayout:
    """Which query reads out to which vertex, per hemisphere.

    Attributes
    ----------
    labels : list of (hemi, roi)
        One per query, in order; ``roi`` is ``rest`` for the vertices in no ROI, or the
        vertex index (as a string) in the per-vertex mode.
    hemis : list of str
        Hemispheres in order of first appearance.
    query_index : list of ndarray
        Per hemisphere, the positions of its queries in ``labels``.
    vertex_index : list of ndarray
        Per hemisphere, the columns of the responses that are its vertices.
    membership : list of ndarray (n_queries_h, n_vertices_h) bool, or None
        Per hemisphere (ROI mode): whether each vertex belongs to each query's ROI. None in the
        per-vertex mode (query ``i`` of a hemisphere reads out to its vertex ``i``).
    mode : {"roi", "vertex"}
    """

    labels: list
    hemis: list
    query_index: list
    vertex_index: list
    membership: list | None
    mode: str = "roi"

    @property
    def n_queries(self) -> int:
        return len(self.labels)


def query_layout(roi, hemi=None, mode: str = "roi", rois="all") -> QueryLayout:
    """Queries of the routing encoder from the voxels' ROI and hemisphere labels.

    Parameters
    ----------
    roi : array-like of str (n_voxels,)
        ROI label per vertex (``none`` = in no ROI). A vertex in several ROIs carries their
        names joined by ``+`` (e.g. ``FFA+faces``) and is read out from each of their queries.
    hemi : array-like of str (n_voxels,), optional
        Hemisphere per vertex; without it every vertex is in one group ``all``.
    mode : {"roi", "vertex"}
        ``roi``: one query per ROI per hemisphere plus a ``rest`` query for vertices in no
        (selected) ROI; ``vertex``: one query per vertex.
    rois : "all" or list of str
        ROIs that get their own query; vertices of other ROIs go to ``rest``. Naming an ROI
        that has no vertex is an error.

    Returns
    -------
    QueryLayout
    """
    if mode not in MODES:
        raise InputError(f"routing encoder: mode must be one of {MODES}, got {mode!r}")
    roi = np.asarray(roi if roi is not None else [], dtype=str)
    n = len(roi)
    if n == 0:
        raise InputError("routing encoder: the responses have no voxel (or no 'roi' labels)")
    hemi = np.full(n, "all") if hemi is None else np.asarray(hemi, dtype=str)
    if hemi.shape != roi.shape:
        raise InputError(
            f"routing encoder: {len(hemi)} hemisphere labels for {n} ROI labels; need one each"
        )
    members = [[] if r in (dims.NO_ROI, "", REST) else [p for p in r.split("+") if p] for r in roi]
    present = list(dict.fromkeys(p for m in members for p in m))
    if rois != "all":
        wanted = [str(r) for r in rois]
        missing = [r for r in wanted if r not in present]
        if missing:
            raise InputError(
                f"routing encoder: ROI(s) {missing} have no vertex; the responses' ROIs are "
                f"{present or ['none']}"
            )
        members = [[p for p in m if p in wanted] for m in members]
    labels, query_index, vertex_index, membership = [], [], [], []
    hemis = list(dict.fromkeys(hemi.tolist()))
    for h in hemis:
        cols = np.flatnonzero(hemi == h)
        start = len(labels)
        if mode == "vertex":
            labels.extend((h, str(c)) for c in cols)
        else:
            names = list(dict.fromkeys(p for c in cols for p in members[c]))
            has_rest = any(not members[c] for c in cols)
            names = names + ([REST] if has_rest else [])
            mask = np.zeros((len(names), len(cols)), dtype=bool)
            pos = {name: i for i, name in enumerate(names)}
            for j, c in enumerate(cols):
                for p in members[c] or [REST]:
                    mask[pos[p], j] = True
            labels.extend((h, name) for name in names)
            membership.append(mask)
        query_index.append(np.arange(start, len(labels)))
        vertex_index.append(cols)
    return QueryLayout(
        labels=labels,
        hemis=hemis,
        query_index=query_index,
        vertex_index=vertex_index,
        membership=membership if mode == "roi" else None,
        mode=mode,
    )


def check_token_grid(n_tokens: int, token_grid=None, source: str = "features") -> tuple[int, int]:
    """The (rows, columns) of a token sequence; a clear error when they do not match.

    Without ``token_grid``, a square grid is assumed when ``n_tokens`` is a perfect square.
    """
    if token_grid is None:
        side = math.isqrt(int(n_tokens))
        if side * side != n_tokens:
            raise InputError(
                f"{source}: {n_tokens} tokens and no token_grid attribute; cannot lay them on a "
                "grid (drop CLS/register tokens, or store token_grid: [rows, columns])"
            )
        return side, side
    if isinstance(token_grid, str):  # a store attribute written as JSON text
        import json

        token_grid = json.loads(token_grid)
    grid = tuple(int(g) for g in np.ravel(token_grid))
    if len(grid) != 2 or min(grid) < 1:
        raise InputError(f"{source}: token_grid must be [rows, columns], got {token_grid!r}")
    if grid[0] * grid[1] != n_tokens:
        raise InputError(
            f"{source}: token_grid {list(grid)} holds {grid[0] * grid[1]} tokens, but the "
            f"features have {n_tokens} per stimulus (CLS or register tokens kept?)"
        )
    return grid


# --------------------------------------------------------------------------------------------
# torch module


def _torch():
    import torch

    return torch


def _build_module(
    width_in: int,
    layout: QueryLayout,
    grid: tuple[int, int],
    *,
    width: int | None,
    n_heads: int,
    ffn_dim: int,
    dropout: float,
    positional: bool,
    position_heads: int = 0,
    position_scale: float = 0.0,
    position_bias: bool = False,
):
    """The transformer brain encoder as a torch ``nn.Module`` (see the module docstring)."""
    from alignment.encoders._routing_torch import TransformerBrainEncoder

    d = width or width_in
    if d % n_heads:
        raise InputError(f"routing encoder: width {d} is not divisible by {n_heads} heads")
    if not 0 <= position_heads <= n_heads:
        raise InputError(
            f"routing encoder: position_heads must be between 0 and n_heads ({n_heads}), "
            f"got {position_heads}"
        )
    if position_heads and not positional:
        raise InputError("routing encoder: position_heads needs positional: true")
    pos = sine_positional_encoding(grid, d) if positional else np.zeros((1, d), np.float32)
    return TransformerBrainEncoder(
        width_in,
        layout,
        pos,
        width=d,
        n_heads=n_heads,
        ffn_dim=ffn_dim,
        dropout=dropout,
        position_heads=position_heads,
        position_scale=position_scale,
        position_bias=position_bias,
    )


# --------------------------------------------------------------------------------------------
# training


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA device is present, else ``cpu``."""
    if device != "auto":
        return device
    return "cuda" if _torch().cuda.is_available() else "cpu"


def _to_device(X, device: str, dtype):
    """Features as a tensor on ``device``, copied in chunks (no full host-side copy)."""
    torch = _torch()
    if isinstance(X, torch.Tensor):
        return X.to(device=device, dtype=dtype)
    if device == "cpu" and dtype == torch.float32:
        return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    out = torch.empty(X.shape, dtype=dtype, device=device)
    step = max(1, int(2**28 // max(1, np.prod(X.shape[1:]))))
    for i in range(0, len(X), step):
        chunk = np.ascontiguousarray(X[i : i + step], dtype=np.float32)
        out[i : i + step] = torch.from_numpy(chunk).to(device).to(dtype)
    return out


def _autocast(device: str, precision: str):
    torch = _torch()
    if precision == "bf16" and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def run_epoch(model, optimizer, X, Y, rows, batch_size, grad_clip, generator, device, precision):
    """One training epoch over ``rows`` in shuffled batches; returns the mean training loss.

    ``X`` (samples, tokens, units) and ``Y`` (samples, voxels, z-scored) are tensors on the
    model's device; a step is forward, MSE, backward, gradient clipping and an AdamW update.
    """
    torch = _torch()
    model.train()
    order = rows[torch.randperm(len(rows), generator=generator)]
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size].to(X.device)
        with _autocast(device, precision):
            pred = model(X[idx])
        loss = torch.nn.functional.mse_loss(pred.float(), Y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


def _predict_batches(model, X, rows, batch_size, device, precision, weights=False):
    torch = _torch()
    model.eval()
    preds, attn, norms = [], [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            idx = rows[start : start + batch_size].to(X.device)
            with _autocast(device, precision):
                out = model(X[idx], return_weights=weights)
            if weights:
                preds.append(out[0].float())
                attn.append(out[1].float())
                norms.append(model.attn.head_norms.float())
            else:
                preds.append(out.float())
    pred = torch.cat(preds) if preds else torch.zeros(0)
    return (pred, torch.cat(attn), torch.cat(norms)) if weights else pred


# --------------------------------------------------------------------------------------------
# estimator


@register_encoder("routing", inputs="tokens", experiments=("images",))
class RoutingEncoder(RegressorMixin, BaseEstimator):
    """Attention-routing encoder from patch tokens to every vertex (DESIGN.md section 6).

    Tokens are centred with the training mean (per position and unit, see
    ``token_centering``) and scaled per unit by the training standard deviation; responses
    are z-scored per vertex with the training statistics and the model is trained with MSE;
    predictions are returned in the responses' units.

    Parameters
    ----------
    roi, hemi : array-like of str (n_voxels,), optional
        ROI and hemisphere labels of the responses' columns (``from_spec`` takes them from the
        fold's context). Without ``roi`` every vertex is served by the ``rest`` query.
    token_grid : (int, int), optional
        Token grid (rows, columns); square by default.
    mode : {"roi", "vertex"}
        One query per ROI per hemisphere plus ``rest``, or one query per vertex.
    rois : "all" or list of str
        ROIs that get their own query (others fall to ``rest``).
    width : int, optional
        Decoder width; default the token width (otherwise tokens are first projected).
    n_heads, ffn_dim : int
        Attention heads (must divide the width) and FFN hidden size.
    dropout : float
    positional : bool
        Add the 2-D sine positional encoding to the keys (switch off only for ablations).
    position_heads : int
        Heads (of ``n_heads``) whose keys are the positional encoding alone, without the
        tokens: each query's attention in these heads is one spatial map shared by all images.
        0 (the reference) lets every head mix content and position; a few position heads let
        a position-bound ROI find its part of the image from few images (the demo's 240).
    position_scale : float
        With position heads: a learned per-head scale of their attention logits, initialised
        to this value (0: no scale). The position heads' logits are linear in a sine encoding
        whose weights move little in a short training; a scale of a few lets their maps
        become peaked on the part of the image their ROI reads.
    position_bias : bool
        With position heads: a learned logit per ROI query, position head and token, zero at
        the start, added to the position heads' logits: each ROI query can learn any spatial
        map over the grid directly (a receptive field), not only maps linear in the sine
        encoding.
    position_lr : float
        Learning-rate multiplier of the queries, the position scale and the position bias (1:
        the same lr as every other parameter).
    lr, weight_decay : float
        AdamW parameters.
    batch_size : int
    grad_clip : float
        Maximum gradient norm (0 = no clipping).
    max_epochs, patience : int
        Training stops after ``patience`` epochs without a better validation score
        (``select_on``); the best epoch's weights are kept.
    select_on : {"r", "loss"}
        Validation score for early stopping: the mean r over vertices (default), or the MSE
        (loss). Where many vertices carry no signal (a demo's or a mask's noise vertices) their
        overfitting raises the MSE epochs before the signal vertices stop improving, while
        their r stays about zero; the mean r follows the vertices with signal.
    cv : int or list of (train, val)
        Validation split for early stopping: the first (train, val) pair of the inner folds
        (``from_spec`` passes the fold's inner CV, carved from the training rows only), or an
        int k for a seeded random 1/k of the rows.
    refit : bool
        After early stopping, retrain on all rows for the best number of epochs.
    precision : {"fp32", "bf16"}
        ``bf16`` autocasts on CUDA (tokens are then also kept in bf16 on the device).
    device : str
        ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``...
    attention_rois : "all" or list of str
        ROIs whose attention :meth:`interpret` returns.
    token_centering : {"unit", "position", "image", "median"}
        Subtract the training mean per unit (default), or per token position and unit, or
        first each image's own mean token (then scale per unit). The per-position mean carries
        no stimulus information but holds the backbone's own position embedding; removing it
        leaves position to the keys' encoding only. ``image`` removes what every token of an
        image shares (e.g. an early layer's background brightness and colour), so a token says
        how its patch differs from the rest of the image: a query that attends to one region
        then reads that region's contrast to the image without attending elsewhere too (global
        image statistics are lost to the queries). But the mean holds ``1 / n_tokens`` of every
        region, so each token also carries minus the others' content: tokens outside a
        region come to predict what it drives, and the attention is no longer tied to it.
        ``median`` subtracts each image's median token (per unit) instead: the background,
        moved less by one region's content (on the demo's layer-0 tokens, far less).
    random_state : int
    verbose : bool
        Show a progress bar with the validation loss.

    Attributes
    ----------
    model_ : torch.nn.Module
    layout_ : QueryLayout
    token_grid_ : (int, int)
    best_epoch_ : int
    history_ : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_r``, ``seconds`` (training
        step only).
    n_features_in_ : int
        Token width.
    """

    def __init__(
        self,
        roi=None,
        hemi=None,
        token_grid=None,
        mode="roi",
        rois="all",
        width=None,
        n_heads=16,
        ffn_dim=1024,
        dropout=0.1,
        positional=True,
        position_heads=0,
        position_scale=0.0,
        position_bias=False,
        position_lr=1.0,
        lr=5e-4,
        weight_decay=1e-4,
        batch_size=32,
        grad_clip=0.1,
        max_epochs=100,
        patience=10,
        select_on="r",
        cv=5,
        refit=False,
        precision="fp32",
        device="auto",
        attention_rois="all",
        token_centering="unit",
        random_state=0,
        verbose=True,
    ):
        self.roi = roi
        self.hemi = hemi
        self.token_grid = token_grid
        self.mode = mode
        self.rois = rois
        self.width = width
        self.n_heads = n_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.positional = positional
        self.position_heads = position_heads
        self.position_scale = position_scale
        self.position_bias = position_bias
        self.position_lr = position_lr
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.grad_clip = grad_clip
        self.max_epochs = max_epochs
        self.patience = patience
        self.select_on = select_on
        self.cv = cv
        self.refit = refit
        self.precision = precision
        self.device = device
        self.attention_rois = attention_rois
        self.token_centering = token_centering
        self.random_state = random_state
        self.verbose = verbose

    @classmethod
    def from_spec(cls, spec: dict, context: EncoderContext) -> RoutingEncoder:
        """Build from a config entry; ROI/hemisphere labels, token grid and validation split
        come from the fold's context."""
        spec = dict(spec)
        voxels = context.voxels or {}
        grid = spec.pop("token_grid", None) or (context.features or {}).get("token_grid")
        seed = spec.pop("random_state", context.random_state)
        return cls(
            roi=voxels.get(dims.ROI),
            hemi=voxels.get(dims.HEMI),
            token_grid=grid,
            cv=context.inner_cv or 5,
            random_state=int(seed) + int(context.fold),
            **spec,
        )

    # ---------------------------------------------------------------- validation helpers

    def _check_x(self, X, fitted: bool):
        torch = _torch()
        if not isinstance(X, torch.Tensor):
            X = np.asarray(X)
        if X.ndim != 3:
            raise InputError(
                f"routing encoder: features must be (samples, tokens, units), got shape "
                f"{tuple(X.shape)}"
            )
        if fitted:
            want = (self.token_grid_[0] * self.token_grid_[1], self.n_features_in_)
            if tuple(X.shape[1:]) != want:
                raise InputError(
                    f"routing encoder: features have {X.shape[1]} tokens of width {X.shape[2]}; "
                    f"the encoder was fitted on {want[0]} tokens (grid {list(self.token_grid_)}) "
                    f"of width {want[1]}"
                )
        return X

    def _params_ok(self):
        if self.precision not in PRECISIONS:
            raise InputError(f"routing encoder: precision must be one of {PRECISIONS}")
        if self.select_on not in ("r", "loss"):
            raise InputError("routing encoder: select_on must be 'r' or 'loss'")
        if self.token_centering not in CENTERINGS:
            raise InputError(f"routing encoder: token_centering must be one of {CENTERINGS}")
        if int(self.batch_size) < 1 or int(self.max_epochs) < 1:
            raise InputError("routing encoder: batch_size and max_epochs must be positive")

    def _split(self, n: int):
        """(train, val) rows for early stopping; val comes from the training rows only."""
        if isinstance(self.cv, int | np.integer):
            k = max(int(self.cv), 2)
            perm = np.random.default_rng(self.random_state).permutation(n)
            n_val = max(1, n // k)
            return np.sort(perm[n_val:]), np.sort(perm[:n_val])
        folds = list(self.cv)
        if not folds:
            raise InputError("routing encoder: cv is an empty list of folds")
        train, val = (np.asarray(a, dtype=int) for a in folds[0])
        if train.size == 0 or val.size == 0 or max(train.max(), val.max()) >= n:
            raise InputError(
                f"routing encoder: the validation split does not fit the {n} training rows"
            )
        return train, val

    # ---------------------------------------------------------------- public API

    def fit(self, X, Y):
        """Train on tokens (samples, tokens, units) and responses (samples, voxels)."""
        torch = _torch()
        self._params_ok()
        X = self._check_x(X, fitted=False)
        Y = np.asarray(Y, dtype=np.float32)
        if Y.ndim == 1:
            Y = Y[:, None]
        if Y.ndim != 2 or Y.shape[0] != X.shape[0]:
            raise InputError(
                f"routing encoder: responses must be (samples, voxels) with {X.shape[0]} "
                f"samples, got shape {Y.shape}"
            )
        if not np.isfinite(Y).all():
            raise InputError(
                f"routing encoder: responses have {int((~np.isfinite(Y)).sum())} "
                "non-finite value(s)"
            )
        n, n_tokens, width_in = X.shape
        grid = check_token_grid(n_tokens, self.token_grid)
        roi = self.roi if self.roi is not None else np.full(Y.shape[1], dims.NO_ROI)
        if len(roi) != Y.shape[1]:
            raise InputError(
                f"routing encoder: {len(roi)} ROI labels for {Y.shape[1]} response columns"
            )
        layout = query_layout(roi, self.hemi, self.mode, self.rois)
        device = resolve_device(self.device)
        store = torch.bfloat16 if (self.precision == "bf16" and device != "cpu") else torch.float32
        train, val = self._split(n)

        with torch.random.fork_rng(devices=[] if device == "cpu" else None):
            torch.manual_seed(int(self.random_state))
            Xt = _to_device(X, device, store)
            if not bool(torch.isfinite(Xt).all()):
                raise InputError("routing encoder: features have non-finite value(s)")
            self.y_mean_ = Y[train].mean(0)
            y_scale = Y[train].std(0)
            self.y_scale_ = np.where(y_scale > 0, y_scale, 1.0).astype(np.float32)
            Yt = torch.as_tensor((Y - self.y_mean_) / self.y_scale_, device=device)
            mean, scale = _token_stats(
                Xt, torch.as_tensor(train, device=Xt.device), self.token_centering
            )
            model, best_epoch, history = self._train(
                Xt, Yt, train, val, layout, grid, width_in, device, mean, scale
            )
            if self.refit:
                rows = np.arange(n)
                model, _, refit_history = self._train(
                    Xt,
                    Yt,
                    rows,
                    None,
                    layout,
                    grid,
                    width_in,
                    device,
                    mean,
                    scale,
                    n_epochs=best_epoch,
                )
                history = history + [{**h, "refit": True} for h in refit_history]
        self.model_ = model.eval()
        self.layout_ = layout
        self.query_labels_ = [f"{h}/{r}" for h, r in layout.labels]
        self.token_grid_ = grid
        self.n_features_in_ = width_in
        self.best_epoch_ = best_epoch
        self.history_ = history
        self.device_ = device
        self.store_dtype_ = store
        return self

    def _train(
        self, Xt, Yt, train, val, layout, grid, width_in, device, mean, scale, n_epochs=None
    ):
        torch = _torch()
        model = _build_module(
            width_in,
            layout,
            grid,
            width=self.width,
            n_heads=int(self.n_heads),
            ffn_dim=int(self.ffn_dim),
            dropout=float(self.dropout),
            positional=bool(self.positional),
            position_heads=int(self.position_heads),
            position_scale=float(self.position_scale),
            position_bias=bool(self.position_bias),
        ).to(device)
        model.centering = self.token_centering if self.token_centering in IMAGE_CENTERINGS else None
        model.token_mean = mean.to(device)
        model.token_scale = scale.to(device)
        fast = [model.query]
        for extra in (model.attn.log_position_scale, model.attn.spatial_bias):
            if extra is not None:
                fast.append(extra)
        ids = {id(p) for p in fast}
        groups = [{"params": [p for p in model.parameters() if id(p) not in ids]}]
        if float(self.position_lr) != 1.0:
            groups.append({"params": fast, "lr": float(self.lr) * float(self.position_lr)})
        else:
            groups[0]["params"] = list(model.parameters())
        optimizer = torch.optim.AdamW(
            groups, lr=float(self.lr), weight_decay=float(self.weight_decay), fused=True
        )
        generator = torch.Generator().manual_seed(int(self.random_state))
        train_rows = torch.as_tensor(train)
        val_rows = torch.as_tensor(val) if val is not None else None
        epochs = int(n_epochs or self.max_epochs)
        best, best_epoch, best_state, history, stale = np.inf, epochs, None, [], 0
        bar = tqdm(
            range(1, epochs + 1),
            desc="routing",
            unit="epoch",
            leave=False,
            disable=not self.verbose,
        )
        for epoch in bar:
            t0 = time.perf_counter()
            train_loss = run_epoch(
                model,
                optimizer,
                Xt,
                Yt,
                train_rows,
                int(self.batch_size),
                float(self.grad_clip),
                generator,
                device,
                self.precision,
            )
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            entry = {"epoch": epoch, "train_loss": train_loss, "seconds": seconds}
            if val_rows is not None:
                pred = _predict_batches(
                    model, Xt, val_rows, int(self.batch_size) * 4, device, self.precision
                )
                target = Yt[val_rows.to(Yt.device)]
                val_loss = float(torch.mean((pred - target) ** 2))
                val_r = _mean_r(pred, target)
                entry["val_loss"], entry["val_r"] = val_loss, val_r
                # lower is better: the loss, or minus the mean r
                criterion = val_loss if self.select_on == "loss" else -val_r
                if criterion < best - 1e-6:
                    best, best_epoch, stale = criterion, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    stale += 1
                bar.set_postfix(
                    train=f"{train_loss:.3f}",
                    val=f"{val_loss:.3f}",
                    val_r=f"{val_r:.3f}",
                    best=f"{best if self.select_on == 'loss' else -best:.3f}@{best_epoch}",
                )
            else:
                bar.set_postfix(train=f"{train_loss:.3f}")
            history.append(entry)
            if val_rows is not None and stale >= int(self.patience):
                break
        bar.close()
        if best_state is not None:
            model.load_state_dict(best_state)
        log.info(
            "routing encoder: %d epoch(s), best validation %s %.4f at epoch %d",
            len(history),
            "loss" if self.select_on == "loss" else "mean r",
            best if self.select_on == "loss" else -best,
            best_epoch,
        )
        return model, best_epoch, history

    def predict(self, X):
        """Predicted responses, (samples, voxels) numpy array in the responses' units."""
        pred = self._run(X, weights=False)
        return pred * self.y_scale_ + self.y_mean_

    def _run(self, X, weights: bool):
        torch = _torch()
        X = self._check_x(X, fitted=True)
        Xt = _to_device(X, self.device_, self.store_dtype_)
        rows = torch.arange(len(Xt))
        out = _predict_batches(
            self.model_,
            Xt,
            rows,
            int(self.batch_size) * 4,
            self.device_,
            self.precision,
            weights=weights,
        )
        if weights:  # predictions, attention (samples, heads, queries, tokens), head norms
            return tuple(o.cpu().numpy() for o in out)
        return out.cpu().numpy()

    def attention(self, X, heads: bool = False) -> np.ndarray:
        """Cross-attention of every query over the token grid, averaged over heads.

        Parameters
        ----------
        X : array (samples, tokens, units)
        heads : bool
            Return every head's attention instead of their mean; the first
            ``position_heads`` heads read position only.

        Returns
        -------
        ndarray (samples, queries, rows, columns), or (samples, heads, queries, rows, columns)
            Queries in the order of ``query_labels_``; each map sums to 1.
        """
        _, weights, _ = self._run(X, weights=True)  # (samples, heads, queries, tokens)
        if not heads:
            weights = weights.mean(1)
        return weights.reshape(*weights.shape[:-1], *self.token_grid_)

    def interpret(self, X) -> dict[str, np.ndarray]:
        """Attention maps per ROI query for the CV loop: ``attention_<hemi>_<roi>`` ->
        (samples, rows, columns), the mean over heads, and ``head_attention_<hemi>_<roi>`` ->
        (samples, heads, rows, columns), every head's (the first ``position_heads`` read
        position only; :func:`label_attention` names the dimensions), and
        ``head_norm_<hemi>_<roi>`` -> (samples, heads), the norm of what each head adds to the
        query's output token (a head with a small norm barely shapes the prediction).

        In the per-vertex mode, an ROI's map is the mean over its vertices' queries.
        """
        _, att, norms = self._run(X, weights=True)
        att = att.reshape(*att.shape[:-1], *self.token_grid_)  # (samples, heads, queries, r, c)
        labels = self.layout_.labels
        wanted = None if self.attention_rois == "all" else {str(r) for r in self.attention_rois}
        out = {}

        def put(h, r, per_head, norm):
            out[f"attention_{h}_{r}"] = per_head.mean(1)
            out[f"{HEAD_PREFIX}{h}_{r}"] = per_head
            out[f"{NORM_PREFIX}{h}_{r}"] = norm

        if self.layout_.mode == "roi":
            for i, (h, r) in enumerate(labels):
                if wanted is None or r in wanted:
                    put(h, r, att[:, :, i], norms[:, :, i])
            return out
        roi = np.asarray(self.roi if self.roi is not None else [], dtype=str)
        for h, qi, cols in zip(
            self.layout_.hemis, self.layout_.query_index, self.layout_.vertex_index, strict=True
        ):
            for r in dict.fromkeys(roi[cols].tolist()):
                name = REST if r == dims.NO_ROI else r
                if wanted is None or name in wanted:
                    sel = qi[roi[cols] == r]
                    put(h, name, att[:, :, sel].mean(2), norms[:, :, sel].mean(2))
        return out


HEAD_PREFIX = "head_attention_"
NORM_PREFIX = "head_norm_"  # per image and head: |W_out,h (attention_h @ values_h)|


def label_attention(ds, encoder_spec: dict):
    """Name the dimensions of the per-head maps of an ``attention.nc`` Dataset.

    The CV loop names an interpretation's dimensions after its variable; the per-head maps
    (``head_attention_<hemi>_<roi>``) get ``head``, ``row``, ``column`` and a ``position_head``
    coordinate (bool per head: reads position only), from the encoder's spec; the per-head
    output norms (``head_norm_<hemi>_<roi>``: how much each head adds to the query's output
    token, per image) get ``head``.

    Parameters
    ----------
    ds : xarray.Dataset
    encoder_spec : dict
        The routing encoder's config entry (``n_heads``, ``position_heads``).

    Returns
    -------
    xarray.Dataset
    """
    renames = {}
    for name, var in ds.data_vars.items():
        if str(name).startswith(HEAD_PREFIX):
            renames.update(dict(zip(var.dims[-3:], ("head", "row", "column"), strict=True)))
        elif str(name).startswith(NORM_PREFIX):
            renames[var.dims[-1]] = "head"
    if not renames:
        return ds
    ds = ds.rename(renames)
    n_pos = int(encoder_spec.get("position_heads", 0))
    ds = ds.assign_coords(position_head=("head", np.arange(ds.sizes["head"]) < n_pos))
    ds.attrs["position_heads"] = n_pos
    return ds


def _mean_r(pred, target) -> float:
    """Mean over columns of the Pearson r between predictions and targets (tensors)."""
    p = pred.double() - pred.double().mean(0)
    t = target.double() - target.double().mean(0)
    den = (p.norm(dim=0) * t.norm(dim=0)).clamp_min(1e-12)
    return float(((p * t).sum(0) / den).mean())


def _token_stats(Xt, rows, centering: str = "unit", chunk: int = 256):
    """Mean (per token position and unit, or per unit) and per-unit standard deviation of the
    tokens of ``rows``, accumulated in float64 (``image``, ``median``: of the tokens minus
    each image's mean or median token, as the model sees them)."""
    torch = _torch()
    from alignment.encoders._routing_torch import centre_tokens

    n_tokens, width = Xt.shape[1], Xt.shape[2]
    total = torch.zeros(n_tokens, width, dtype=torch.float64, device=Xt.device)
    sq = torch.zeros_like(total)
    for start in range(0, len(rows), chunk):
        x = Xt[rows[start : start + chunk]].double()
        if centering in IMAGE_CENTERINGS:
            x = centre_tokens(x, centering)
        total += x.sum(0)
        sq += (x * x).sum(0)
    count = len(rows)
    mean_pos = total / count  # (tokens, width)
    mean = mean_pos if centering == "position" else mean_pos.mean(0, keepdim=True)
    # variance around the mean used: E[x^2] - E[x]^2 per position, averaged over positions
    var = (sq / count).mean(0) - (mean**2).mean(0)
    std = torch.sqrt(torch.clamp(var, min=0))
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.float(), std.float()


# --------------------------------------------------------------------------------------------
# synthetic validation data (tests and benchmarks)

QUADRANTS = ("upper-left", "upper-right", "lower-left", "lower-right")


def quadrant_mask(grid, quadrant: str) -> np.ndarray:
    """Boolean (rows, columns) mask of one quadrant of a token grid."""
    if quadrant not in QUADRANTS:
        raise ValueError(f"quadrant must be one of {QUADRANTS}, got {quadrant!r}")
    h, w = grid
    mask = np.zeros((h, w), dtype=bool)
    rows = slice(0, h // 2) if quadrant.startswith("upper") else slice(h // 2, h)
    cols = slice(0, w // 2) if quadrant.endswith("left") else slice(w // 2, w)
    mask[rows, cols] = True
    return mask


def synthetic_routing_data(
    n_images: int = 600,
    grid=(8, 8),
    width: int = 64,
    n_categories: int = 4,
    blob: int = 2,
    n_voxels: int = 24,
    noise: float = 0.5,
    strength: float = 1.0,
    random_state: int = 0,
) -> dict:
    """Patch tokens with planted category blobs, and responses of three kinds of ROI.

    Every image's tokens are white noise; one blob of ``blob x blob`` tokens at a random
    position carries a category prototype (random vector ``strength`` times as long as a noise
    token, times an amplitude in [0.75, 1.25]) plus a ``detail`` vector (shared by all
    categories) times a Gaussian level. ROIs (``n_voxels`` vertices each, plus as many ``none``
    vertices per hemisphere):

    - ``content`` (left and right): the detail level of the blob when it is of category 0
      (zero otherwise), wherever the blob is. No linear read-out of the mean token can gate the
      level by category, so the query must attend to the blob;
    - ``retinotopic`` (left): random linear read-outs of the mean token of the upper-left
      quadrant, whatever its content;
    - ``mixed`` (right): half category 1, half the lower-right quadrant's mean token.

    Each vertex gets Gaussian noise of s.d. ``noise`` on top of its unit-variance signal.

    Returns
    -------
    dict
        ``X`` (images, tokens, width) float32, ``Y`` (images, voxels) float32, ``roi`` and
        ``hemi`` (voxels,), ``grid``, ``category`` (images,), ``blob`` (images, rows,
        columns) bool, ``signal`` (images, voxels) noise-free, ``quadrants`` {roi: quadrant}.
    """
    rng = np.random.default_rng(random_state)
    h, w = grid
    X = rng.standard_normal((n_images, h, w, width)).astype(np.float32)
    prototypes = strength * rng.standard_normal((n_categories, width)).astype(np.float32)
    detail = strength * rng.standard_normal(width).astype(np.float32)
    category = rng.integers(0, n_categories, n_images)
    amplitude = rng.uniform(0.75, 1.25, n_images)
    level = rng.standard_normal(n_images)
    blob_mask = np.zeros((n_images, h, w), dtype=bool)
    for i in range(n_images):
        r0, c0 = rng.integers(0, h - blob + 1), rng.integers(0, w - blob + 1)
        blob_mask[i, r0 : r0 + blob, c0 : c0 + blob] = True
        X[i, r0 : r0 + blob, c0 : c0 + blob] += amplitude[i] * prototypes[category[i]]
        X[i, r0 : r0 + blob, c0 : c0 + blob] += level[i] * detail

    def zs(a):
        a = a - a.mean(0)
        return a / a.std(0)

    def content(cat, n):
        s = zs((level * (category == cat))[:, None])
        return np.repeat(s, n, axis=1) * rng.uniform(0.7, 1.3, n)

    def retinotopic(quadrant, n, rank=3):
        q = quadrant_mask(grid, quadrant)
        mean_token = X[:, q].mean(1)  # (images, width)
        drive = zs(mean_token @ rng.standard_normal((width, rank)))
        return zs(drive @ rng.standard_normal((rank, n)))

    parts = [
        ("left", "content", content(0, n_voxels)),
        ("left", "retinotopic", retinotopic("upper-left", n_voxels)),
        ("left", dims.NO_ROI, np.zeros((n_images, n_voxels))),
        ("right", "content", content(0, n_voxels)),
        ("right", "mixed", zs(content(1, n_voxels) + retinotopic("lower-right", n_voxels))),
        ("right", dims.NO_ROI, np.zeros((n_images, n_voxels))),
    ]
    signal = np.concatenate([p[2] for p in parts], axis=1).astype(np.float32)
    Y = signal + noise * rng.standard_normal(signal.shape).astype(np.float32)
    return {
        "X": X.reshape(n_images, h * w, width),
        "Y": Y.astype(np.float32),
        "signal": signal,
        "roi": np.concatenate([[p[1]] * p[2].shape[1] for p in parts]),
        "hemi": np.concatenate([[p[0]] * p[2].shape[1] for p in parts]),
        "grid": (h, w),
        "category": category,
        "blob": blob_mask,
        "quadrants": {"retinotopic": "upper-left", "mixed": "lower-right"},
    }
