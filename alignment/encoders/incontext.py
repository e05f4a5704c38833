"""The in-context encoder (BraInCoRL; Yu et al. 2025): voxelwise encoders from a few images.

A hypernetwork reads the context of ONE voxel, pairs (L2-normalised image embedding x_i,
response y_i), and emits that voxel's linear encoder (w, b); the prediction is y = w.x + b
(DESIGN.md section 6):

- each pair ``concat[x_i, y_i]`` is tokenised by a residual MLP block (LN, LeakyReLU 0.1,
  Dropout, Linear E+1 -> 2D, LN, LeakyReLU, Dropout, Linear 2D -> D, plus a Linear bypass);
- four learned register tokens are prepended; there is no positional encoding, so the output
  is invariant to the order of the context;
- pre-LN transformer blocks whose attention queries are scaled by log(L) (L = sequence length)
  so that attention stays as sharp on a longer context than trained; SwiGLU FFNs;
- token 0 goes through a residual block (D -> E+1) that gives [w, b].

Meta-training (:func:`meta_train`) draws tasks, one voxel of one training subject each: a
context of random length and disjoint query images; the loss is the MSE on the queries.
Optional stage 1 pre-trains on synthetic voxels whose weights are drawn from a Gaussian fitted
to ridge weights of the real training voxels. A checkpoint (:func:`save_checkpoint`) holds the
model config, the embedding model it expects and the subjects it was trained on; the
``incontext`` encoder refuses features of another embedding model and, in the workflow, a
subject it was trained on.

Few-shot encoding (:class:`InContextEncoder`) is one batched forward pass: no gradient step.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, RegressorMixin
from torch import nn
from tqdm.auto import tqdm

from alignment.encoders.registry import EncoderContext, register_encoder
from alignment.io import InputError, atomic_path, require_file

log = logging.getLogger(__name__)

#: 2: the decoder adds its correction to the analytic inversion (a ``lam`` buffer).
CHECKPOINT_FORMAT = "alignment-incontext-2"

#: Reference widths D for an embedding width E (DESIGN.md section 6).
PAPER_WIDTHS = {512: 560, 768: 800, 1152: 1200}


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class InContextConfig:
    """Architecture of the hypernetwork (and of the in-context decoder, which shares it).

    Defaults follow the paper (20 blocks, 10 heads, SwiGLU 2 x 2048, dropout 0.5); ``width``
    None means the reference width for the embedding width (:data:`PAPER_WIDTHS`).
    """

    embed_dim: int
    width: int | None = None
    depth: int = 20
    heads: int = 10
    ffn_hidden: int = 2048
    dropout: float = 0.5
    n_registers: int = 4
    log_scale: bool = True
    standardise: bool = True

    def __post_init__(self):
        if self.width is None:
            self.width = paper_width(self.embed_dim, self.heads)
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        if self.n_registers < 1:
            raise ValueError("n_registers must be at least 1 (token 0 is the output)")

    @classmethod
    def from_dict(cls, d: dict) -> InContextConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown in-context model key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def paper_width(embed_dim: int, heads: int = 10) -> int:
    """The paper's width D for embedding width E; otherwise E + ~5%, a multiple of 4*heads."""
    if embed_dim in PAPER_WIDTHS:
        return PAPER_WIDTHS[embed_dim]
    step = 4 * heads
    return int(math.ceil(embed_dim * 1.05 / step) * step)


# --------------------------------------------------------------------------------------------
# the network


