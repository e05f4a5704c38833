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

    from alignment.io import require_file
    from alignment.stimuli.images import read_image_table
    from alignment.stimuli.narrative import read_word_table
    from alignment.stimuli.sentences import read_sentence_table

    p = require_file(path, "stimulus file")
    if p.suffix.lower() == ".textgrid":
        return read_word_table(p)
    try:
        head = pd.read_csv(p, sep="\t" if p.suffix != ".csv" else ",", nrows=1)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{p}: not a readable stimulus table ({err})") from err
    if "word" in head.columns:
        return read_word_table(p)
    if "sentence" in head.columns:
        return read_sentence_table(p)
    return read_image_table(p)


def cmd_prepare_responses(args) -> None:
    from alignment.data.prepare import prepare_responses

    prepare_responses(args.spec, args.subject, args.dataset, args.out)


def cmd_prepare_stimuli(args) -> None:
    from alignment.data.prepare import prepare_stimuli

    prepare_stimuli(args.spec, args.subjects, args.dataset, args.out)


def _speed_entries(speed: dict) -> dict:
    """``--speed``: only the spec entries that change no number (batch size, device, workers)."""
    from alignment.features.spec import SPEED_ONLY

    unknown = sorted(set(speed) - set(SPEED_ONLY))
    if unknown:
        raise InputError(
            f"--speed takes only {', '.join(SPEED_ONLY)}, not {', '.join(unknown)}"
            " (entries that change the numbers belong in --spec)"
        )
    return dict(speed)


def cmd_features(args) -> None:
    from alignment.features import extract_to_store

    if args.spec.get("kind", "huggingface") == "huggingface" and "source" in args.spec:
        from alignment.checks import check_model_source

        check_model_source(str(args.spec["source"]), args.model)
    stimuli = _read_stimuli(args.stimuli)
    spec = dict(args.spec)
    if spec.get("kind") == "lowlevel" and str(args.stimuli).lower().endswith(".textgrid"):
        spec.setdefault("phones", str(args.stimuli))  # the phone tier of the word timings
    spec.update(_speed_entries(args.speed))
    if args.batch_size:
        spec["batch_size"] = args.batch_size
    attrs = extract_to_store(
        spec, stimuli, args.out, name=args.model, extra_attrs={"stimuli": str(args.stimuli)}
    )
    log.info("wrote %d layers of %s to %s", len(attrs["layers"]), args.model, args.out)


def cmd_ceiling(args) -> None:
    from alignment.data.responses import load_responses
    from alignment.evaluation import noise_ceiling
    from alignment.io import write_netcdf

    responses = [load_responses(p, on_bad_voxels=args.on_bad_voxels) for p in args.responses]
    if not 0 <= args.index < len(responses):
        raise InputError(f"--index {args.index} is out of range for {len(responses)} responses")
    try:
        ds = noise_ceiling(
            responses,
            index=args.index,
            timeseries_spec=args.timeseries,
            sources=[str(p) for p in args.responses],
        )
    except InputError:
        raise
    except ValueError as err:  # data that cannot give a ceiling (e.g. no repeats)
        raise InputError(f"{args.responses[args.index]}: no noise ceiling: {err}") from err
    write_netcdf(ds, args.out)


def cmd_encode(args) -> None:
    from alignment.data.responses import load_responses
    from alignment.evaluation import score_layers
    from alignment.io import read_netcdf, read_zarr_attrs, read_zarr_layers, write_netcdf

    responses = load_responses(args.responses, on_bad_voxels=args.on_bad_voxels)
    feat_attrs = read_zarr_attrs(args.features)
    encoder_inputs = {}
    for item in args.encoder_input:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise InputError(f"--encoder-input wants NAME=PATH, got {item!r}")
        encoder_inputs[key] = path
    if "spaces" in args.encoder_spec:
        # banded ridge: the spaces' layers from the stores of their models (--features is the
        # first space's model, the others come as --encoder-input MODEL=STORE)
        from alignment.encoders.banded import space_layers

        stores = {**encoder_inputs, str(feat_attrs.get("model", "")): args.features}
        layers = space_layers(args.encoder_spec, stores, encoder=args.encoder)
    else:
        layers = read_zarr_layers(args.features)
    _preflight_encode(args, responses, layers)
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
        "stimuli": str(feat_attrs.get("stimuli", "")),  # the report overlays attention on them
        **args.attrs,
    }
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
        if args.encoder_spec.get("kind") == "routing":  # per-head maps: head, row, column
            from alignment.encoders.routing import label_attention

            merged = label_attention(merged, args.encoder_spec)
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


