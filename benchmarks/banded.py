"""Banded ridge on a planted two-space problem: time per fit and recovery, on each backend.

Space A (an LLM-like layer, ``--width`` units) drives half the voxels, space B (a few low-level
units) the other half, each at a known R² (0.3). One fit of :class:`BandedRidgeEncoder` per
backend (numpy on the CPU; torch_cuda where CUDA is present) on the same data and inner folds;
held-out per-space R² (himalaya's r2_score_split) checked against the truth and between
backends. Prints one JSON line last.

Usage: python benchmarks/banded.py [--samples 3000] [--width 768] [--voxels 10000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    from himalaya.backend import set_backend
    from himalaya.scoring import r2_score_split

    from alignment.encoders.banded import BandedRidgeEncoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--low", type=int, default=8)
    parser.add_argument("--voxels", type=int, default=10000)
    parser.add_argument("--n-iter", type=int, default=10)
    parser.add_argument("--solver", default="auto")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, v = args.samples, args.voxels
    A = rng.standard_normal((n, args.width)).astype(np.float32)
    B = rng.standard_normal((n, args.low)).astype(np.float32)
    half = v // 2
    signal = np.zeros((n, v), np.float32)
    for cols, F in ((slice(0, half), A), (slice(half, v), B)):
        s = F @ rng.standard_normal((F.shape[1], signal[:, cols].shape[1])).astype(np.float32)
        signal[:, cols] = s / s.std(0)
    Y = signal * np.sqrt(0.3) + rng.standard_normal((n, v)).astype(np.float32) * np.sqrt(0.7)
    X = np.concatenate([A, B], 1)
    n_train = int(0.8 * n)
    inner = [
        (np.setdiff1d(np.arange(n_train), val), val)
        for val in np.array_split(np.arange(n_train), 3)
    ]
    backends = ["numpy"]
    try:
        import torch

        if torch.cuda.is_available():
            backends.append("torch_cuda")
    except ImportError:
        pass
    out = {"samples": n, "features": [args.width, args.low], "voxels": v}
    splits = {}
    for backend in backends:
        enc = BandedRidgeEncoder(
            space_sizes=[args.width, args.low],
            alphas=np.logspace(-1, 6, 8),
            n_iter=args.n_iter,
            cv=inner,
            backend=backend,
            solver=args.solver,
            unique_variance=False,
        )
        start = time.perf_counter()
        enc.fit(X[:n_train], Y[:n_train])
        parts = enc.predict_split(X[n_train:])["split"]
        seconds = time.perf_counter() - start
        set_backend("numpy")
        test = Y[n_train:] - Y[n_train:].mean(0)
        split = np.asarray(r2_score_split(test, parts - parts.mean(1, keepdims=True)))
        splits[backend] = split
        out[f"{backend}_s"] = round(seconds, 3)
        out[f"{backend}_solver"] = enc.solver_
        out[f"{backend}_r2_A_on_A_voxels"] = round(float(split[0, :half].mean()), 4)
        out[f"{backend}_r2_B_on_B_voxels"] = round(float(split[1, half:].mean()), 4)
    out["truth_r2"] = 0.3
    if len(splits) == 2:
        out["max_abs_diff_split_r2"] = float(np.abs(splits["numpy"] - splits["torch_cuda"]).max())
        out["speedup_cuda"] = round(out["numpy_s"] / out["torch_cuda_s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
