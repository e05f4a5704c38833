"""Turn a dataset entry of config.yaml into the pipeline's inputs (``alignment prepare-*``).

A dataset entry with a ``format`` is read by its adapter and written once, per subject, as a
Responses netCDF under ``results/data/<dataset>/`` (and, for published datasets, its stimulus
table), so every later step reads the same labelled objects as for the demo:

=============  ====================================  =====================================
format         adapter                                stimuli
=============  ====================================  =====================================
nsd            :mod:`alignment.data.nsd`              image table (HDF5 references)
algonauts2023  :mod:`alignment.data.algonauts`        image table (PNG files)
bold5000       :mod:`alignment.data.bold5000`         image table (JPEG files)
lebel2023      :mod:`alignment.data.lebel`            word timings of every story
pereira2018    :mod:`alignment.data.pereira`          sentence table (stimulus_id, sentence)
npy, h5, nifti, mgh, gifti, text  :mod:`alignment.data.byo`  the entry's own ``stimuli``
=============  ====================================  =====================================
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np

from alignment import dims
from alignment.data import algonauts, bold5000, byo, lebel, nsd, pereira
from alignment.data.responses import validate_responses
from alignment.io import InputError, atomic_path, write_netcdf

log = logging.getLogger(__name__)

#: format -> module with read_responses(spec, subject, name) and read_stimuli(spec, subjects, name)
PUBLISHED = {
    "nsd": nsd,
    "algonauts2023": algonauts,
    "bold5000": bold5000,
    "lebel2023": lebel,
    "pereira2018": pereira,
}
FORMATS = (*PUBLISHED, *byo.FORMATS)

#: where prepared inputs go
RESULTS = "results/data/{dataset}"


def prepared_responses(dataset: str) -> str:
    """Path pattern (with ``{subject}``) of a prepared dataset's Responses."""
    return RESULTS.format(dataset=dataset) + "/sub-{subject}_responses.nc"


def prepared_stimuli(dataset: str, kind: str) -> str:
    """Path of a published dataset's stimulus table (word timings for narratives)."""
    name = "words.tsv" if kind == "narrative" else "stimuli.tsv"
    return RESULTS.format(dataset=dataset) + "/" + name


def resolve_datasets(datasets: dict) -> dict:
    """Dataset entries with ``responses``/``stimuli`` pointing at what the pipeline reads.

    Entries without ``format`` (Responses netCDF files) are returned as they are. For a
    ``format`` entry, ``responses`` becomes the prepared netCDF pattern (the user's own file
    pattern moves to ``source_responses``) and, for published datasets, ``stimuli`` becomes
    the prepared stimulus table.
    """
    out = copy.deepcopy(datasets)
    for name, spec in out.items():
        fmt = spec.get("format")
        if fmt is None:
            continue
        if fmt not in FORMATS:
            raise InputError(f"datasets.{name}.format: {fmt!r} is not one of {list(FORMATS)}")
        if "responses" in spec:
            spec["source_responses"] = spec["responses"]
        spec["responses"] = prepared_responses(name)
        if fmt in PUBLISHED:
            spec["stimuli"] = prepared_stimuli(name, spec["kind"])
    return out


def source_files(spec: dict, subject: str) -> list[str]:
    """Files a bring-your-own subject is read from (for the workflow's input lists)."""
    if spec.get("format") in PUBLISHED or "source_responses" not in spec:
        return []
    pattern = spec["source_responses"]
    runs = spec.get("runs") or [None]
    hemis = ["lh", "rh"] if "{hemi}" in pattern else [None]
    files = []
    for run in runs if "{run}" in pattern else [None]:
        for hemi in hemis:
            fields = {"subject": subject}
            if run is not None:
                fields["run"] = run
            if hemi is not None:
                fields["hemi"] = hemi
            try:
                files.append(pattern.format(**fields))
            except KeyError:  # {run} without a runs list: the runs come from the word timings
                return []
    for key in ("stimuli", "stimulus_order", "mask"):
        if spec.get(key):
            files.append(str(spec[key]).format(subject=subject))
    return files


def read_responses(spec: dict, subject: str, name: str):
    """Responses of one subject of a ``format`` dataset entry (not yet written)."""
    fmt = spec.get("format")
    if fmt in PUBLISHED:
        if "root" not in spec:
            raise InputError(f"datasets.{name}: format {fmt} needs root (the dataset's folder)")
        ds = PUBLISHED[fmt].read_responses(spec, subject, name=name)
    elif fmt in byo.FORMATS:
        user = {**spec, "responses": spec.get("source_responses", spec.get("responses"))}
        ds = byo.read_responses(user, subject, name=name)
    else:
        raise InputError(f"datasets.{name}.format: {fmt!r} is not one of {list(FORMATS)}")
    ds.attrs.setdefault("dataset", name)
    ds.attrs["format"] = fmt
    return ds


def prepare_responses(spec: dict, subject: str, name: str, out: str | Path) -> None:
    """Read, validate and write one subject's Responses netCDF.

    Voxels that are NaN or constant in the source are dropped only when the entry says
    ``on_bad_voxels: drop`` (as for the encoders); otherwise they are an error naming the file.
    """
    ds = read_responses(spec, subject, name)
    checked = validate_responses(
        ds, source=f"{name} sub-{subject}", on_bad_voxels=spec.get("on_bad_voxels", "error")
    )
    log.info(
        "%s sub-%s: %d rows x %d voxels (space %s, %d ROI labels)",
        name,
        subject,
        checked.sizes[checked[dims.RESPONSES].dims[0]],
        checked.sizes[dims.VOXEL],
        checked.attrs.get("space", "?"),
        len(set(np.asarray(checked[dims.ROI].values).tolist()) - {dims.NO_ROI}),
    )
    write_netcdf(checked, out)


def prepare_stimuli(spec: dict, subjects: list[str], name: str, out: str | Path) -> None:
    """Write a published dataset's stimulus table (TSV) for the subjects of the entry."""
    fmt = spec.get("format")
    if fmt not in PUBLISHED:
        raise InputError(
            f"datasets.{name}: format {fmt!r} brings its own stimuli (the entry's stimuli key)"
        )
    if "root" not in spec:
        raise InputError(f"datasets.{name}: format {fmt} needs root (the dataset's folder)")
    table = PUBLISHED[fmt].read_stimuli(spec, list(subjects), name=name)
    log.info("%s: %d stimuli", name, len(table))
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