def _files(item: str) -> list[Path]:
    """The files of an ``--encoder-input NAME=PATH`` (a file, or up to 1000 in a folder)."""
    path = Path(item.partition("=")[2])
    if path.is_file():
        return [path]
    return [p for p in sorted(path.rglob("*"))[:1000] if p.is_file()] if path.is_dir() else []


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
        # e.g. the other feature stores of a banded encoder, an in-context checkpoint
        "input_files": [stamp(p) for item in sorted(args.encoder_input) for p in _files(item)],
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


def _incontext_subject(args, spec):
    """Responses, features and checkpoint of the subject a scaling/decoding/query verb runs on."""
    from alignment.data.responses import load_responses
    from alignment.encoders.incontext import load_checkpoint, subject_data
    from alignment.io import read_zarr_attrs, read_zarr_layers

    ckpt = load_checkpoint(args.checkpoint)
    # the layer the checkpoint was meta-trained on, unless the spec names one
    spec = {"layers": [ckpt.embedding.get("layer", -1)], **spec}
    responses = load_responses(args.responses, on_bad_voxels=args.on_bad_voxels)
    layers = read_zarr_layers(args.features)
    feat_attrs = read_zarr_attrs(args.features)
    data = subject_data(responses, layers, spec, args.cv, str(args.features), str(args.responses))
    ckpt.check_embedding({**feat_attrs, "layer": data["layer"]}, str(args.features))
    ckpt.check_held_out(data["subject"], data["dataset"])
    return data, ckpt, feat_attrs


def _tidy_attrs(table, data, feat_attrs, args):
    table.insert(0, "subject", data["subject"])
    table.insert(1, "dataset", data["dataset"])
    table.insert(2, "model", feat_attrs.get("model", ""))
    table.insert(3, "layer", data["layer"])
    table.insert(4, "encoder_name", args.encoder)
    return table


def cmd_meta_train(args) -> None:
    from alignment.data.responses import load_responses
    from alignment.encoders.incontext import meta_train_checkpoint
    from alignment.io import read_zarr_attrs, read_zarr_layers

    responses = [load_responses(p, on_bad_voxels=args.on_bad_voxels) for p in args.responses]
    info = meta_train_checkpoint(
        responses,
        read_zarr_layers(args.features),
        read_zarr_attrs(args.features),
        args.encoder_spec,
        args.cv,
        args.out,
        heldout=args.heldout,
        sources=[str(p) for p in args.responses],
        features_source=str(args.features),
        device=args.device,
        random_state=args.cv.get("random_state", 0),
    )
    log.info(
        "meta-trained for held-out subject %s: %.0f voxel-tasks/s, final query MSE %.4f",
        args.heldout,
        info["tasks_per_s"],
        [h["loss"] for h in info["history"] if h["stage"] == "meta"][-1],
    )