class ResidualMLP(nn.Module):
    """LN, LeakyReLU 0.1, Dropout, Linear in->hidden, LN, LeakyReLU, Dropout, Linear
    hidden->out, plus a Linear bypass in->out."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float):
        super().__init__()
        self.main = nn.Sequential(
            nn.LayerNorm(d_in),
            nn.LeakyReLU(0.1),
            nn.Dropout(dropout),
            nn.Linear(d_in, d_hidden),
            nn.LayerNorm(d_hidden),
            nn.LeakyReLU(0.1),
            nn.Dropout(dropout),
            nn.Linear(d_hidden, d_out),
        )
        self.bypass = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.main(x) + self.bypass(x)


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.gate_value = nn.Linear(width, 2 * hidden)
        self.out = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        gate, value = self.gate_value(x).chunk(2, dim=-1)
        return self.out(self.drop(F.silu(gate) * value))


class Block(nn.Module):
    """Pre-LN block: x += Attn(LN(x)) with log(L)-scaled queries; x += SwiGLU(LN(x))."""

    def __init__(self, cfg: InContextConfig):
        super().__init__()
        self.heads = cfg.heads
        self.log_scale = cfg.log_scale
        self.norm1 = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.ffn = SwiGLU(cfg.width, cfg.ffn_hidden, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def _split(self, t):
        b, n, d = t.shape
        return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x, first_only: bool = False, return_attention: bool = False):
        """``first_only``: compute the output of token 0 only (all a last block needs)."""
        h = self.norm1(x)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        if first_only:
            q, x = q[:, :1], x[:, :1]
        if self.log_scale:
            q = q * math.log(k.shape[1])  # length-aware sharpness (L = sequence length)
        q, k, v = self._split(q), self._split(k), self._split(v)
        attn_weights = None
        if return_attention:
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            probs = scores.float().softmax(-1)
            attn_weights = probs.mean(1)  # (B, Lq, L), averaged over heads
            out = probs.to(v.dtype) @ v
        else:
            drop = self.drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        x = x + self.drop(self.proj(out))
        x = x + self.drop(self.ffn(self.norm2(x)))
        return x, attn_weights


class InContextHypernet(nn.Module):
    """Context pairs (x_i, y_i) of one voxel -> that voxel's (w, b).

    ``forward(x, y)`` takes x (B, S, E) unit-norm embeddings and y (B, S) responses (B voxels,
    S context images each) and returns w (B, E) and b (B,).
    """

    def __init__(self, cfg: InContextConfig):
        super().__init__()
        self.cfg = cfg
        e, d = cfg.embed_dim, cfg.width
        self.tokenizer = ResidualMLP(e + 1, 2 * d, d, cfg.dropout)
        self.registers = nn.Parameter(torch.randn(cfg.n_registers, d) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        self.head = ResidualMLP(d, 2 * d, e + 1, cfg.dropout)
        # the head starts at (w, b) = 0, the prediction of a voxel's mean: meta-training then
        # starts from a loss of Var(y) instead of the huge one of random weights
        for lin in (self.head.main[-1], self.head.bypass):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        # unit-norm x has coordinates of size 1/sqrt(E); tokens and weights work in units of
        # sqrt(E) x, so that a voxel of unit response variance has weights of order one
        self.x_scale = math.sqrt(e)

    def encode_tokens(self, x, y):
        """Tokens of the context pairs, registers first: (B, R + S, D).

        ``x`` is (B, S, E), or (S, E) for a context shared by every voxel of the batch: then
        the image part of the tokenizer's linear bypass is computed once for all voxels.
        """
        tok = self.tokenizer
        xs = x * self.x_scale
        n = y.shape[0]
        if x.dim() == 2:
            w_x, w_y = tok.bypass.weight[:, :-1], tok.bypass.weight[:, -1]
            shared = F.linear(xs, w_x, tok.bypass.bias)  # (S, D), once for all voxels
            bypass = shared.unsqueeze(0) + y.unsqueeze(-1) * w_y
            xs = xs.unsqueeze(0).expand(n, -1, -1)
        else:
            bypass = None
        pairs = torch.cat([xs, y.unsqueeze(-1)], dim=-1)
        tokens = tok.main(pairs) + (tok.bypass(pairs) if bypass is None else bypass)
        reg = self.registers.unsqueeze(0).expand(n, -1, -1)
        return torch.cat([reg, tokens], dim=1)

    def forward(self, x, y, return_attention: bool = False):
        """x (B, S, E) or (S, E) shared by the batch, y (B, S) -> w (B, E), b (B,)."""
        dtype = self.registers.dtype
        y = y.float()
        if self.cfg.standardise:
            # each voxel's context responses are z-scored and its (w, b) scaled back: the
            # network sees every voxel at one scale (exactly equivariant to y -> a y + c)
            loc = y.mean(1, keepdim=True)
            if y.shape[1] > 1:
                scale = y.std(1, keepdim=True).clamp_min(1e-6)
            else:
                scale = torch.ones_like(loc)
            y = (y - loc) / scale
        h = self.encode_tokens(x.to(dtype), y.to(dtype))
        attention = None
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            h, a = block(h, first_only=last, return_attention=last and return_attention)
            if a is not None:
                attention = a[:, 0, self.cfg.n_registers :]  # token 0 -> context images
        out = self.head(self.norm(h[:, 0])).float()
        w = out[:, :-1] * self.x_scale
        b = out[:, -1]
        if self.cfg.standardise:
            w, b = w * scale, b * scale[:, 0] + loc[:, 0]
        return (w, b, attention) if return_attention else (w, b)


def normalise(X: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """Centre (optionally, by a stored feature mean) and L2-normalise rows."""
    X = np.asarray(X, dtype=np.float32)
    if mean is not None:
        X = X - np.asarray(mean, dtype=np.float32)
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norm > 0, norm, 1.0)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` = CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _auto_batch_voxels(model: InContextHypernet, n_context: int, device: torch.device, itemsize):
    """Voxels per forward pass: from free GPU memory on CUDA; a cache-sized batch on the CPU."""
    if device.type != "cuda":
        return 64
    free, _ = torch.cuda.mem_get_info(device)
    cfg = model.cfg
    tokens = n_context + cfg.n_registers
    # live activations of one voxel in one block: tokens x (qkv 3D + SwiGLU 2H + H + a few D)
    per_voxel = tokens * (6 * cfg.width + 3 * cfg.ffn_hidden + cfg.embed_dim) * itemsize
    return int(max(1, min(8192, 0.5 * free // max(per_voxel, 1))))


@torch.no_grad()
def predict_weights(
    model: InContextHypernet,
    X: np.ndarray,
    Y: np.ndarray,
    *,
    batch_voxels: int | str = "auto",
    device: str | torch.device = "auto",
    return_attention: bool = False,
    dtype: torch.dtype | str | None = "auto",
    progress: bool = False,
    compile: bool = False,
):
    """(w, b) of every voxel from one shared context, in voxel batches; no gradient step.

    Parameters
    ----------
    model : InContextHypernet
    X : ndarray (n_context, E)
        Unit-norm embeddings of the context images.
    Y : ndarray (n_context, n_voxels)
        Responses of every voxel to them.
    batch_voxels : int or "auto"
        Voxels per forward pass; ``auto``: from free memory on CUDA, 64 on the CPU.
    device : str or torch.device
    return_attention : bool
        Also return token 0's last-block attention over the context images, (n_voxels,
        n_context).
    dtype : torch.dtype, "auto" or None
        Compute dtype; ``auto`` = bfloat16 on CUDA (weights cast once, flash attention),
        float32 on the CPU.
    compile : bool
        Run the network through ``torch.compile`` (fused elementwise kernels); falls back to
        eager mode, with a warning, where compilation fails.

    Returns
    -------
    W : ndarray (n_voxels, E), b : ndarray (n_voxels,) [, attention]
    """
    device = resolve_device(device) if isinstance(device, str) else device
    if dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else None
    compute = dtype or torch.float32
    # a bf16 copy of the weights (no per-call autocast casts); the caller's model is untouched
    net = model if compute == torch.float32 else _cast_copy(model, compute)
    net = net.to(device).eval()
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32), device=device).to(compute)
    Yt = torch.as_tensor(np.asarray(Y, dtype=np.float32), device=device)
    n_vox = Yt.shape[1]
    if batch_voxels == "auto":
        itemsize = torch.finfo(compute).bits // 8
        batch_voxels = _auto_batch_voxels(net, Xt.shape[0], device, itemsize)
    # results stay on the device until the end: no host synchronisation inside the loop
    W = torch.empty(n_vox, Xt.shape[1], device=device)
    B = torch.empty(n_vox, device=device)
    A = torch.empty(n_vox, Xt.shape[0], device=device) if return_attention else None
    runner = torch.compile(net) if compile else net
    starts = range(0, n_vox, int(batch_voxels))
    for start in tqdm(starts, desc="in-context (w, b)", unit="batch", disable=not progress):
        stop = min(start + int(batch_voxels), n_vox)
        yb = Yt[:, start:stop].T  # (B, S); the context images Xt are shared by the batch
        try:
            out = runner(Xt, yb, return_attention=return_attention)
        except Exception as err:  # a compiler missing or failing: eager mode, same numbers
            if runner is net:
                raise
            log.warning("torch.compile failed (%s); running in eager mode", err)
            runner = net
            out = runner(Xt, yb, return_attention=return_attention)
        W[start:stop] = out[0].float()
        B[start:stop] = out[1].float()
        if return_attention:
            A[start:stop] = out[2].float()
    W, b = W.cpu().numpy(), B.cpu().numpy()
    if return_attention:
        return W, b, A.cpu().numpy()
    return W, b


def _cast_copy(model: InContextHypernet, dtype: torch.dtype) -> InContextHypernet:
    import copy

    return copy.deepcopy(model).to(dtype)


# --------------------------------------------------------------------------------------------
# meta-training


@dataclass
class TrainingConfig:
    """Meta-training: tasks of one voxel; context length uniform in ``context_range``.

    The paper: context 30-500, 100 queries, AdamW lr 1e-4, weight decay 0.1.
    ``pretrain_steps`` > 0 runs stage 1 on synthetic voxels drawn from a Gaussian fitted to
    ridge weights of the training voxels, before ``steps`` on the real voxels.
    """

    steps: int = 10000
    batch_size: int = 64
    context_range: tuple = (30, 500)
    n_query: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.1
    pretrain_steps: int = 0
    pretrain_noise: float | None = None  # noise sd of synthetic voxels (None: from the ridge fit)
    grad_clip: float = 1.0
    warmup: int = 50

    @classmethod
    def from_dict(cls, d: dict) -> TrainingConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown meta-training key(s) {unknown}; known: {sorted(known)}")
        out = cls(**d)
        out.context_range = tuple(int(v) for v in out.context_range)
        return out


def _check_training_sets(X_list, Y_list, training: TrainingConfig):
    if len(X_list) != len(Y_list) or not X_list:
        raise InputError("meta-training needs one (X, Y) pair per training subject")
    dims_ = {X.shape[1] for X in X_list}
    if len(dims_) != 1:
        raise InputError(f"training subjects have embeddings of different widths {sorted(dims_)}")
    lo, hi = training.context_range
    for k, (X, Y) in enumerate(zip(X_list, Y_list, strict=True)):
        if X.shape[0] != Y.shape[0]:
            raise InputError(f"training subject {k}: {X.shape[0]} images but {Y.shape[0]} rows")
        if X.shape[0] < lo + 1:
            raise InputError(
                f"training subject {k}: {X.shape[0]} images, fewer than the shortest context "
                f"({lo}) plus one query"
            )
        if not (np.isfinite(X).all() and np.isfinite(Y).all()):
            raise InputError(f"training subject {k}: non-finite features or responses")
    if not 1 <= lo <= hi:
        raise InputError(f"context_range must be 1 <= low <= high, got {training.context_range}")


def ridge_prior(X_list, Y_list, alpha: float = 1.0):
    """A Gaussian prior fitted to ridge weights of real voxels: mean, covariance, noise sd.

    Ridge (one alpha, on unit-norm embeddings in units of sqrt(E) x) per training subject; the
    returned mean and covariance are over [w, b] of every voxel, the noise sd the residual sd.
    """
    thetas, resid = [], []
    for X, Y in zip(X_list, Y_list, strict=True):
        Xs = np.hstack([X * np.sqrt(X.shape[1]), np.ones((len(X), 1), np.float32)])
        reg = alpha * np.eye(Xs.shape[1])
        reg[-1, -1] = 0.0
        theta = np.linalg.solve(Xs.T @ Xs + reg, Xs.T @ Y)  # (E+1, V)
        thetas.append(theta.T)
        resid.append((Y - Xs @ theta).std(0))
    theta = np.concatenate(thetas)
    theta[:, :-1] *= np.sqrt(X_list[0].shape[1])  # back to weights on unit-norm x
    mean = theta.mean(0)
    cov = np.cov(theta, rowvar=False) + 1e-6 * np.eye(theta.shape[1])
    return mean, cov, float(np.median(np.concatenate(resid)))


def _synthetic_responses(X, n_vox, mean, cov_chol, noise, rng):
    theta = mean + rng.standard_normal((n_vox, len(mean))) @ cov_chol.T
    Y = X @ theta[:, :-1].T + theta[:, -1] + noise * rng.standard_normal((len(X), n_vox))
    return Y.astype(np.float32)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _train_loop(model, sample_batch, steps, training, device, desc, history):
    opt = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, steps, min(training.warmup, steps))
    )
    model.train()
    t0 = time.perf_counter()
    n_tasks = 0
    losses = []  # kept on the device: no host synchronisation per step
    bar = tqdm(range(steps), desc=desc, unit="step", mininterval=2.0)
    for step in bar:
        xc, yc, xq, yq = sample_batch()
        w, b = model(xc, yc)
        pred = torch.einsum("bqe,be->bq", xq, w) + b[:, None]
        loss = F.mse_loss(pred.float(), yq.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if training.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
        opt.step()
        sched.step()
        n_tasks += xc.shape[0]
        losses.append(loss.detach())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{float(losses[-1]):.4f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    values = torch.stack(losses).float().cpu().tolist() if losses else []
    history += [{"stage": desc, "step": i, "loss": v} for i, v in enumerate(values)]
    log.info("%s: %d steps, %.1f s, %.0f voxel-tasks/s", desc, steps, elapsed, n_tasks / elapsed)
    return n_tasks / max(elapsed, 1e-9)


def _task_sampler(X_list, Y_list, training: TrainingConfig, device, rng):
    """Batches of tasks: one subject per batch, one voxel and fresh image split per task."""
    Xs = [torch.as_tensor(X, device=device) for X in X_list]
    Ys = [torch.as_tensor(Y, device=device) for Y in Y_list]
    lo, hi = training.context_range
    gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**31)))

    def sample():
        s = int(rng.integers(len(Xs)))
        X, Y = Xs[s], Ys[s]
        n_img, n_vox = Y.shape
        n_ctx = int(rng.integers(lo, min(hi, n_img - 1) + 1))
        n_q = min(training.n_query, n_img - n_ctx)
        bsz = training.batch_size
        order = torch.rand(bsz, n_img, generator=gen, device=device).argsort(dim=1)
        ctx, qry = order[:, :n_ctx], order[:, n_ctx : n_ctx + n_q]  # disjoint
        vox = torch.as_tensor(rng.integers(n_vox, size=bsz), device=device)
        yc = Y[ctx, vox[:, None]]
        yq = Y[qry, vox[:, None]]
        return X[ctx], yc, X[qry], yq

    return sample


def meta_train(
    X_list,
    Y_list,
    model_config: dict | InContextConfig,
    training: dict | TrainingConfig | None = None,
    *,
    device: str = "auto",
    random_state: int = 0,
    model: InContextHypernet | None = None,
):
    """Meta-train the hypernetwork on the voxels of the training subjects.

    Parameters
    ----------
    X_list : list of ndarray (n_images_s, E)
        Unit-norm embeddings of each training subject's images.
    Y_list : list of ndarray (n_images_s, n_voxels_s)
        Each training subject's responses (repeat-averaged, z-scored).
    model_config : dict or InContextConfig
    training : dict or TrainingConfig
    device : str
    random_state : int
    model : InContextHypernet, optional
        Continue training this model instead of a fresh one.

    Returns
    -------
    model : InContextHypernet (on the CPU, in eval mode)
    info : dict
        ``history`` (loss per step), ``tasks_per_s``, ``prior`` (stage 1, when run).
    """
    training = (
        training
        if isinstance(training, TrainingConfig)
        else TrainingConfig.from_dict(dict(training or {}))
    )
    X_list = [np.asarray(X, dtype=np.float32) for X in X_list]
    Y_list = [np.asarray(Y, dtype=np.float32) for Y in Y_list]
    _check_training_sets(X_list, Y_list, training)
    cfg = model_config
    if not isinstance(cfg, InContextConfig):
        cfg = InContextConfig.from_dict({"embed_dim": X_list[0].shape[1], **dict(cfg)})
    if cfg.embed_dim != X_list[0].shape[1]:
        raise InputError(f"model embed_dim {cfg.embed_dim} != features width {X_list[0].shape[1]}")
    torch.manual_seed(random_state)
    rng = np.random.default_rng(random_state)
    dev = resolve_device(device)
    model = (model or InContextHypernet(cfg)).to(dev)
    history: list = []
    info: dict = {"history": history}
    if training.pretrain_steps:
        mean, cov, noise = ridge_prior(X_list, Y_list)
        noise = training.pretrain_noise if training.pretrain_noise is not None else noise
        chol = np.linalg.cholesky(cov)
        n_syn = 4096
        synth = [
            _synthetic_responses(X, n_syn, mean, chol, noise, rng) for X in X_list
        ]  # fixed bank of synthetic voxels per subject's image set
        sample = _task_sampler(X_list, synth, training, dev, rng)
        _train_loop(model, sample, training.pretrain_steps, training, dev, "stage 1", history)
        info["prior"] = {"noise_sd": noise, "mean_norm": float(np.linalg.norm(mean[:-1]))}
    sample = _task_sampler(X_list, Y_list, training, dev, rng)
    info["tasks_per_s"] = _train_loop(model, sample, training.steps, training, dev, "meta", history)
    return model.cpu().eval(), info


# --------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(
    path,
    model: InContextHypernet,
    *,
    embedding: dict,
    training_subjects: list,
    feature_mean: np.ndarray | None = None,
    extra: dict | None = None,
    decoder=None,
) -> None:
    """Write a checkpoint atomically: weights, config, embedding model and training subjects.

    Parameters
    ----------
    embedding : dict
        What the checkpoint expects of its features: ``model`` (name in the config),
        ``cache_key`` (features cache key), ``layer``, optionally ``source``.
    training_subjects : list of (dataset, subject) or str
        Subjects whose responses the model was meta-trained on.
    feature_mean : ndarray (E,), optional
        Mean subtracted from features before normalising (a property of the embedding).
    decoder : InContextDecoder, optional
        An in-context decoder (BrainCoDec) stored with the encoder.
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(model.cfg),
        "state_dict": model.state_dict(),
        "embedding": {k: str(v) for k, v in embedding.items() if v is not None},
        "training_subjects": [
            list(s) if isinstance(s, tuple | list) else ["", str(s)] for s in training_subjects
        ],
        "feature_mean": None if feature_mean is None else np.asarray(feature_mean, np.float32),
        "extra": dict(extra or {}),
    }
    if decoder is not None:
        state["decoder"] = {
            "config": asdict(decoder.cfg),
            "state_dict": decoder.state_dict(),
        }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model and what it was made for."""

    model: InContextHypernet
    embedding: dict
    training_subjects: list
    feature_mean: np.ndarray | None
    extra: dict = field(default_factory=dict)
    decoder: nn.Module | None = None
    path: str = ""

    def check_embedding(self, features: dict, source: str = "features") -> None:
        """Raise InputError unless ``features`` (store/layer attrs) come from the expected
        embedding model: same cache key (when both record one), model name and layer."""
        want = self.embedding
        checks = [
            ("cache_key", "features cache key"),
            ("model", "embedding model"),
            ("layer", "layer"),
        ]
        for key, what in checks:
            have = features.get(key)
            if key in want and have is not None and str(have) != want[key]:
                raise InputError(
                    f"{source}: checkpoint {self.path} was meta-trained on {what} "
                    f"{want[key]!r} (model {want.get('model', '?')!r}, layer "
                    f"{want.get('layer', '?')!r}), but the features are {have!r}; meta-train "
                    "a checkpoint on these features"
                )
        width = features.get("n_units")
        if width is not None and int(width) != self.model.cfg.embed_dim:
            raise InputError(
                f"{source}: {width} units, checkpoint {self.path} expects "
                f"{self.model.cfg.embed_dim}"
            )

    def check_held_out(self, subject, dataset=None) -> None:
        """Raise InputError when ``subject`` (of ``dataset``) is among the training subjects."""
        if subject is None:
            return
        for ds, s in self.training_subjects:
            if str(s) == str(subject) and (not ds or dataset is None or str(ds) == str(dataset)):
                raise InputError(
                    f"checkpoint {self.path} was meta-trained on subject {subject!r}"
                    f"{f' of {dataset!r}' if dataset else ''} (training subjects: "
                    f"{[s for _, s in self.training_subjects]}); few-shot encoding must use "
                    "a checkpoint trained on other subjects only"
                )


def load_checkpoint(path, map_location="cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    path = require_file(path, "in-context checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # any unreadable file
        raise InputError(f"{path}: cannot be read as a checkpoint ({err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not an in-context checkpoint (format {CHECKPOINT_FORMAT})")
    model = InContextHypernet(InContextConfig(**state["config"]))
    model.load_state_dict(state["state_dict"])
    decoder = None
    if state.get("decoder"):
        from alignment.decoding import InContextDecoder

        decoder = InContextDecoder(InContextConfig(**state["decoder"]["config"]))
        decoder.load_state_dict(state["decoder"]["state_dict"])
        decoder.eval()
    return Checkpoint(
        model=model.eval(),
        embedding=dict(state["embedding"]),
        training_subjects=[tuple(s) for s in state["training_subjects"]],
        feature_mean=state.get("feature_mean"),
        extra=dict(state.get("extra", {})),
        decoder=decoder,
        path=str(path),
    )


# --------------------------------------------------------------------------------------------
# the registered estimator


@register_encoder("incontext", inputs="pooled", experiments=("images",))
class InContextEncoder(RegressorMixin, BaseEstimator):
    """Few-shot voxelwise encoder: (w, b) of every voxel from its context, no gradient step.

    ``fit(X, Y)`` uses the rows as the context (all of them) and runs one batched forward
    pass of the meta-trained hypernetwork; ``predict`` applies y = w.x + b.

    Parameters
    ----------
    checkpoint : str or Checkpoint
        Meta-trained checkpoint (path, or a loaded one).
    batch_voxels : int or "auto"
        Voxels per forward pass (``auto``: from free memory on CUDA, 64 on the CPU).
    device : str
        ``auto`` = CUDA when present (then bfloat16 weights and flash attention).
    return_attention : bool
        Keep token 0's attention over the context images (``context_attention_``).

    Attributes
    ----------
    coef_ : ndarray (n_voxels, E)
        Weights on unit-norm (centred) embeddings.
    intercept_ : ndarray (n_voxels,)
    context_attention_ : ndarray (n_voxels, n_context), with ``return_attention``
    n_features_in_ : int
    """

    def __init__(self, checkpoint=None, batch_voxels="auto", device="auto", return_attention=False):
        self.checkpoint = checkpoint
        self.batch_voxels = batch_voxels
        self.device = device
        self.return_attention = return_attention

    # keys of an incontext encoder spec that meta-training, scaling and decoding read
    SPEC_KEYS_ELSEWHERE = (
        "model",
        "training",
        "scaling",
        "decoding",
        "models",
        "center",
        "train_voxels",
        "attention_top",
    )

    @classmethod
    def from_spec(cls, spec: dict, context: EncoderContext) -> InContextEncoder:
        """Build from a config entry; the checkpoint comes from ``context.inputs``.

        The checkpoint must expect the fold's features (embedding model, layer) and must not
        have been trained on the subject being encoded.
        """
        path = context.inputs.get("checkpoint")
        if not path:
            raise InputError(
                "encoder kind 'incontext' needs a meta-trained checkpoint "
                "(--encoder-input checkpoint=PATH)"
            )
        ckpt = load_checkpoint(path)
        ckpt.check_embedding(context.features, context.features.get("source", "features"))
        ckpt.check_held_out(getattr(context, "subject", None), getattr(context, "dataset", None))
        params = {k: v for k, v in spec.items() if k not in cls.SPEC_KEYS_ELSEWHERE}
        return cls(checkpoint=ckpt, **params)

    def _checkpoint(self) -> Checkpoint:
        if isinstance(self.checkpoint, Checkpoint):
            return self.checkpoint
        if self.checkpoint is None:
            raise ValueError("InContextEncoder needs a checkpoint")
        return load_checkpoint(self.checkpoint)

    def fit(self, X, Y):
        """Use (X, Y) as every voxel's context; returns self."""
        X = np.asarray(X, dtype=np.float32)
        Y = np.asarray(Y, dtype=np.float32)
        if Y.ndim == 1:
            Y = Y[:, None]
        if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
            raise ValueError(
                f"X (samples, features) and Y (samples, voxels): got {X.shape}, {Y.shape}"
            )
        if not (np.isfinite(X).all() and np.isfinite(Y).all()):
            raise ValueError("X and Y must be finite")
        ckpt = self._checkpoint()
        if X.shape[1] != ckpt.model.cfg.embed_dim:
            raise InputError(
                f"features have {X.shape[1]} units; checkpoint {ckpt.path} expects "
                f"{ckpt.model.cfg.embed_dim}"
            )
        self.checkpoint_ = ckpt
        Xn = normalise(X, ckpt.feature_mean)
        out = predict_weights(
            ckpt.model,
            Xn,
            Y,
            batch_voxels=self.batch_voxels,
            device=self.device,
            return_attention=self.return_attention,
        )
        self.coef_, self.intercept_ = out[0], out[1]
        if self.return_attention:
            self.context_attention_ = out[2]
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        """Predicted responses (samples, voxels)."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must be (samples, {self.n_features_in_}), got {X.shape}")
        Xn = normalise(X, self.checkpoint_.feature_mean)
        return (Xn @ self.coef_.T + self.intercept_).astype(np.float32)


def top_context_images(attention: np.ndarray, k: int = 5) -> np.ndarray:
    """Indices of the ``k`` context images each voxel's token 0 attends to most, (voxels, k)."""
    k = min(k, attention.shape[1])
    return np.argsort(-attention, axis=1)[:, :k]


