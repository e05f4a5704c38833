"""Ridge encoder speed per himalaya backend: numpy (CPU) against torch_cuda (GPU).

Fits :class:`alignment.encoders.ridge.RidgeEncoder` (per-voxel alpha, inner CV) on seeded data of
an NSD-like size and prints one JSON line last with each backend's fit+predict time, the speed-up
of the GPU over the CPU measured in the same run, and the largest prediction difference.

Usage: python benchmarks/ridge_backends.py [--samples 4000 --features 768 --voxels 20000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from alignment.encoders.ridge import RidgeEncoder, available_backend


def _time(backend: str, X, Y, X_test, alphas, cv) -> tuple[float, np.ndarray]:
    enc = RidgeEncoder(alphas=alphas, cv=cv, backend=backend)
    enc.fit(X[:100], Y[:100, :10])  # warm-up (CUDA context, kernels)
    start = time.perf_counter()
    pred = enc.fit(X, Y).predict(X_test)
    return time.perf_counter() - start, pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--features", type=int, default=768)
    parser.add_argument("--voxels", type=int, default=20000)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.samples + args.test
    X = rng.standard_normal((n, args.features)).astype(np.float32)
    W = rng.standard_normal((args.features, args.voxels)).astype(np.float32) / np.sqrt(
        args.features
    )
    Y = X @ W + rng.standard_normal((n, args.voxels)).astype(np.float32)
    alphas = np.logspace(-1, 6, 8)
    result = {
        "benchmark": "ridge_backends",
        "samples": args.samples,
        "features": args.features,
        "voxels": args.voxels,
        "alphas": len(alphas),
        "inner_cv": 5,
    }
    cpu_s, cpu_pred = _time(
        "numpy", X[: args.samples], Y[: args.samples], X[args.samples :], alphas, 5
    )
    result["numpy_s"] = round(cpu_s, 2)
    if available_backend("auto") == "torch_cuda":
        gpu_s, gpu_pred = _time(
            "torch_cuda", X[: args.samples], Y[: args.samples], X[args.samples :], alphas, 5
        )
        result["torch_cuda_s"] = round(gpu_s, 2)
        result["speedup_gpu_over_cpu"] = round(cpu_s / gpu_s, 1)
        result["max_abs_prediction_diff"] = float(np.abs(gpu_pred - cpu_pred).max())
    else:
        result["torch_cuda_s"] = None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
