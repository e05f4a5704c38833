"""Attention-routing encoder: synthetic validation figures, or training speed at NSD scale.

``--scale synthetic`` (default, CPU): patch tokens with planted category blobs and three ROIs
(:func:`alignment.encoders.routing.synthetic_routing_data`); fits the routing encoder with and
without positional encodings and ridge on flattened tokens; reports the content query's
attention mass in the blob, the retinotopic query's mass in its quadrant and r per ROI.

``--scale nsd --device cuda``: seconds per training epoch at NSD scale (9,000 images, 31x31
tokens of width 768, 20,000 vertices per hemisphere, 24 ROIs + rest = 25 queries each, 16
heads, FFN 1024, batch 32), measured as the wall time of full training steps (forward, MSE,
backward, gradient clipping, AdamW) over every image, with tokens and responses resident on the
GPU, after warm-up, synchronised. Target: under 10 s per epoch.

Prints one JSON line last.

Usage:
    python benchmarks/routing.py
    python benchmarks/routing.py --scale nsd --device cuda [--precision bf16 fp32]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _r(y, p):
    y, p = y - y.mean(0), p - p.mean(0)
    return (y * p).sum(0) / np.sqrt((y * y).sum(0) * (p * p).sum(0))


def synthetic(args) -> dict:
    from alignment.encoders.ridge import RidgeEncoder
    from alignment.encoders.routing import RoutingEncoder, quadrant_mask, synthetic_routing_data

    d = synthetic_routing_data(n_images=560, strength=1.5, noise=0.3, random_state=args.seed)
    tr, te = np.arange(420), np.arange(420, 560)
    kw = {"roi": d["roi"], "hemi": d["hemi"], "token_grid": d["grid"], "n_heads": 1,
          "width": 32, "ffn_dim": 128, "batch_size": 16, "lr": 3e-3, "max_epochs": 30,
          "patience": 6, "cv": 4, "device": args.device, "verbose": False}  # fmt: skip
    out = {"scale": "synthetic", "n_images": 560, "grid": list(d["grid"]), "width": 64}
    r = {}
    for name, positional in (("routing", True), ("routing_no_pos", False)):
        start = time.perf_counter()
        enc = RoutingEncoder(positional=positional, **kw).fit(d["X"][tr], d["Y"][tr])
        out[f"{name}_fit_s"] = round(time.perf_counter() - start, 2)
        r[name] = _r(d["Y"][te], enc.predict(d["X"][te]))
        if positional:
            att = enc.attention(d["X"][te])
            cat0 = d["category"][te] == 0
            blob = d["blob"][te]
            for hemi in ("left", "right"):
                q = enc.layout_.labels.index((hemi, "content"))
                mass = (att[:, q] * blob).sum((1, 2))[cat0]
                out[f"content_{hemi}_blob_mass"] = round(float(mass.mean()), 3)
            q = enc.layout_.labels.index(("left", "retinotopic"))
            inside = att[:, q][:, quadrant_mask(d["grid"], "upper-left")].sum(1)
            out["retinotopic_quadrant_mass"] = round(float(inside.mean()), 3)
            out["retinotopic_quadrant_mass_min"] = round(float(inside.min()), 3)
    flat = d["X"].reshape(len(d["X"]), -1)
    start = time.perf_counter()
    ridge = RidgeEncoder(alphas=np.logspace(0, 5, 6), cv=3).fit(flat[tr], d["Y"][tr])
    out["ridge_fit_s"] = round(time.perf_counter() - start, 2)
    r["ridge_flat_tokens"] = _r(d["Y"][te], ridge.predict(flat[te]))
    for name, values in r.items():
        for roi in ("content", "retinotopic", "mixed"):
            out[f"r_{roi}_{name}"] = round(float(np.mean(values[d["roi"] == roi])), 3)
    return out


def nsd(args) -> dict:
    import torch

    from alignment.encoders.routing import _build_module, query_layout, resolve_device, run_epoch

    device = resolve_device(args.device)
    rng = np.random.default_rng(args.seed)
    n, grid, width, n_rois = args.images, (31, 31), 768, 24
    per_hemi = args.vertices
    names = np.array([f"roi{i:02d}" for i in range(n_rois)] + ["none"])
    roi = np.concatenate([names[rng.integers(0, n_rois + 1, per_hemi)] for _ in range(2)])
    hemi = np.repeat(["left", "right"], per_hemi)
    layout = query_layout(roi, hemi)
    torch.manual_seed(args.seed)
    results = {
        "scale": "nsd",
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "images": n,
        "token_grid": list(grid),
        "width": width,
        "vertices": 2 * per_hemi,
        "queries": layout.n_queries,
        "batch_size": args.batch_size,
    }
    gen = torch.Generator(device=device).manual_seed(args.seed)
    Y = torch.randn(n, 2 * per_hemi, device=device, generator=gen)
    for precision in args.precision:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        X = torch.empty(n, grid[0] * grid[1], width, dtype=dtype, device=device)
        for i in range(0, n, 500):
            X[i : i + 500] = torch.randn(
                X[i : i + 500].shape, device=device, generator=gen, dtype=torch.float32
            ).to(dtype)
        model = _build_module(
            width, layout, grid, width=None, n_heads=16, ffn_dim=1024, dropout=0.1, positional=True
        ).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4, fused=True)
        cpu_gen = torch.Generator().manual_seed(args.seed)
        warm = torch.arange(min(n, args.batch_size * 5))
        run_epoch(model, opt, X, Y, warm, args.batch_size, 0.1, cpu_gen, device, precision)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.epochs):
            start = time.perf_counter()
            run_epoch(
                model, opt, X, Y, torch.arange(n), args.batch_size, 0.1, cpu_gen, device,
                precision,
            )  # fmt: skip
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        results[f"s_per_epoch_{precision}"] = round(float(np.median(times)), 2)
        results[f"epoch_times_{precision}"] = [round(t, 2) for t in times]
        if device.startswith("cuda"):
            results[f"peak_gb_{precision}"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        del X, model, opt
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    best = min(v for k, v in results.items() if k.startswith("s_per_epoch_"))
    results["target_s_per_epoch"] = 10.0
    results["meets_target"] = bool(best < 10.0)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["synthetic", "nsd"], default="synthetic")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--images", type=int, default=9000)
    parser.add_argument("--vertices", type=int, default=20000, help="per hemisphere")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = synthetic(args) if args.scale == "synthetic" else nsd(args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
