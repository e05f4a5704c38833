"""Ridge layer sweep speed: our batched sweep against himalaya RidgeCV called once per layer.

On the same seeded data and the same inner folds, fits ridge with a per-voxel alpha to every
layer of a model (1) with :func:`alignment.encoders.sweep.ridge_sweep` (all layers in one
batched program) and (2) with ``himalaya.ridge.RidgeCV``, one call per layer (the usual way),
on the same device; on the small CPU scale also (3) with scikit-learn
``RidgeCV(alpha_per_target=True)`` (its efficient leave-one-out, so its alphas may differ; only
its time is compared). Checks that our test-set r agrees with himalaya's within 1e-4 and prints
the speed ratio; on CUDA also the sweep's achieved fraction of the GPU's measured float32
matrix-multiply throughput. Prints one JSON line last.

Usage:
  python benchmarks/ridge_sweep.py                              # small CPU scale
  python benchmarks/ridge_sweep.py --scale nsd --device cuda    # NSD scale on a GPU
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from alignment.encoders.sweep import resolve_device, ridge_sweep
from alignment.folds import grouped_folds

SCALES = {
    # train, test, features, voxels, layers, alphas, inner folds
    "small": {"train": 1600, "test": 400, "features": 256, "voxels": 5000, "layers": 6},
    "nsd": {"train": 9000, "test": 1000, "features": 768, "voxels": 40000, "layers": 12},
}


def _data(s, seed=0):
    rng = np.random.default_rng(seed)
    n = s["train"] + s["test"]
    base = rng.standard_normal((n, s["features"])).astype(np.float32)
    layers = []
    for _ in range(s["layers"]):  # layers: drifting mixtures of one base, as in a network
        mix = rng.standard_normal((s["features"], s["features"])).astype(np.float32)
        base = np.tanh(base @ (mix / np.sqrt(s["features"])) + 0.5 * base)
        layers.append(base * rng.uniform(0.5, 2.0, s["features"]).astype(np.float32))
    planted = layers[s["layers"] // 2]
    w = rng.standard_normal((s["features"], s["voxels"])).astype(np.float32)
    w *= rng.uniform(0, 1, s["voxels"]).astype(np.float32) / np.sqrt(s["features"])
    Y = planted @ w + rng.standard_normal((n, s["voxels"])).astype(np.float32)
    return layers, Y


def _r(pred, y):
    pred, y = pred - pred.mean(0), y - y.mean(0)
    return (pred * y).sum(0) / np.sqrt((pred * pred).sum(0) * (y * y).sum(0))


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _ours(layers, Y, tr, alphas, cv, dev):
    _sync(dev)
    start = time.perf_counter()
    fits = ridge_sweep([X[:tr] for X in layers], Y[:tr], alphas, cv, device=dev)
    preds = [f.predict(X[tr:]) for f, X in zip(fits, layers, strict=True)]
    _sync(dev)
    return time.perf_counter() - start, preds, fits


def _himalaya(layers, Y, tr, alphas, cv, dev):
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV

    backend = set_backend("torch_cuda" if dev.type == "cuda" else "numpy")
    times, preds, best = [], [], []
    for X in layers:
        _sync(dev)
        start = time.perf_counter()
        mean, scale = X[:tr].mean(0), X[:tr].std(0)
        scale = np.where(scale > 0, scale, 1.0)
        model = RidgeCV(alphas=alphas.astype(np.float32), cv=cv, fit_intercept=True)
        model.fit(backend.asarray((X[:tr] - mean) / scale), backend.asarray(Y[:tr]))
        pred = backend.to_numpy(model.predict(backend.asarray((X[tr:] - mean) / scale)))
        _sync(dev)
        times.append(time.perf_counter() - start)
        preds.append(np.asarray(pred, dtype=np.float32))
        best.append(backend.to_numpy(model.best_alphas_))
    return times, preds, np.stack(best)


def _sklearn(layers, Y, tr, alphas):
    from sklearn.linear_model import RidgeCV

    start = time.perf_counter()
    for X in layers:
        mean, scale = X[:tr].mean(0), X[:tr].std(0)
        model = RidgeCV(alphas=alphas, alpha_per_target=True).fit((X[:tr] - mean) / scale, Y[:tr])
        model.predict((X[tr:] - mean) / scale)
    return time.perf_counter() - start


def _sweep_flops(n, p, v, n_layers, n_alphas, n_folds):
    """Multiply-adds x2 of the sweep's large products (cross-products, projections, alphas)."""
    n_val = n / n_folds
    per_layer = 2 * n * p * v  # X^T Y
    per_layer += n_folds * 2 * (n_val * p * v + 2 * p * p * v + n_alphas * p * p * v)
    per_layer += 2 * 2 * p * p * v  # refit: projection and back
    return n_layers * per_layer