def cmd_fewshot(args) -> None:
    import numpy as np

    from alignment.encoders.incontext import (
        context_attention_table,
        describe_checkpoint,
        scaling_curve,
    )
    from alignment.io import write_text

    spec = args.encoder_spec
    data, ckpt, feat_attrs = _incontext_subject(args, spec)
    # with ROIs, the curve is summarised over the ROIs' voxels only (and costs that much)
    roi = data.get("roi")
    keep = np.arange(data["Y"].shape[1])
    if roi is not None and (np.asarray(roi).astype(str) != "none").any():
        keep = np.flatnonzero(np.asarray(roi).astype(str) != "none")
    roi_kept = None if roi is None else np.asarray(roi)[keep]
    Y = data["Y"][:, keep]
    seed = args.cv.get("random_state", 0)
    cache: dict = {}  # in-context fits by (N, fold): shared by scaling, decoding and attention
    table = scaling_curve(
        data["X"],
        Y,
        data["folds"],
        ckpt,
        spec.get("scaling", {}).get("n_context", [10, 30, 100, 300, 1000]),
        ridge_spec=args.ridge_spec,
        inner_folds=args.cv.get("inner_folds", 3),
        roi=roi_kept,
        random_state=seed,
        device=args.device,
        cache=cache,
    )
    table = _tidy_attrs(table, data, feat_attrs, args)
    table["checkpoint_model"] = describe_checkpoint(ckpt)
    write_text(args.out, table.to_csv(sep="\t", index=False))
    if args.decoding_out:
        write_text(
            args.decoding_out, _decoding_table(args, spec, data, ckpt, feat_attrs, keep, cache)
        )
    if args.attention_out:
        stimuli = None
        if args.stimuli:
            from alignment.stimuli.images import read_image_table

            stimuli = read_image_table(args.stimuli)
        att = context_attention_table(
            data["X"],
            Y,
            data["folds"],
            ckpt,
            ids=data["ids"],
            roi=roi_kept,
            voxel=keep,
            k=int(spec.get("attention_top", 5)),
            random_state=seed,
            device=args.device,
            cache=cache,
            stimuli=stimuli,
        )
        for c in ("hemi", "vertex"):
            if c in data:
                att.insert(2, c, np.asarray(data[c])[att["voxel"].to_numpy()])
        att = _tidy_attrs(att, data, feat_attrs, args)
        write_text(args.attention_out, att.to_csv(sep="\t", index=False))


def _decoding_table(args, spec, data, ckpt, feat_attrs, keep, cache=None) -> str:
    from alignment.decoding import decoding_curve

    dec = spec.get("decoding", {})
    table = decoding_curve(
        data["X"],
        data["Y"][:, keep],
        data["folds"],
        ckpt,
        n_voxels=dec.get("n_voxels", [10, 30, 100, 300, 1000]),
        n_context=dec.get("eval_context", [30, 100, 1000]),
        random_state=args.cv.get("random_state", 0),
        device=args.device,
        cache=cache,
    )
    return _tidy_attrs(table, data, feat_attrs, args).to_csv(sep="\t", index=False)


def cmd_decode(args) -> None:
    import numpy as np

    from alignment.io import write_text

    spec = args.encoder_spec
    data, ckpt, feat_attrs = _incontext_subject(args, spec)
    roi = data.get("roi")
    keep = np.arange(data["Y"].shape[1])
    if roi is not None and (np.asarray(roi).astype(str) != "none").any():
        keep = np.flatnonzero(np.asarray(roi).astype(str) != "none")
    write_text(args.out, _decoding_table(args, spec, data, ckpt, feat_attrs, keep))


def cmd_query(args) -> None:
    import numpy as np
    import xarray as xr

    from alignment.encoders.incontext import (
        InContextEncoder,
        selectivity_map,
        text_embedding,
    )
    from alignment.io import atomic_path, write_netcdf
    from alignment.viz.brainmaps import plot_surface_map

    data, ckpt, _ = _incontext_subject(args, args.encoder_spec)
    t = text_embedding(args.text_model, args.text)
    if t.shape[1] != ckpt.model.cfg.embed_dim:
        raise InputError(
            f"{args.text_model}: text embeddings have {t.shape[1]} units; checkpoint "
            f"{args.checkpoint} expects {ckpt.model.cfg.embed_dim} (the image-text model's "
            "shared embedding)"
        )
    enc = InContextEncoder(checkpoint=ckpt, device=args.device).fit(data["X"], data["Y"])
    maps = np.stack([selectivity_map(enc.coef_, enc.intercept_, v, ckpt.feature_mean) for v in t])
    ds = xr.Dataset(
        {"selectivity": (("query", "voxel"), maps.astype(np.float32))},
        coords={
            "query": list(args.text),
            **{c: ("voxel", data[c]) for c in ("roi", "hemi", "vertex") if c in data},
        },
        attrs={
            "subject": data["subject"] or "",
            "checkpoint": str(args.checkpoint),
            "text_model": args.text_model,
            "definition": "w . t + b per voxel",
        },
    )
    write_netcdf(ds, args.out)
    if args.figure:
        if "hemi" not in data or "vertex" not in data:
            raise InputError(f"{args.responses}: no hemi/vertex coordinates to draw a surface map")
        fig = plot_surface_map(
            maps[0],
            data["hemi"],
            data["vertex"],
            cmap="RdBu_r",
            title=f"selectivity for {args.text[0]!r} (w·t + b)",
            colorbar_label="predicted response",
        )
        with atomic_path(args.figure) as tmp:
            fig.savefig(tmp, format="png", dpi=100)


