"""Ridge layer sweep speed: our batched sweep against himalaya RidgeCV called once per layer.

On the same seeded data and the same inner folds, fits ridge with a per-voxel alpha to every
layer of a model (1) with :func:`alignment.encoders.sweep.ridge_sweep` (all layers in one
batched program) and (2) with ``himalaya.ridge.RidgeCV``, one call per layer (the usual way),
on the same device; on the small CPU scale also (3) with scikit-learn
``RidgeCV(alphas, alpha_per_target=True)``, its default: efficient leave-one-out (GCV, mode
"cov": one eigendecomposition of X^T X, in float64), so its folds and hence its alphas differ
and only its time is compared. Same alphas for all three.

Agreement with himalaya: max |delta r| on the test set over all voxels and over the voxels
whose chosen alpha agrees, and the alpha-agreement fraction. Where the alphas differ (near-ties
of the inner-CV score), himalaya is rerun in float64 on those voxels to say which of the two
picked the alpha that exact arithmetic picks. Also prints the sweep's FLOP count
(:func:`alignment.encoders.sweep.sweep_flops`), its achieved TFLOP/s and the fraction of a
float32 matrix multiply measured in the same run, and the sweep's time per phase (a second,
synchronised run). Prints one JSON line last.

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

from alignment.encoders.sweep import resolve_device, ridge_sweep, sweep_flops
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


def _ours(layers, Y, tr, alphas, cv, dev, **kwargs):
    _sync(dev)
    start = time.perf_counter()
    fits = ridge_sweep([X[:tr] for X in layers], Y[:tr], alphas, cv, device=dev, **kwargs)
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
    preds = []
    for X in layers:
        mean, scale = X[:tr].mean(0), X[:tr].std(0)
        model = RidgeCV(alphas=alphas, alpha_per_target=True).fit((X[:tr] - mean) / scale, Y[:tr])
        preds.append(model.predict((X[tr:] - mean) / scale))
    return time.perf_counter() - start, preds


def _referee(layers, Y, tr, alphas, cv, ours, theirs, limit=2000):
    """On voxels where the two alpha choices differ: which one float64 himalaya (numpy) picks."""
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV

    backend = set_backend("numpy")
    ours_right = theirs_right = n = 0
    for i, X in enumerate(layers):
        flip = np.flatnonzero(~np.isclose(ours[i], theirs[i], rtol=1e-4))[:limit]
        if not len(flip):
            continue
        mean, scale = X[:tr].mean(0), X[:tr].std(0)
        scale = np.where(scale > 0, scale, 1.0)
        Xs = ((X[:tr] - mean) / scale).astype(np.float64)
        model = RidgeCV(alphas=alphas, cv=cv, fit_intercept=True)
        model.fit(Xs, Y[:tr, flip].astype(np.float64))
        exact = backend.to_numpy(model.best_alphas_)
        ours_right += int(np.isclose(ours[i][flip], exact, rtol=1e-4).sum())
        theirs_right += int(np.isclose(theirs[i][flip], exact, rtol=1e-4).sum())
        n += len(flip)
    return {
        "voxels": n,
        "sweep_matches_float64": ours_right,
        "himalaya_matches_float64": theirs_right,
    }


def _matmul_tflops(dev, size=8192, repeats=10):
    if dev.type == "cpu":
        size, repeats = 2048, 3
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
    parser.add_argument("--no-phases", action="store_true", help="skip the synchronised rerun")
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
    # warm-up: CUDA context, kernels, allocator, and the (once per process) choice of where the
    # eigendecompositions of this width run
    m = min(tr, 4 * s["features"])
    warm = grouped_folds(np.arange(m), 2, random_state=0)
    ridge_sweep([X[:m] for X in layers[:2]], Y[:m, :64], alphas, warm, device=dev)
    ours_s, ours_pred, fits = _ours(layers, Y, tr, alphas, cv, dev)
    ours_alphas = np.stack([f.best_alphas for f in fits])
    del fits
    phases = {}
    if not args.no_phases:
        _ours(layers, Y, tr, alphas, cv, dev, timings=phases)
    hima_s, hima_pred, hima_alphas = _himalaya(layers, Y, tr, alphas, cv, dev)
    r_ours = np.stack([_r(p, Y[tr:]) for p in ours_pred])
    r_hima = np.stack([_r(p, Y[tr:]) for p in hima_pred])
    same = np.isclose(ours_alphas, hima_alphas, rtol=1e-4)
    diff = np.abs(r_ours - r_hima)
    flops = sweep_flops(tr, s["features"], s["voxels"], s["layers"], n_alphas, cv, n_test=s["test"])
    peak = _matmul_tflops(dev)
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
        "max_abs_r_diff": float(diff.max()),
        "max_abs_r_diff_same_alpha": float(diff[same].max()) if same.any() else None,
        "agree_1e-4": bool(diff.max() <= 1e-4),
        "agree_1e-4_same_alpha": bool(diff[same].max() <= 1e-4) if same.any() else None,
        "same_alpha_fraction": float(same.mean()),
        "alpha_flips": int((~same).sum()),
        "best_layer": int(np.argmax(np.nanmean(r_ours, 1))),
        "sweep_gflop_float32": round(flops["float32"] / 1e9, 1),
        "sweep_gflop_float64": round(flops["float64"] / 1e9, 1),
        "sweep_gflop_by_part": {
            k: round(flops[k] / 1e9, 1)
            for k in (
                "cross_products",
                "projections",
                "validation_quad",
                "refit",
                "test_predictions",
            )
        },
        "sweep_tflops": round(flops["float32"] / ours_s / 1e12, 3),
        "matmul_tflops_measured": round(peak, 3),
        "fraction_of_matmul_throughput": round(flops["float32"] / ours_s / 1e12 / peak, 3),
        "sweep_phases_s": {k: round(x, 3) for k, x in phases.items()},
    }
    if (~same).any():
        result["alpha_flips_referee"] = _referee(
            layers, Y, tr, alphas, cv, ours_alphas, hima_alphas
        )
    if dev.type == "cuda" and not args.no_phases:
        from alignment.encoders import sweep as sweep_module

        result["eigh_device_auto"] = {
            str(k[1]): str(d) for k, d in sweep_module._EIGH_DEVICE.items()
        }
        for where in ("cpu", "cuda"):
            t, _, _ = _ours(layers, Y, tr, alphas, cv, dev, decomp_device=where)
            result[f"sweep_s_eigh_on_{where}"] = round(t, 3)
    if args.scale == "small" and not args.no_sklearn:
        sk_s, sk_pred = _sklearn(layers, Y, tr, alphas)
        r_sk = np.stack([_r(p, Y[tr:]) for p in sk_pred])
        result["sklearn_ridgecv_s"] = round(sk_s, 3)
        result["sklearn_method"] = "RidgeCV(alpha_per_target=True): efficient LOO (GCV), float64"
        result["speedup_vs_sklearn"] = round(sk_s / ours_s, 2)
        result["sklearn_mean_r_minus_sweep_mean_r"] = round(float(r_sk.mean() - r_ours.mean()), 5)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