def _matmul_tflops(dev, size=8192, repeats=10):
    a = torch.randn(size, size, device=dev)
    b = torch.randn(size, size, device=dev)
    a @ b
    _sync(dev)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(dev)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--voxels", type=int, help="override the scale's voxel count")
    parser.add_argument("--no-sklearn", action="store_true")
    args = parser.parse_args()
    s = dict(SCALES[args.scale])
    if args.voxels:
        s["voxels"] = args.voxels
    dev = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 products, as himalaya's
    n_alphas, n_folds = 10, 5
    alphas = np.logspace(-1, 6, n_alphas)
    layers, Y = _data(s)
    tr = s["train"]
    cv = grouped_folds(np.arange(tr), n_folds, random_state=0)
    # warm-up: CUDA context, kernels, allocator
    warm = [(np.arange(100, 200), np.arange(100)), (np.arange(100), np.arange(100, 200))]
    ridge_sweep([X[:200] for X in layers[:2]], Y[:200, :64], alphas, warm, device=dev)
    ours_s, ours_pred, fits = _ours(layers, Y, tr, alphas, cv, dev)
    hima_s, hima_pred, hima_alphas = _himalaya(layers, Y, tr, alphas, cv, dev)
    r_ours = np.stack([_r(p, Y[tr:]) for p in ours_pred])
    r_hima = np.stack([_r(p, Y[tr:]) for p in hima_pred])
    result = {
        "benchmark": "ridge_sweep",
        "scale": args.scale,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        **{k: s[k] for k in ("train", "test", "features", "voxels", "layers")},
        "alphas": n_alphas,
        "inner_folds": n_folds,
        "sweep_s": round(ours_s, 3),
        "himalaya_s": round(sum(hima_s), 3),
        "himalaya_per_layer_s": round(float(np.mean(hima_s)), 3),
        "sweep_per_layer_s": round(ours_s / s["layers"], 3),
        "speedup_vs_himalaya": round(sum(hima_s) / ours_s, 2),
        "max_abs_r_diff": float(np.abs(r_ours - r_hima).max()),
        "agree_1e-4": bool(np.abs(r_ours - r_hima).max() <= 1e-4),
        "same_alpha_fraction": float(
            np.isclose(np.stack([f.best_alphas for f in fits]), hima_alphas, rtol=1e-4).mean()
        ),
        "best_layer": int(np.argmax(np.nanmean(r_ours, 1))),
    }
    if args.scale == "small" and not args.no_sklearn:
        sk_s = _sklearn(layers, Y, tr, alphas)
        result["sklearn_ridgecv_s"] = round(sk_s, 3)
        result["speedup_vs_sklearn"] = round(sk_s / ours_s, 2)
    if dev.type == "cuda":
        flops = _sweep_flops(tr, s["features"], s["voxels"], s["layers"], n_alphas, n_folds)
        peak = _matmul_tflops(dev)
        result["sweep_tflops"] = round(flops / ours_s / 1e12, 2)
        result["matmul_tflops_measured"] = round(peak, 2)
        result["fraction_of_matmul_throughput"] = round(flops / ours_s / 1e12 / peak, 3)
    del fits
    print(json.dumps(result))


if __name__ == "__main__":
    main()