def _preflight_encode(args, responses, layers) -> None:
    """Fail before fitting on data the folds or the stimulus timing cannot use."""
    from alignment import dims
    from alignment.checks import check_folds, check_word_timing
    from alignment.data.responses import row_dim

    check_folds(responses, args.cv, args.timeseries, args.responses)
    if row_dim(responses) == dims.TIME and layers:
        first = next(iter(layers.values()))
        if isinstance(first, dict):  # the feature spaces of a banded encoder
            first = next(iter(first.values()))
        if dims.RUN in first.coords:
            check_word_timing(responses, first, args.responses, args.features)


def cmd_check_config(args) -> None:
    from alignment.config import check_config, load_config

    config = load_config(args.config)
    check_config(config, args.schema, source=str(args.config))
    print(f"{args.config}: OK")


def cmd_rsa(args) -> None:
    from alignment.data.responses import load_responses
    from alignment.io import read_zarr_attrs, read_zarr_layers, write_netcdf
    from alignment.metrics.rsa import METHODS, rsa_scores

    responses = [load_responses(p) for p in args.responses]
    if not 0 <= args.index < len(responses):
        raise InputError(f"--index {args.index} outside the {len(responses)} --responses given")
    spec = args.encoder_spec
    method = spec.get("method", "spearman")
    if method not in METHODS:
        raise InputError(f"rsa encoder: method must be one of {METHODS}, got {method!r}")
    feat_attrs = read_zarr_attrs(args.features)
    from alignment.encoders.registry import select_layers

    layers = select_layers(spec, read_zarr_layers(args.features), str(args.features))
    attrs = {
        "model": feat_attrs.get("model", ""),
        "model_source": feat_attrs.get("model_source", ""),
        "untrained": int(bool(feat_attrs.get("untrained", False))),
        "control": int(feat_attrs.get("control", 0)),
        "encoder": args.encoder,
        "encoder_kind": "rsa",
        "responses": str(args.responses[args.index]),
        **{k: v for k, v in responses[args.index].attrs.items() if k in ("dataset", "subject")},
        **args.attrs,
    }
    ds = rsa_scores(
        responses,
        args.index,
        layers,
        method=method,
        n_permutations=spec.get("n_permutations", args.stats.get("n_permutations", 1000)),
        random_state=spec.get("random_state", args.stats.get("random_state", 0)),
        attrs=attrs,
    )
    write_netcdf(ds, args.out)
    log.info("wrote RSA of %d layers x %d ROIs to %s", ds.sizes["layer"], ds.sizes["roi_name"],
             args.out)  # fmt: skip


def cmd_report(args) -> None:
    from alignment.io import read_json, read_netcdf
    from alignment.report.html import write_subject_report

    scores = [read_netcdf(p) for p in args.scores]
    truth = read_json(args.truth) if args.truth else None
    config = args.config_json
    attention = [read_netcdf(p) for p in args.attention]
    extra = []
    if args.incontext_tables:
        from alignment.report.incontext import incontext_section

        extra.append(incontext_section(args.incontext_tables))
    write_subject_report(
        args.out,
        args.subject,
        scores,
        config=config,
        provenance=_provenance(),
        truth=truth,
        attention=attention,
        extra_sections=extra,
        rsa=[read_netcdf(p) for p in args.rsa],
    )


