"""The routing encoder on the demo: r/sqrt(ceiling) per ROI next to ridge, and where the
retinotopic query looks.

Reads what the workflow wrote (run it first for the subjects wanted, e.g.
``snakemake --cores 2 results/sub-01/demo-images/vit-tiny-tokens/routing/scores.nc
results/sub-01/demo-images/vit-tiny-untrained/ridge/scores.nc``) and prints one JSON line per
subject: per ROI the routing and ridge r/sqrt(ceiling) (ridge at the ROI's best layer), and the
retinotopic query's attention mass in the planted upper-left quadrant (mean over test images,
heads averaged as in attention.nc; chance 0.25) with the share of images whose attention
centroid lies in that quadrant; where attention.nc holds per-head maps, also the mass per head
and over the position-only heads (what the report overlays).

    python benchmarks/routing_demo.py --subjects 01 02 03
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from alignment.encoders.routing import quadrant_mask
from alignment.io import read_netcdf
from alignment.report.tables import load_scores, roi_table
from alignment.viz.attention import head_attention_maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", nargs="+", default=["01"])
    parser.add_argument("--results", default="results")
    parser.add_argument("--quadrant", default="upper-left")
    args = parser.parse_args()
    for sub in args.subjects:
        base = f"{args.results}/sub-{sub}/demo-images"
        routing = roi_table(load_scores(f"{base}/vit-tiny-tokens/routing/scores.nc"))
        ridge = roi_table(load_scores(f"{base}/vit-tiny-untrained/ridge/scores.nc"))
        routing, ridge = routing.set_index("roi"), ridge.set_index("roi")
        att = read_netcdf(f"{base}/vit-tiny-tokens/routing/attention.nc")
        maps = att["attention_right_retinotopic"]
        maps = (maps.isel(layer=-1) if "layer" in maps.dims else maps).values
        mask = quadrant_mask(maps.shape[1:], args.quadrant)
        rows, cols = np.mgrid[0 : maps.shape[1], 0 : maps.shape[2]]
        cy, cx = (maps * rows).sum((1, 2)), (maps * cols).sum((1, 2))
        iy = np.clip(np.round(cy).astype(int), 0, maps.shape[1] - 1)
        ix = np.clip(np.round(cx).astype(int), 0, maps.shape[2] - 1)
        out = {
            "subject": sub,
            "r_over_ceiling": {
                roi: {
                    "routing": round(float(routing.loc[roi, "r_over_ceiling"]), 3),
                    "ridge": round(float(ridge.loc[roi, "r_over_ceiling"]), 3),
                    "ridge_layer": ridge.loc[roi, "best_layer"],
                }
                for roi in routing.index
                if roi in ridge.index
            },
            "retinotopic_attention_in_quadrant": round(float(maps[:, mask].sum(1).mean()), 3),
            "retinotopic_centroid_in_quadrant": round(float(mask[iy, ix].mean()), 3),
        }
        if "head_attention_right_retinotopic" in att:
            heads = att["head_attention_right_retinotopic"]
            heads = heads.isel(layer=-1) if "layer" in heads.dims else heads
            per_head = heads.values[..., mask].sum(-1).mean(0)  # (heads,)
            pos = np.asarray(att["position_head"].values, dtype=bool)
            out["retinotopic_attention_in_quadrant_per_head"] = [
                round(float(x), 3) for x in per_head
            ]
            if pos.any():
                out["retinotopic_position_heads_in_quadrant"] = round(
                    float(per_head[pos].mean()), 3
                )
            if pos.any() and "head_norm_right_retinotopic" in att:
                maps_w, _ = head_attention_maps(att, position=True, by_norm=True)
                out["retinotopic_position_heads_by_norm_in_quadrant"] = round(
                    float(maps_w["right retinotopic"][:, mask].sum(1).mean()), 3
                )
            if "head_norm_right_retinotopic" in att:
                norms = att["head_norm_right_retinotopic"]
                norms = norms.isel(layer=-1) if "layer" in norms.dims else norms
                share = norms.values / norms.values.sum(1, keepdims=True)
                out["retinotopic_head_norm_share"] = [round(float(x), 3) for x in share.mean(0)]
        print(json.dumps(out))


if __name__ == "__main__":
    main()
