"""Benchmark of the in-context encoder (BraInCoRL) and decoder (BrainCoDec).

``--scale small`` (default, CPU): meta-train a small model on three synthetic subjects (voxel
weights from a shared low-rank-plus-noise Gaussian prior, ``synthetic_voxels.FEW_SHOT_PRIOR`` as
in the tests) and measure, on a fourth, explained
variance against the number of context images N for the in-context encoder, cross-validated
ridge on the same images, the Bayes posterior mean under the true prior and the oracle; and the
top-1 retrieval of the in-context decoder and the analytic inversion.

``--scale full --device cuda``: the paper-sized model (20 blocks, 10 heads, E=512 -> D=560):
seconds to produce (w, b) for 40,000 voxels from 1,000 context images (target < 10 s), with
the forward's FLOP count and the TFLOP/s achieved (bf16 weights, flash attention, voxel batch
from free memory), and meta-training throughput in voxel-tasks per second (context 30-500, 100
queries, bf16 autocast).

Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from alignment.data import synthetic_voxels as syn
from alignment.decoding import (
    analytic_inversion,
    decode,
    meta_train_decoder,
    retrieval_accuracy,
    select_voxels,
)
from alignment.encoders import incontext as ic
from alignment.encoders.ridge import RidgeEncoder


def small(args) -> dict:
    prior = syn.make_prior(**syn.FEW_SHOT_PRIOR, seed=0)  # the tests' setup
    subjects = [syn.sample_subject(prior, 400, 1500, seed=s) for s in range(3)]
    X_list, Y_list = [s[0] for s in subjects], [s[1] for s in subjects]
    model_cfg = {"width": 48, "depth": 2, "heads": 4, "ffn_hidden": 96, "dropout": 0.0}
    training = {
        "steps": args.steps,
        "batch_size": 48,
        "context_range": (8, 64),
        "n_query": 32,
        "lr": 2e-3,
        "weight_decay": 0.01,
        "warmup": 30,
    }
    t0 = time.perf_counter()
    model, info = ic.meta_train(X_list, Y_list, model_cfg, training, device=args.device)
    train_s = time.perf_counter() - t0
    decoder, dinfo = meta_train_decoder(
        model,
        X_list,
        Y_list,
        model_cfg,
        {**training, "steps": args.steps // 2, "batch_size": 64},
        voxel_range=(4, 64),
        n_context=200,
        device=args.device,
    )
    X, Y, _, signal = syn.sample_subject(prior, 1400, 400, seed=99)
    test = np.arange(1000, 1400)
    curves = {k: [] for k in ("incontext", "ridge", "bayes", "oracle")}
    ns = [n for n in (10, 30, 100, 300, 1000) if n <= 1000]
    for n in ns:
        ctx = np.arange(n)
        W, b = ic.predict_weights(model, X[ctx], Y[ctx], device=args.device)
        ridge = RidgeEncoder(alphas=np.logspace(-2, 4, 13), cv=5).fit(X[ctx], Y[ctx])
        theta = syn.bayes_weights(prior, X[ctx], Y[ctx])
        preds = {
            "incontext": X[test] @ W.T + b,
            "ridge": ridge.predict(X[test]),
            "bayes": X[test] @ theta[:, :-1].T + theta[:, -1],
            "oracle": signal[test],
        }
        for k, p in preds.items():
            curves[k].append(round(float(np.mean(ic.explained_variance(Y[test], p))), 4))
    ctx, cand = np.arange(200), np.arange(1000, 1100)
    W, b = ic.predict_weights(model, X[ctx], Y[ctx], device=args.device)
    decoding = {"n_candidates": len(cand), "incontext_top1": [], "analytic_top1": []}
    vox_counts = [8, 16, 64, 400]
    for n_vox in vox_counts:
        sel = select_voxels(W, X[ctx], n_vox)
        beta = Y[cand][:, sel]
        pred = decode(decoder, W[sel], b[sel], beta, args.device)
        decoding["incontext_top1"].append(retrieval_accuracy(pred, X[cand])["top1"])
        ana = analytic_inversion(W[sel], b[sel], beta, dinfo["lambda"])
        decoding["analytic_top1"].append(retrieval_accuracy(ana, X[cand])["top1"])
    decoding["n_voxels"] = vox_counts
    return {
        "scale": "small",
        "device": str(ic.resolve_device(args.device)),
        "n_context": ns,
        "ev": curves,
        "fraction_of_bayes": [
            round(a / b, 3) for a, b in zip(curves["incontext"], curves["bayes"], strict=True)
        ],
        "decoding": decoding,
        "meta_train_s": round(train_s, 2),
        "meta_train_tasks_per_s": round(info["tasks_per_s"], 1),
        "steps": args.steps,
    }


def forward_flops(cfg: ic.InContextConfig, n_voxels: int, n_context: int) -> float:
    """Multiply-adds x 2 of one (w, b) pass: tokenizer, full blocks, token-0-only last block."""
    e, d, h = cfg.embed_dim, cfg.width, cfg.ffn_hidden
    s = n_context + cfg.n_registers
    tokenizer = n_context * ((e + 1) * 2 * d + 2 * d * d + e * d / n_voxels)
    linear = 3 * d * d + d * d + 3 * d * h  # qkv, proj, SwiGLU (2h in, h out)
    attention = 2 * s * d  # scores and values, per query token
    full_blocks = (cfg.depth - 1) * s * (linear + attention)
    last = s * 3 * d * d + (d * d + 3 * d * h + attention)
    head = d * 2 * d + 2 * d * (e + 1) + d * (e + 1)
    return 2.0 * n_voxels * (tokenizer + full_blocks + last + head)


def full(args) -> dict:
    dev = ic.resolve_device(args.device)
    # paper: D=560, 20 blocks, 10 heads, SwiGLU 2x2048 (--depth only for a quick smoke test)
    cfg = ic.InContextConfig(embed_dim=512, depth=args.depth)
    model = ic.InContextHypernet(cfg)
    # an untrained head starts at (w, b) = 0: random weights make the output checks meaningful
    for lin in (model.head.main[-1], model.head.bypass):
        torch.nn.init.normal_(lin.weight, std=0.02)
    n_params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.context, 512)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = rng.standard_normal((args.context, args.voxels)).astype(np.float32)
    batch = args.batch_voxels if args.batch_voxels == "auto" else int(args.batch_voxels)
    dtype = None if args.fp32 else "auto"  # auto: bf16 weights + flash attention on CUDA
    # warm-up (kernels, allocator) on a few voxels, then the timed pass over all of them
    ic.predict_weights(model, X, Y[:, :64], device=dev, dtype=dtype, batch_voxels=batch)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    W, b = ic.predict_weights(model, X, Y, device=dev, dtype=dtype, batch_voxels=batch)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wb_s = time.perf_counter() - t0
    flops = forward_flops(cfg, args.voxels, args.context)
    compiled_s = None
    if args.compile:
        # torch.compile'd network: a first full pass compiles (each batch shape), the second is
        # timed
        kw = {"device": dev, "dtype": dtype, "batch_voxels": batch, "compile": True}
        ic.predict_weights(model, X, Y, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        Wc, _ = ic.predict_weights(model, X, Y, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        compiled_s = round(time.perf_counter() - t0, 3)
        compiled_err = float(np.abs(Wc - W).max() / max(np.abs(W).max(), 1e-12))
    # meta-training throughput (paper settings: context 30-500, 100 queries), bf16 autocast
    training = ic.TrainingConfig(
        steps=args.train_steps, batch_size=args.train_batch, context_range=(30, 500), n_query=100
    )
    Xs = [X, X]
    k = min(2000, args.voxels)
    Ys = [Y[:, :k], Y[:, -k:]]
    amp = torch.bfloat16 if dev.type == "cuda" and not args.fp32 else None
    with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        _, info = ic.meta_train(Xs, Ys, cfg, training, device=str(dev), model=model)
    return {
        "scale": "full",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": "float32" if args.fp32 or dev.type != "cuda" else "bfloat16",
        "params": n_params,
        "depth": args.depth,
        "voxels": args.voxels,
        "context": args.context,
        "batch_voxels": batch,
        "weights_s": round(wb_s, 3),
        "weights_compiled_s": compiled_s,
        "compiled_rel_diff": round(compiled_err, 4) if compiled_s is not None else None,
        "target_s": 10.0,
        "lower_bound_s_at_989_tflops": round(flops / 989e12, 2),
        "forward_tflop": round(flops / 1e12, 1),
        "achieved_tflops": round(flops / wb_s / 1e12, 1),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated(dev) / 1e9, 1)
        if dev.type == "cuda"
        else None,
        "finite": bool(np.isfinite(W).all() and np.isfinite(b).all()),
        "meta_train_tasks_per_s": round(info["tasks_per_s"], 1),
        "train_batch": args.train_batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["small", "full"], default="small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=800, help="meta-training steps (small)")
    parser.add_argument("--voxels", type=int, default=40000)
    parser.add_argument("--context", type=int, default=1000, help="context images (full)")
    parser.add_argument("--batch-voxels", default="auto", help="voxels per pass, or auto")
    parser.add_argument("--fp32", action="store_true", help="full: float32 instead of bf16")
    parser.add_argument("--compile", action="store_true", help="full: also time torch.compile")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--depth", type=int, default=20, help="blocks of the full model")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = small(args) if args.scale == "small" else full(args)
    print(json.dumps({"benchmark": "incontext", **result}))


if __name__ == "__main__":
    main()