def cmd_summary(args) -> None:
    from alignment.io import write_text
    from alignment.report.summary import study_summary_lines

    present = [p for p in args.scores if Path(p).exists()] if args.allow_missing else args.scores
    lines = study_summary_lines(present, group=args.group, models=args.models)
    absent = [p for p in args.scores if p not in present]
    if absent:
        from alignment.failures import missing_lines

        lines += [
            f"INCOMPLETE RUN: {len(absent)} of {len(args.scores)} scores missing:",
            *missing_lines({p: args.logs.get(p, []) for p in absent}),
        ]
    text = "\n".join(lines) + "\n"
    write_text(args.out, text)
    print(text, end="")


def _subject_links(paths, out: str) -> dict[str, str]:
    """sub-XX -> relative link from the report at ``out`` to each per-subject report."""
    import os
    import re

    links = {}
    for path in paths:
        match = re.search(r"sub-([^/\\]+)", str(path))
        if match:
            links[match.group(1)] = os.path.relpath(path, Path(out).parent)
    return links


def cmd_group_report(args) -> None:
    from alignment.io import read_json
    from alignment.report.group import write_group_report

    write_group_report(
        args.out,
        args.dataset,
        args.scores,
        args.group,
        stats_out=args.stats_out,
        config=args.config_json,
        truth=read_json(args.truth) if args.truth else None,
        subject_reports=_subject_links(args.subject_reports, args.out),
    )
    log.info("wrote the group report of %s to %s", args.dataset, args.out)