def explained_variance(y_true, y_pred) -> np.ndarray:
    """1 - Var(y - y_hat) / Var(y) per column (DESIGN.md section 6)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    var = y_true.var(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - (y_true - y_pred).var(0) / np.where(var > 0, var, np.nan)


# --------------------------------------------------------------------------------------------
# test-time scaling: in-context against ridge on the same N images


def context_orders(folds, random_state: int = 0) -> list:
    """One seeded random order of each outer fold's training rows; a context of N images is
    the first N (nested contexts, shared by the scaling curve, decoding and attention)."""
    rng = np.random.default_rng(random_state)
    return [rng.permutation(train) for train, _ in folds]


def context_encoder(checkpoint, X, Y, ctx, key, *, cache: dict | None = None, device="auto"):
    """The in-context encoder fitted on rows ``ctx`` (with token 0's attention), from
    ``cache`` when it holds ``key`` (+ the voxel count) already."""
    key = (*key, Y.shape[1])
    if cache is not None and key in cache:
        return cache[key]
    enc = InContextEncoder(checkpoint=checkpoint, device=device, return_attention=True)
    enc.fit(X[ctx], Y[ctx])
    if cache is not None:
        cache[key] = enc
    return enc


def context_attention_table(
    X,
    Y,
    folds,
    checkpoint,
    *,
    ids,
    roi=None,
    voxel=None,
    k: int = 5,
    random_state: int = 0,
    device: str = "auto",
    cache: dict | None = None,
    stimuli=None,
):
    """The context images each voxel's token 0 attends to most, with the voxel's EV.

    The context is the whole training set of the first outer fold (the largest N of the
    scaling curve); the attention is the last block's, averaged over heads. The EV is that of
    the in-context encoders on the held-out images, pooled over the outer folds (full N).

    Returns
    -------
    pandas.DataFrame
        Tidy, one row per (voxel, rank): voxel (column of Y), roi, rank (0 = most attended),
        stimulus_id, attention, ev [, category, path from ``stimuli``].
    """
    import pandas as pd

    orders = context_orders(folds, random_state)
    n = min(len(train) for train, _ in folds)
    pred = np.zeros_like(Y, dtype=np.float32)
    for f, ((_, test), order) in enumerate(zip(folds, orders, strict=True)):
        enc = context_encoder(checkpoint, X, Y, order[:n], (n, f), cache=cache, device=device)
        pred[test] = enc.predict(X[test])
        if f == 0:
            ctx, attention = order[:n], enc.context_attention_
    tested = np.concatenate([test for _, test in folds])
    ev = explained_variance(Y[tested], pred[tested])
    top = top_context_images(attention, k)
    n_vox = Y.shape[1]
    table = pd.DataFrame(
        {
            "voxel": np.repeat(
                np.arange(n_vox) if voxel is None else np.asarray(voxel), top.shape[1]
            ),
            "roi": np.repeat(
                np.asarray(roi).astype(str) if roi is not None else "all", top.shape[1]
            )
            if roi is not None
            else "all",
            "rank": np.tile(np.arange(top.shape[1]), n_vox),
            "stimulus_id": np.asarray(ids)[ctx][top].ravel(),
            "attention": np.take_along_axis(attention, top, 1).ravel(),
            "uniform": 1.0 / len(ctx),
            "ev": np.repeat(ev, top.shape[1]),
        }
    )
    if stimuli is not None:
        info = stimuli.set_index("stimulus_id")
        for col in ("category", "path"):
            if col in info:
                table[col] = info[col].reindex(table["stimulus_id"]).to_numpy()
    return table


def _roi_masks(roi) -> dict:
    """Voxel groups summarised by the scaling and decoding tables."""
    if roi is None:
        return {"all": slice(None)}
    roi = np.asarray(roi).astype(str)
    out = {"all": np.ones(len(roi), bool)}
    in_roi = roi != "none"
    if in_roi.any() and not in_roi.all():
        out["all ROIs"] = in_roi
    for name in dict.fromkeys(roi[in_roi].tolist()):
        out[name] = roi == name
    return out


def scaling_curve(
    X: np.ndarray,
    Y: np.ndarray,
    folds,
    checkpoint: Checkpoint,
    n_context=(10, 30, 100, 300, 1000),
    *,
    ridge_spec: dict | None = None,
    inner_folds: int = 3,
    roi=None,
    random_state: int = 0,
    device: str = "auto",
    cache: dict | None = None,
):
    """Explained variance of in-context encoding and of ridge fitted on the same N images.

    For every outer fold, N of its training images (nested random subsets, one seeded order
    per fold) are the context of the in-context encoder and the training set of ridge; both
    predict the fold's test images. EV (1 - Var(y - y_hat) / Var(y)) and r per voxel are
    computed on the predictions pooled over the outer folds. N runs over ``n_context`` values
    the smallest training fold allows, plus the whole training fold.

    ``cache`` (a dict) keeps the in-context fits by (N, fold, n_voxels) for
    :func:`~alignment.decoding.decoding_curve` and :func:`context_attention_table` on the same
    data: same ``random_state``, same contexts, no second forward pass.

    Returns
    -------
    pandas.DataFrame
        Tidy: encoder, n_context, roi, n_voxels, ev_mean, ev_median, r_mean.
    """
    import pandas as pd

    from alignment.encoders.ridge import RidgeEncoder
    from alignment.metrics.correlation import pearson_r

    n_train = min(len(train) for train, _ in folds)
    sizes = sorted({int(n) for n in n_context if 2 <= n <= n_train} | {n_train})
    orders = context_orders(folds, random_state)
    preds = {
        (enc, n): np.zeros_like(Y, dtype=np.float32)
        for enc in ("incontext", "ridge")
        for n in sizes
    }
    for n in tqdm(sizes, desc="context sizes", unit="N"):
        for f, ((_, test), order) in enumerate(zip(folds, orders, strict=True)):
            ctx = order[:n]
            enc = context_encoder(checkpoint, X, Y, ctx, (n, f), cache=cache, device=device)
            preds[("incontext", n)][test] = enc.predict(X[test])
            ridge = RidgeEncoder(**(ridge_spec or {}), cv=max(2, min(inner_folds, n // 2)))
            preds[("ridge", n)][test] = ridge.fit(X[ctx], Y[ctx]).predict(X[test])
    tested = np.concatenate([test for _, test in folds])
    rows = []
    masks = _roi_masks(roi)
    for (enc, n), pred in preds.items():
        ev = explained_variance(Y[tested], pred[tested])
        r = pearson_r(Y[tested], pred[tested])
        for name, mask in masks.items():
            rows.append(
                {
                    "encoder": enc,
                    "n_context": n,
                    "roi": name,
                    "n_voxels": int(np.ones(len(ev), bool)[mask].sum()),
                    "ev_mean": float(np.nanmean(ev[mask])),
                    "ev_median": float(np.nanmedian(ev[mask])),
                    "r_mean": float(np.nanmean(r[mask])),
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# from files: the workflow's meta-training, scaling and query steps


def subject_data(
    responses,
    layers: dict,
    spec: dict,
    cv: dict,
    features_source="features",
    responses_source="responses",
):
    """One subject's repeat-averaged responses and one layer's features, matched by image.

    Returns a dict: ``X`` raw features (images, E), ``Y`` (images, voxels), ``folds`` (the
    outer folds of :func:`alignment.evaluation.image_design`), ``ids``, ``layer`` (name),
    ``roi``, ``hemi``, ``vertex``, ``subject``, ``dataset``.
    """
    from alignment.encoders.registry import select_layers
    from alignment.evaluation import image_design, image_features_matrix

    chosen = select_layers({"kind": "incontext", **spec}, layers, features_source)
    if len(chosen) != 1:
        raise InputError(
            f"{features_source}: an incontext encoder runs on one layer; its spec selects "
            f"{len(chosen)} ({list(chosen)[:5]}...); set `layers: [name]`"
        )
    ((name, layer),) = chosen.items()
    design, ids = image_design(responses, cv)
    X = image_features_matrix(layer, ids, features_source, responses_source)
    coords = {c: responses[c].values for c in ("roi", "hemi", "vertex") if c in responses.coords}
    return {
        "X": X,
        "Y": design.Y.astype(np.float32),
        "folds": design.folds,
        "ids": ids,
        "layer": name,
        "layer_attrs": dict(layer.attrs),
        **coords,
        "subject": responses.attrs.get("subject"),
        "dataset": responses.attrs.get("dataset"),
    }


def meta_train_checkpoint(
    responses_list,
    layers: dict,
    features_attrs: dict,
    spec: dict,
    cv: dict,
    out,
    *,
    heldout: str,
    sources=None,
    features_source: str = "features",
    device: str = "auto",
    random_state: int = 0,
) -> dict:
    """Meta-train on the training subjects' responses and write a checkpoint.

    Leave-one-subject-out: raises InputError if any responses belong to ``heldout``. With a
    ``decoding`` section in the spec, also meta-trains the in-context decoder (BrainCoDec).
    Returns the training info (loss history, tasks/s).
    """
    sources = sources or [f"responses[{i}]" for i in range(len(responses_list))]
    data = []
    for resp, src in zip(responses_list, sources, strict=True):
        if str(resp.attrs.get("subject")) == str(heldout):
            raise InputError(
                f"{src}: subject {heldout!r} is the held-out subject; meta-training for it must "
                "use the other subjects only"
            )
        data.append(subject_data(resp, layers, spec, cv, features_source, src))
    if not data:
        raise InputError(f"no training subjects left after holding out {heldout!r}")
    name = data[0]["layer"]
    all_x = np.asarray(layers[name].values, dtype=np.float32)
    mean = all_x.mean(0) if spec.get("center", True) else None
    X_list = [normalise(d["X"], mean) for d in data]
    Y_list = [_training_voxels(d, spec.get("train_voxels", "roi")) for d in data]
    model_cfg = dict(spec.get("model", {}))
    model, info = meta_train(
        X_list,
        Y_list,
        model_cfg,
        spec.get("training", {}),
        device=device,
        random_state=random_state,
    )
    decoder = None
    extra = {
        "steps": int(spec.get("training", {}).get("steps", TrainingConfig.steps)),
        "tasks_per_s": info["tasks_per_s"],
        "final_loss": info["history"][-1]["loss"],
    }
    if spec.get("decoding"):
        from alignment.decoding import meta_train_decoder

        dec = dict(spec["decoding"])
        decoder, dinfo = meta_train_decoder(
            model,
            X_list,
            Y_list,
            {**model_cfg, **dec.get("model", {})},
            {**spec.get("training", {}), **dec.get("training", {})},
            voxel_range=dec.get("voxel_range", (8, 256)),
            n_context=dec.get("context", 100),
            device=device,
            random_state=random_state,
        )
        extra["decoder_lambda"] = dinfo["lambda"]
        info["history"] += dinfo["history"]
    embedding = {
        "model": features_attrs.get("model"),
        "cache_key": features_attrs.get("cache_key"),
        "source": features_attrs.get("model_source"),
        "layer": name,
    }
    save_checkpoint(
        out,
        model,
        embedding=embedding,
        training_subjects=[(d["dataset"] or "", d["subject"]) for d in data],
        feature_mean=mean,
        extra={**extra, "heldout": heldout},
        decoder=decoder,
    )
    return info


def _training_voxels(d: dict, which: str) -> np.ndarray:
    """A training subject's responses on the voxels meta-training uses: ``roi`` = the voxels
    in an ROI when the responses label any (like the paper's visual-cortex mask; voxels of no
    ROI would teach the prior that most voxels are noise), else every voxel; ``all``."""
    if which not in ("roi", "all"):
        raise InputError(f"train_voxels must be 'roi' or 'all', got {which!r}")
    roi = d.get("roi")
    if which == "roi" and roi is not None:
        in_roi = np.asarray(roi).astype(str) != "none"
        if in_roi.any():
            return d["Y"][:, in_roi]
    return d["Y"]


def describe_checkpoint(ckpt: Checkpoint) -> str:
    """One line on the model's size and training, for reports."""
    cfg = ckpt.model.cfg
    n_params = sum(p.numel() for p in ckpt.model.parameters())
    subjects = ", ".join(str(s) for _, s in ckpt.training_subjects)
    steps = ckpt.extra.get("steps")
    trained = f"{steps} meta-training steps" if steps else "meta-trained"
    return (
        f"width {cfg.width}, {cfg.depth} block(s), {cfg.heads} heads, "
        f"{n_params / 1e3:.0f}k parameters, {trained} on subject(s) {subjects}"
    )


def text_embedding(source: str, texts: list[str]) -> np.ndarray:
    """Text embeddings of a CLIP model (``CLIPModel.get_text_features``), (n_texts, E)."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(source).eval()
    tok = AutoTokenizer.from_pretrained(source)
    batch = tok(list(texts), padding=True, truncation=True, return_tensors="pt")
    batch.pop("token_type_ids", None)
    with torch.no_grad():
        out = model.get_text_features(**batch)
    out = getattr(out, "pooler_output", out)  # a tensor, or an output object in newer versions
    return np.asarray(out, dtype=np.float32)


def selectivity_map(
    coef: np.ndarray, intercept: np.ndarray, t: np.ndarray, feature_mean=None
) -> np.ndarray:
    """w . t + b per voxel for a (text) embedding t, normalised like the image embeddings."""
    tn = normalise(np.asarray(t, np.float32).reshape(1, -1), feature_mean)[0]
    return coef @ tn + intercept
