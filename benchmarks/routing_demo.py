"""The routing encoder on the demo: r/sqrt(ceiling) per ROI next to ridge, and where the
retinotopic query looks.

Reads what the workflow wrote (run it first for the subjects wanted, e.g.
``snakemake --cores 2 results/sub-01/demo-images/vit-tiny-tokens/routing/scores.nc
results/sub-01/demo-images/vit-tiny-untrained/ridge/scores.nc``) and prints one JSON line per
subject: per ROI the routing and ridge r/sqrt(ceiling) (ridge at the ROI's best layer), and the
retinotopic query's attention mass in the planted upper-left quadrant (mean over test images,
heads averaged as in attention.nc; chance 0.25) with the share of images whose attention
centroid lies in that quadrant; where attention.nc holds per-head maps, also the mass per head
and over the position-only heads (what the report overlays), and the per-head mass in each
outer fold (``--n-folds``/``--cv-seed`` must match the dataset's cv: the demo's 5 folds, seed 0):
a head's map is one per fold, so a mean over folds can hide heads that sit in the quadrant in
some folds and elsewhere in others. With ``--regions``, also how well each region's tokens
predict the retinotopic vertices (5-fold ridge, mean r over the right hemisphere's vertices),
from the raw tokens and from the tokens minus their image's mean (``token_centering: image``)
or median (``median``):
where tokens outside the quadrant predict it nearly as well, the loss does not tell the query
to attend inside.

    python benchmarks/routing_demo.py --subjects 01 02 03
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from alignment import dims
from alignment.encoders.routing import QUADRANTS, quadrant_mask
from alignment.evaluation import image_design, image_features_matrix
from alignment.io import read_netcdf, read_zarr_layers
from alignment.report.tables import load_scores, roi_table
from alignment.viz.attention import head_attention_maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", nargs="+", default=["01"])
    parser.add_argument("--results", default="results")
    parser.add_argument("--quadrant", default="upper-left")
    parser.add_argument("--data", default="data/demo/images")
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--cv-seed", type=int, default=0)
    parser.add_argument("--regions", action="store_true")
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
            responses = read_netcdf(f"{args.data}/sub-{sub}_responses.nc")
            design, ids = image_design(
                responses, {"n_folds": args.n_folds, "random_state": args.cv_seed}
            )
            order = {s: i for i, s in enumerate(heads["stimulus_id"].values.astype(str))}
            out["retinotopic_attention_in_quadrant_per_fold_head"] = [
                [round(float(x), 2) for x in per_fold_mass(heads.values, test, ids, order, mask)]
                for _, test in design.folds
            ]
            if args.regions:
                out["retinotopic_r_from_region_tokens"] = region_predictivity(
                    args.results, responses, design, ids
                )
        print(json.dumps(out))


def per_fold_mass(heads, test, ids, order, mask):
    """Mean attention mass in ``mask`` per head over one fold's test images."""
    rows = [order[s] for s in ids[test]]
    return heads[rows][..., mask].sum(-1).mean(0)


def region_predictivity(results, responses, design, ids, hemi="right") -> dict:
    """5-fold ridge r (mean over the retinotopic vertices of ``hemi``) from the layer-0 tokens
    of each quadrant and of all but the upper-left, raw and minus their image's mean or median
    token."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_predict

    store = read_zarr_layers(f"{results}/features/demo-images/vit-tiny-tokens.zarr")
    layer = next(iter(store.values()))
    X = image_features_matrix(layer, ids, "features", "responses")
    side = math.isqrt(X.shape[1])
    keep = (responses[dims.ROI].values == "retinotopic") & (responses[dims.HEMI].values == hemi)
    y = design.Y[:, keep]
    regions = {q: quadrant_mask((side, side), q).ravel() for q in QUADRANTS}
    regions["not upper-left"] = ~regions["upper-left"]
    out = {}
    centred = {
        "raw": X,
        "image-centred": X - X.mean(1, keepdims=True),
        "median-centred": X - np.median(X, 1, keepdims=True),
    }
    for name, Xc in centred.items():
        for region, sel in regions.items():
            F = Xc[:, sel].reshape(len(Xc), -1)
            pred = cross_val_predict(RidgeCV(alphas=np.logspace(-1, 5, 13)), F, y, cv=5)
            r = [np.corrcoef(pred[:, j], y[:, j])[0, 1] for j in range(y.shape[1])]
            out[f"{name} {region}"] = round(float(np.mean(r)), 3)
    return out


if __name__ == "__main__":
    main()