def cmd_compare_report(args) -> None:
    from alignment.report.compare import feature_widths, write_compare_report

    write_compare_report(
        args.out,
        args.dataset,
        args.scores,
        args.group,
        csv_out=args.csv_out,
        models=args.config_json.get("models", {}),
        compare=args.config_json.get("compare", []),
        widths=feature_widths(args.features),
        config=args.config_json,
    )
    log.info("wrote the model comparison of %s to %s", args.dataset, args.out)


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
    p.add_argument(
        "--speed",
        type=_json,
        default={},
        help="speed-only entries (JSON: batch_size, device, n_workers); override the spec's",
    )
    p.add_argument(
        "--batch-size", type=int, help="stimuli per batch (speed only; overrides the spec)"
    )
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

    def incontext_common(p, checkpoint=True):
        if checkpoint:
            p.add_argument("--responses", required=True)
        else:
            p.add_argument(
                "--responses",
                nargs="+",
                required=True,
                help="responses of the training subjects (every subject but --heldout)",
            )
        p.add_argument("--features", required=True)
        if checkpoint:
            p.add_argument("--checkpoint", required=True, help="meta-trained checkpoint (.pt)")
        p.add_argument("--encoder", default="incontext", help="encoder name in the config")
        p.add_argument("--encoder-spec", type=_json, default={})
        p.add_argument("--cv", type=_json, default={})
        p.add_argument("--device", default="auto", help="torch device; auto = CUDA if present")
        p.add_argument("--on-bad-voxels", default="error", choices=["error", "drop"])
        p.add_argument("--out", required=True)

    p = sub.add_parser("meta-train", help="meta-train the in-context encoder (one subject out)")
    incontext_common(p, checkpoint=False)
    p.add_argument("--heldout", required=True, help="the subject the checkpoint is for (excluded)")
    p.set_defaults(func=cmd_meta_train)

    p = sub.add_parser("fewshot", help="in-context vs ridge on N context images (scaling curve)")
    incontext_common(p)
    p.add_argument("--ridge-spec", type=_json, default={}, help="ridge parameters (JSON)")
    p.add_argument(
        "--decoding-out",
        help="also decode (as `alignment decode`) from the same in-context fits: TSV",
    )
    p.add_argument(
        "--attention-out",
        help="TSV: the context images each voxel's token 0 attends to most",
    )
    p.add_argument("--stimuli", help="stimulus table (category and path for --attention-out)")
    p.set_defaults(func=cmd_fewshot)

    p = sub.add_parser("decode", help="in-context decoding (BrainCoDec) vs analytic inversion")
    incontext_common(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("query", help="map a phrase to cortical selectivity (w . t + b)")
    incontext_common(p)
    p.add_argument("--text", action="append", required=True, help="phrase (repeatable)")
    p.add_argument("--text-model", required=True, help="the image-text model (CLIP) folder or id")
    p.add_argument("--figure", help="PNG surface map of the first phrase")
    p.set_defaults(func=cmd_query)
    p = sub.add_parser(
        "check-config", help="validate a config file (schema, names, subject ids) and exit"
    )
    p.add_argument("config", nargs="?", default="config.yaml")
    p.add_argument(
        "--schema",
        default=str(Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml"),
        help="the workflow's config schema",
    )
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("rsa", help="RDM correlation of every layer with every ROI (RSA)")
    p.add_argument("--responses", nargs="+", required=True, help="every subject's responses")
    p.add_argument("--index", type=int, required=True, help="position of the subject scored")
    p.add_argument("--features", required=True)
    p.add_argument("--encoder", default="rsa", help="encoder name in the config")
    p.add_argument("--encoder-spec", type=_json, default={}, help="the rsa encoder's spec (JSON)")
    p.add_argument("--stats", type=_json, default={})
    p.add_argument("--attrs", type=_json, default={}, help="provenance attrs (JSON)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_rsa)

    p = sub.add_parser("merge-scores", help="join the Scores of an encoder's voxel shards")
    p.add_argument("--scores", nargs="+", required=True, help="the shards' Scores files")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_merge_scores)

    p = sub.add_parser("report", help="per-subject HTML report")
    p.add_argument("--subject", required=True)
    p.add_argument("--scores", nargs="+", required=True)
    p.add_argument(
        "--config-json", type=_json, default={}, help="the run's config (JSON), shown as provenance"
    )
    p.add_argument("--truth", help="planted truth (demo)")
    p.add_argument(
        "--attention",
        nargs="*",
        default=[],
        help="attention.nc of routing encoders (attention maps overlaid on example images)",
    )
    p.add_argument(
        "--incontext-tables",
        nargs="*",
        default=[],
        help="scaling and decoding tables of the in-context encoder (alignment fewshot/decode)",
    )
    p.add_argument("--rsa", nargs="*", default=[], help="RSA results (rsa.nc) of the subject")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("summary", help="short summary of all scores, printed and saved")
    p.add_argument("--scores", nargs="+", required=True)
    p.add_argument("--group", type=_json, default={}, help="group statistics section (JSON)")
    p.add_argument("--models", type=_json, default={}, help="models section (JSON)")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="summarise the scores that exist and name the missing ones (after a failed run)",
    )
    p.add_argument(
        "--logs",
        type=_json,
        default={},
        help="JSON: scores path -> job logs it depends on (upstream first), to name failures",
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("group-report", help="group report of one dataset across subjects")
    p.add_argument("--dataset", required=True)
    p.add_argument("--scores", nargs="+", required=True, help="Scores of every subject and fit")
    p.add_argument("--group", type=_json, default={}, help="group statistics section (JSON)")
    p.add_argument("--config-json", type=_json, default={}, help="the run's config (JSON)")
    p.add_argument("--truth", help="planted truth (demo)")
    p.add_argument("--subject-reports", nargs="*", default=[], help="per-subject reports to link")
    p.add_argument("--stats-out", help="CSV of the group statistics per ROI and layer")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_group_report)

    p = sub.add_parser("compare-report", help="models of one dataset on one relative-depth axis")
    p.add_argument("--dataset", required=True)
    p.add_argument("--scores", nargs="+", required=True, help="Scores of every subject and fit")
    p.add_argument("--features", nargs="*", default=[], help="features stores (feature width)")
    p.add_argument("--group", type=_json, default={}, help="group statistics section (JSON)")
    p.add_argument(
        "--config-json", type=_json, default={}, help="the run's config (models, compare)"
    )
    p.add_argument("--csv-out", help="tidy comparison.csv")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_compare_report)
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
        # one line, whatever a library underneath put in its message
        message = " ".join(str(err).split())
        log.error("%s", message)
        print(f"alignment {args.verb}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
