"""Command-line interface: one verb per workflow rule (``alignment <verb> ...``).

Each verb maps files and JSON-encoded config sections onto one library call and writes its
outputs atomically. Bad input exits with status 2 and a one-line message naming the file and the
problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from alignment import __version__
from alignment.io import InputError

log = logging.getLogger("alignment")


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"invalid JSON argument {text[:80]!r}: {err}") from err


def cmd_demo_data(args) -> None:
    from alignment.data.demo import make_demo

    make_demo(args.out, overrides=args.params)


def _read_stimuli(path: str):
    import pandas as pd

    from alignment.stimuli.images import read_image_table
    from alignment.stimuli.narrative import read_word_table

    p = Path(path)
    if p.suffix.lower() == ".textgrid":
        return read_word_table(p)
    head = pd.read_csv(p, sep="\t" if p.suffix != ".csv" else ",", nrows=1)
    return read_word_table(p) if "word" in head.columns else read_image_table(p)


def cmd_prepare_responses(args) -> None:
    from alignment.data.prepare import prepare_responses

    prepare_responses(args.spec, args.subject, args.dataset, args.out)


def cmd_prepare_stimuli(args) -> None:
    from alignment.data.prepare import prepare_stimuli

    prepare_stimuli(args.spec, args.subjects, args.dataset, args.out)


def cmd_features(args) -> None:
    from alignment.features import extract_features
    from alignment.io import write_zarr_layers

    stimuli = _read_stimuli(args.stimuli)
    layers, attrs = extract_features(args.spec, stimuli, name=args.model)
    attrs["stimuli"] = str(args.stimuli)
    write_zarr_layers(layers, args.out, attrs)
    log.info("wrote %d layers of %s to %s", len(layers), args.model, args.out)


def cmd_ceiling(args) -> None:
    from alignment.data.responses import load_responses
    from alignment.evaluation import noise_ceiling
    from alignment.io import write_netcdf

    responses = [load_responses(p, on_bad_voxels=args.on_bad_voxels) for p in args.responses]
    ds = noise_ceiling(
        responses,
        index=args.index,
        timeseries_spec=args.timeseries,
        sources=[str(p) for p in args.responses],
    )
    write_netcdf(ds, args.out)


def cmd_encode(args) -> None:
    from alignment.data.responses import load_responses
    from alignment.evaluation import score_layers
    from alignment.io import read_netcdf, read_zarr_attrs, read_zarr_layers, write_netcdf

    responses = load_responses(args.responses, on_bad_voxels=args.on_bad_voxels)
    layers = read_zarr_layers(args.features)
    feat_attrs = read_zarr_attrs(args.features)
    ceiling = None
    if args.ceiling:
        c = read_netcdf(args.ceiling)
        if c.sizes["voxel"] != responses.sizes["voxel"]:
            raise InputError(
                f"{args.ceiling}: {c.sizes['voxel']} voxels, but {args.responses} has "
                f"{responses.sizes['voxel']}"
            )
        ceiling = c["ceiling"].values
    attrs = {
        "model": feat_attrs.get("model", ""),
        "model_source": feat_attrs.get("model_source", ""),
        "model_revision": feat_attrs.get("model_revision", ""),
        "model_cache_key": feat_attrs.get("cache_key", ""),
        "untrained": int(bool(feat_attrs.get("untrained", False))),
        "control": int(feat_attrs.get("control", 0)),
        "encoder": args.encoder,
        "ceiling_method": c.attrs.get("method", "") if args.ceiling else "",
        **args.attrs,
    }
    encoder_inputs = {}
    for item in args.encoder_input:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise InputError(f"--encoder-input wants NAME=PATH, got {item!r}")
        encoder_inputs[key] = path
    shard = _shard(args.shard)
    checkpoints = None
    if not args.no_checkpoint and not args.interpretation_out:
        checkpoints = _checkpoint_folder(args, shard)
    result = score_layers(
        responses,
        layers,
        voxel_shard=shard,
        checkpoint_dir=checkpoints,
        encoder_spec=args.encoder_spec,
        cv=args.cv,
        stats_spec=args.stats,
        timeseries_spec=args.timeseries,
        ceiling=ceiling,
        features_source=str(args.features),
        responses_source=str(args.responses),
        attrs=attrs,
        features_attrs=feat_attrs,
        encoder_inputs=encoder_inputs,
        return_interpretation=bool(args.interpretation_out),
    )
    if args.interpretation_out:
        import xarray as xr

        scores, interpretation = result
        merged = (
            xr.concat(
                list(interpretation.values()), dim=xr.DataArray(list(interpretation), dims="layer")
            )
            if interpretation
            else xr.Dataset()
        )
        merged.attrs = {**scores.attrs}
        write_netcdf(merged, args.interpretation_out)
    else:
        scores = result
    write_netcdf(scores, args.out)
    if checkpoints:
        import shutil

        shutil.rmtree(Path(checkpoints).parent, ignore_errors=True)


def _shard(text: str | None):
    """``i/N`` -> (i, N); None stays None."""
    if not text:
        return None
    index, sep, total = text.partition("/")
    if not sep or not index.isdigit() or not total.isdigit():
        raise InputError(f"--shard wants i/N (e.g. 0/4), got {text!r}")
    return int(index), int(total)


def _checkpoint_folder(args, shard) -> str:
    """Sidecar folder of per-layer checkpoints, keyed by everything that changes the numbers."""
    import hashlib
    import os

    def stamp(path):
        st = os.stat(path)
        return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]

    features = Path(args.features)
    feature_files = sorted(p for p in features.rglob("*") if p.is_file())[:1000]
    key = {
        "responses": stamp(args.responses),
        "features": [stamp(p) for p in feature_files] or stamp(features),
        "encoder": args.encoder_spec,
        "cv": args.cv,
        "stats": args.stats,
        "timeseries": args.timeseries,
        "inputs": sorted(args.encoder_input),
        "on_bad_voxels": args.on_bad_voxels,
        "shard": shard,
        "version": __version__,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return str(Path(f"{args.out}.checkpoints") / digest)


def cmd_merge_scores(args) -> None:
    from alignment.evaluation import merge_shards
    from alignment.io import read_netcdf, write_netcdf

    write_netcdf(merge_shards([read_netcdf(path) for path in args.scores]), args.out)


def cmd_rsa(args) -> None:
    from alignment.data.responses import load_responses
    from alignment.io import read_zarr_attrs, read_zarr_layers, write_netcdf
    from alignment.metrics.rsa import rsa_scores

    responses = [load_responses(p) for p in args.responses]
    spec = args.encoder_spec
    ds = rsa_scores(
        responses,
        args.index,
        read_zarr_layers(args.features),
        method=spec.get("method", "spearman"),
        n_permutations=args.stats.get("n_permutations", 1000),
        random_state=args.stats.get("random_state", 0),
        attrs={"model": read_zarr_attrs(args.features).get("model", ""), "encoder": "rsa"},
    )
    write_netcdf(ds, args.out)


def cmd_report(args) -> None:
    from alignment.io import read_json, read_netcdf
    from alignment.report.html import write_subject_report

    scores = [read_netcdf(p) for p in args.scores]
    truth = read_json(args.truth) if args.truth else None
    config = args.config_json
    write_subject_report(
        args.out, args.subject, scores, config=config, provenance=_provenance(), truth=truth
    )


def cmd_summary(args) -> None:
    from alignment.io import read_netcdf, write_text
    from alignment.report.tables import summary_lines

    lines = summary_lines([read_netcdf(p) for p in args.scores])
    text = "\n".join(lines) + "\n"
    write_text(args.out, text)
    print(text, end="")


def _provenance() -> dict:
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version(), "alignment": __version__}
    for pkg in (
        "numpy",
        "scipy",
        "torch",
        "transformers",
        "himalaya",
        "nilearn",
        "xarray",
        "scikit-learn",
        "snakemake",
    ):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {"package_versions": versions}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``alignment`` command."""
    parser = argparse.ArgumentParser(prog="alignment", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"alignment {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser(
        "demo-data", help="generate the synthetic demo dataset with its planted truth"
    )
    p.add_argument("--out", default="data/demo")
    p.add_argument("--params", type=_json, default={}, help="JSON overrides of the demo parameters")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser(
        "prepare-responses", help="read one subject of a dataset entry into a Responses netCDF"
    )
    p.add_argument("--dataset", required=True, help="dataset name in the config")
    p.add_argument("--subject", required=True)
    p.add_argument("--spec", type=_json, required=True, help="the dataset entry (JSON)")
    p.add_argument("--out", required=True, help="Responses netCDF to write")
    p.set_defaults(func=cmd_prepare_responses)

    p = sub.add_parser("prepare-stimuli", help="stimulus table of a published dataset")
    p.add_argument("--dataset", required=True, help="dataset name in the config")
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--spec", type=_json, required=True, help="the dataset entry (JSON)")
    p.add_argument("--out", required=True, help="TSV to write")
    p.set_defaults(func=cmd_prepare_stimuli)

    p = sub.add_parser("features", help="extract layerwise features of a stimulus set")
    p.add_argument("--model", required=True, help="model name in the config")
    p.add_argument("--spec", type=_json, required=True, help="model spec (JSON)")
    p.add_argument(
        "--stimuli", required=True, help="image table (stimulus_id, path) or word timings"
    )
    p.add_argument("--out", required=True, help="zarr store to write")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("ceiling", help="noise ceiling of one subject (repeats, or inter-subject)")
    p.add_argument(
        "--responses", nargs="+", required=True, help="responses of every subject of the dataset"
    )
    p.add_argument(
        "--index", type=int, required=True, help="position of the subject in --responses"
    )
    p.add_argument("--timeseries", type=_json, default={})
    p.add_argument("--on-bad-voxels", default="error", choices=["error", "drop"])
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_ceiling)

    p = sub.add_parser("encode", help="fit and score an encoder for every layer of a model")
    p.add_argument("--responses", required=True)
    p.add_argument("--features", required=True)
    p.add_argument("--ceiling")
    p.add_argument("--encoder", default="ridge")
    p.add_argument("--encoder-spec", type=_json, default={})
    p.add_argument("--cv", type=_json, default={})
    p.add_argument("--stats", type=_json, default={})
    p.add_argument("--timeseries", type=_json, default={})
    p.add_argument("--attrs", type=_json, default={})
    p.add_argument(
        "--encoder-input",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an extra file the encoder needs (e.g. checkpoint=path), repeatable",
    )
    p.add_argument(
        "--interpretation-out",
        help="netCDF for what the encoder reports per test stimulus (e.g. attention maps)",
    )
    p.add_argument("--on-bad-voxels", default="error", choices=["error", "drop"])
    p.add_argument("--shard", help="fit only voxel shard i of N (i/N, 0-based)")
    p.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="do not keep per-layer checkpoints in OUT.checkpoints/ (kept until OUT is written)",
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("merge-scores", help="join the Scores of an encoder's voxel shards")
    p.add_argument("--scores", nargs="+", required=True, help="the shards' Scores files")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_merge_scores)

    p = sub.add_parser("rsa", help="RDM correlation of every layer with every ROI (RSA)")
    p.add_argument("--responses", nargs="+", required=True, help="every subject's responses")
    p.add_argument("--index", type=int, required=True, help="position of the subject scored")
    p.add_argument("--features", required=True)
    p.add_argument("--encoder-spec", type=_json, default={})
    p.add_argument("--stats", type=_json, default={})
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_rsa)

    p = sub.add_parser("report", help="per-subject HTML report")
    p.add_argument("--subject", required=True)
    p.add_argument("--scores", nargs="+", required=True)
    p.add_argument(
        "--config-json", type=_json, default={}, help="the run's config (JSON), shown as provenance"
    )
    p.add_argument("--truth", help="planted truth (demo)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("summary", help="short summary of all scores, printed and saved")
    p.add_argument("--scores", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``alignment`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except InputError as err:
        log.error("%s", err)
        print(f"alignment {args.verb}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
