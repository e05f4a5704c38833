"""In-context decoding (BrainCoDec): from one fMRI pattern and the voxels' in-context encoders,
predict the image embedding, and retrieve the image among candidates (DESIGN.md section 6).

A second transformer reads one token per voxel, ``[w_v, b_v, beta_v]`` (the voxel's in-context
encoder and its response to the image; any number of voxels, no positional encoding), and its
token 0 gives a correction added to the analytic inversion of the linear encoders,
x_hat = normalise((W^T W + lambda I)^-1 W^T (beta - b)), which is also the baseline. Both are
scored by top-k retrieval among candidate images (:func:`retrieval_accuracy`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from alignment.encoders.incontext import (
    Block,
    InContextConfig,
    ResidualMLP,
    TrainingConfig,
    _lr_factor,
    predict_weights,
    resolve_device,
)
from alignment.io import InputError

log = logging.getLogger(__name__)

#: Grid for the analytic inversion's lambda (chosen on the training subjects).
LAMBDAS = np.logspace(-3, 3, 13)


class InContextDecoder(nn.Module):
    """Voxel tokens [w_v, b_v, beta_v] (B, V, E+2) -> unit-norm image embedding (B, E).

    The embedding is normalise(analytic + head(token 0)): the analytic inversion with the
    buffer ``lam`` (set by :func:`meta_train_decoder`) plus a learned correction.
    """

    def __init__(self, cfg: InContextConfig):
        super().__init__()
        self.cfg = cfg
        e, d = cfg.embed_dim, cfg.width
        self.tokenizer = ResidualMLP(e + 2, 2 * d, d, cfg.dropout)
        self.registers = nn.Parameter(torch.randn(cfg.n_registers, d) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        self.head = ResidualMLP(d, 2 * d, e, cfg.dropout)
        # the output adds the head's correction to the analytic inversion (its lambda chosen by
        # meta-training, stored with the weights): a few blocks over voxel tokens cannot invert
        # W^T W + lambda I, which is what makes the inversion good with few voxels. The head
        # starts at zero, so an untrained decoder is the inversion; meta-training learns what
        # the prior over images adds to it
        self.register_buffer("lam", torch.tensor(1.0))
        for lin in (self.head.main[-1], self.head.bypass):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, W, b, beta):
        """W (B, V, E) weights (units of sqrt(E) x, as the encoder emits), b and beta (B, V)."""
        w = W / math.sqrt(self.cfg.embed_dim)
        tokens = self.tokenizer(torch.cat([w, b[..., None], beta[..., None]], dim=-1))
        h = torch.cat([self.registers.unsqueeze(0).expand(len(tokens), -1, -1), tokens], dim=1)
        for i, block in enumerate(self.blocks):
            h, _ = block(h, first_only=i == len(self.blocks) - 1)
        gram = W.transpose(1, 2) @ W + self.lam * torch.eye(W.shape[-1], device=W.device)
        rhs = torch.einsum("bve,bv->be", W, beta - b)
        analytic = F.normalize(torch.linalg.solve(gram, rhs), dim=-1)
        return F.normalize(analytic + self.head(self.norm(h[:, 0])), dim=-1)


def analytic_inversion(W: np.ndarray, b: np.ndarray, beta: np.ndarray, lam: float) -> np.ndarray:
    """x_hat = normalise((W^T W + lam I)^-1 W^T (beta - b)) for every row of ``beta``.

    Parameters
    ----------
    W : ndarray (n_voxels, E)
    b : ndarray (n_voxels,)
    beta : ndarray (n_images, n_voxels)
    lam : float
    """
    W = np.asarray(W, dtype=np.float64)
    A = W.T @ W + lam * np.eye(W.shape[1])
    x = np.linalg.solve(A, W.T @ (np.asarray(beta, np.float64) - b).T).T
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def retrieval_accuracy(pred: np.ndarray, candidates: np.ndarray, ks=(1, 5)) -> dict:
    """Top-k retrieval: row i of ``pred`` should pick row i of ``candidates`` (cosine).

    Returns ``{"top1": ..., "top5": ..., "chance_top1": 1/n, ...}``.
    """
    p = pred / np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-12)
    c = candidates / np.maximum(np.linalg.norm(candidates, axis=1, keepdims=True), 1e-12)
    sim = p @ c.T
    rank = (sim > np.diag(sim)[:, None]).sum(1)  # number of candidates scored above the truth
    n = len(c)
    out = {}
    for k in ks:
        out[f"top{k}"] = float((rank < k).mean())
        out[f"chance_top{k}"] = min(k, n) / n
    return out


def choose_lambda(W, b, beta, X, lambdas=LAMBDAS) -> float:
    """The lambda of the analytic inversion with the best mean cosine to the true embeddings."""
    best, best_cos = float(lambdas[0]), -np.inf
    for lam in lambdas:
        cos = (analytic_inversion(W, b, beta, lam) * X).sum(1).mean()
        if cos > best_cos:
            best, best_cos = float(lam), cos
    return best


def _decoder_tasks(encoder, X_list, Y_list, n_context: int, device, rng):
    """Per training subject: in-context (W, b) from a random context, the other images, and
    the voxels ranked as :func:`select_voxels` ranks them on that context."""
    tasks = []
    for X, Y in zip(X_list, Y_list, strict=True):
        order = rng.permutation(len(X))
        n_ctx = min(n_context, len(X) - 2)
        ctx, rest = order[:n_ctx], order[n_ctx:]
        W, b = predict_weights(encoder, X[ctx], Y[ctx], device=device)
        tasks.append((W, b, X[rest], Y[rest], select_voxels(W, X[ctx], len(W))))
    return tasks


def meta_train_decoder(
    encoder,
    X_list,
    Y_list,
    model_config: dict | InContextConfig,
    training: dict | TrainingConfig | None = None,
    *,
    voxel_range=(8, 256),
    n_context: int = 100,
    temperature: float = 0.05,
    device: str = "auto",
    random_state: int = 0,
):
    """Meta-train the in-context decoder on the training subjects.

    For each training subject, the (meta-trained, frozen) encoder gives every voxel's (w, b)
    from a random context of ``n_context`` images; each task is one of the subject's other
    images, seen through a random subset of voxels (size uniform in ``voxel_range``). The loss
    is a contrastive (InfoNCE, cosine / ``temperature``) loss against the other images of the
    batch plus the cosine distance to the true embedding.

    Returns
    -------
    decoder : InContextDecoder (CPU, eval mode)
    info : dict
        ``lambda`` (the analytic inversion's lambda chosen on the same training subjects),
        ``history``.
    """
    training = (
        training
        if isinstance(training, TrainingConfig)
        else TrainingConfig.from_dict(dict(training or {}))
    )
    X_list = [np.asarray(X, dtype=np.float32) for X in X_list]
    Y_list = [np.asarray(Y, dtype=np.float32) for Y in Y_list]
    cfg = model_config
    if not isinstance(cfg, InContextConfig):
        cfg = InContextConfig.from_dict({"embed_dim": X_list[0].shape[1], **dict(cfg)})
    lo, hi = (int(v) for v in voxel_range)
    if not 1 <= lo <= hi:
        raise InputError(f"voxel_range must be 1 <= low <= high, got {voxel_range}")
    torch.manual_seed(random_state)
    rng = np.random.default_rng(random_state)
    dev = resolve_device(device)
    tasks = _decoder_tasks(encoder, X_list, Y_list, n_context, dev, rng)
    # the analytic baseline's lambda, chosen on the same training subjects with every voxel
    lam = float(np.median([choose_lambda(W, b, Yr, Xr) for W, b, Xr, Yr, _ in tasks]))
    tensors = [tuple(torch.as_tensor(a, device=dev) for a in t) for t in tasks]
    model = InContextDecoder(cfg).to(dev).train()
    model.lam.fill_(lam)
    opt = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    steps = training.steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, steps, min(training.warmup, steps))
    )
    history = []
    for step in tqdm(range(steps), desc="decoder", unit="step", mininterval=2.0):
        s = int(rng.integers(len(tensors)))
        W, b, Xr, Yr, ranked = tensors[s]
        n_vox = W.shape[0]
        v = int(rng.integers(min(lo, n_vox), min(hi, n_vox) + 1))
        bsz = min(training.batch_size, len(Xr))
        img = torch.as_tensor(rng.choice(len(Xr), bsz, replace=False), device=dev)
        # every other step, voxel sets like the decoded ones (the best predicted on the context,
        # whose weights are larger than a random voxel's): v of the 2v best; else any v voxels
        pool = ranked[: min(2 * v, n_vox)] if step % 2 else ranked
        vox = pool[torch.rand(bsz, len(pool), device=dev).argsort(1)[:, :v]]
        pred = model(W[vox], b[vox], Yr[img[:, None], vox])
        target = Xr[img]
        logits = pred @ F.normalize(target, dim=-1).T / temperature
        labels = torch.arange(bsz, device=dev)
        loss = F.cross_entropy(logits, labels) + (1 - (pred * target).sum(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip or 1.0)
        opt.step()
        sched.step()
        history.append({"stage": "decoder", "step": step, "loss": float(loss.detach())})
    return model.cpu().eval(), {"lambda": lam, "history": history}


@torch.no_grad()
def decode(decoder: InContextDecoder, W, b, beta, device="auto", batch: int = 256) -> np.ndarray:
    """Predicted unit-norm embeddings (n_images, E) from responses ``beta`` (n_images, V)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    decoder = decoder.to(dev).eval()
    Wt = torch.as_tensor(np.asarray(W, np.float32), device=dev)
    bt = torch.as_tensor(np.asarray(b, np.float32), device=dev)
    beta = torch.as_tensor(np.asarray(beta, np.float32), device=dev)
    out = []
    for start in range(0, len(beta), batch):
        rows = beta[start : start + batch]
        n = len(rows)
        out.append(decoder(Wt.expand(n, -1, -1), bt.expand(n, -1), rows).cpu())
    return torch.cat(out).numpy()


def select_voxels(W: np.ndarray, X_context: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` voxels whose in-context encoders predict the most variance over the context
    images (uses the context only, never the decoded images)."""
    var = (X_context @ W.T).var(0)
    return np.argsort(-var)[: min(n, len(var))]


def decoding_curve(
    X: np.ndarray,
    Y: np.ndarray,
    folds,
    checkpoint,
    *,
    n_voxels=(10, 30, 100, 300, 1000),
    n_context=(30, 100, 1000),
    lam: float | None = None,
    voxel_mask: np.ndarray | None = None,
    random_state: int = 0,
    device: str = "auto",
    cache: dict | None = None,
):
    """Top-1/top-5 retrieval of each outer fold's test images from their responses.

    For every outer fold, the in-context encoder gives (w, b) of every voxel from N of the
    fold's training images; the ``n_voxels`` voxels it predicts best on those images (context
    only) are decoded, by the checkpoint's in-context decoder and by the analytic inversion;
    the candidates are the fold's test images (chance 1 / n_test). Accuracies are averaged
    over folds. ``cache``: the in-context fits of
    :func:`alignment.encoders.incontext.scaling_curve` on the same data (reused, not redone).

    Returns
    -------
    pandas.DataFrame
        Tidy: method (``incontext`` or ``analytic``), n_context, n_voxels, top1, top5,
        chance_top1, chance_top5, n_candidates.
    """
    import pandas as pd

    from alignment.encoders.incontext import context_encoder, context_orders

    # without a meta-trained decoder, the analytic inversion only (lambda chosen per fold on
    # the context images unless the checkpoint or the caller gives one)
    if lam is None and "decoder_lambda" in checkpoint.extra:
        lam = float(checkpoint.extra["decoder_lambda"])
    n_train = min(len(train) for train, _ in folds)
    ctx_sizes = sorted({int(n) for n in n_context if 2 <= n <= n_train} | {n_train})
    pool = np.flatnonzero(voxel_mask) if voxel_mask is not None else np.arange(Y.shape[1])
    vox_sizes = sorted({int(n) for n in n_voxels if 1 <= n <= len(pool)} | {len(pool)})
    orders = context_orders(folds, random_state)
    Yp = Y[:, pool]
    acc: dict = {}
    for n_ctx in ctx_sizes:
        for f, ((_, test), order) in enumerate(zip(folds, orders, strict=True)):
            ctx = order[:n_ctx]
            enc = context_encoder(checkpoint, X, Yp, ctx, (n_ctx, f), cache=cache, device=device)
            Xn_ctx = _normalised(checkpoint, X[ctx])
            Xn_test = _normalised(checkpoint, X[test])
            for n_vox in vox_sizes:
                sel = select_voxels(enc.coef_, Xn_ctx, n_vox)
                W, b, beta = enc.coef_[sel], enc.intercept_[sel], Y[test][:, pool[sel]]
                fold_lam = lam
                if fold_lam is None:
                    fold_lam = choose_lambda(W, b, Y[ctx][:, pool[sel]], Xn_ctx)
                methods = {"analytic": analytic_inversion(W, b, beta, fold_lam)}
                if checkpoint.decoder is not None:
                    methods["incontext"] = decode(checkpoint.decoder, W, b, beta, device=device)
                for method, pred in methods.items():
                    acc.setdefault((method, n_ctx, n_vox), []).append(
                        retrieval_accuracy(pred, Xn_test)
                    )
    rows = []
    for (method, n_ctx, n_vox), items in acc.items():
        mean = {k: float(np.mean([d[k] for d in items])) for k in items[0]}
        n_cand = min(len(test) for _, test in folds)
        rows.append(
            {
                "method": method,
                "n_context": n_ctx,
                "n_voxels": n_vox,
                **mean,
                "n_candidates": n_cand,
            }
        )
    return pd.DataFrame(rows)


def _normalised(checkpoint, X):
    from alignment.encoders.incontext import normalise

    return normalise(X, checkpoint.feature_mean)
