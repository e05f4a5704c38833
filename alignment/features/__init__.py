"""Model adapters -> layerwise Features (DESIGN.md section 3).

A model is described by a spec (one entry of ``models:`` in config.yaml)::

    kind: huggingface | random
    source: local folder or Hugging Face id        (huggingface)
    modality: image | text
    pooling: mean | cls | tokens                    (images; tokens keeps every patch token)
    float16: false                                  (store features as float16, e.g. tokens)
    context_words: 50                               (narratives)
    layers: all | [0, 2, 4]
    n_units / n_layers / seed                       (random)

:func:`extract_features` turns a spec and a stimulus set into one labelled array per layer,
keyed by stimulus id, so nothing downstream aligns by position.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import xarray as xr

from alignment import __version__, dims
from alignment.features import huggingface
from alignment.io import InputError
from alignment.stimuli.images import load_images

MODEL_DEFAULTS = {
    "kind": "huggingface",
    "revision": None,
    "pooling": "mean",
    "layers": "all",
    "context_words": 50,
    "batch_size": 32,
    "n_units": 64,
    "n_layers": 1,
    "seed": 0,
    "float16": False,
}


def model_spec(spec: dict) -> dict:
    """Spec with defaults filled in."""
    return {**MODEL_DEFAULTS, **spec}


def cache_key(spec: dict) -> str:
    """Hash of every spec entry that changes the numbers (source, revision, pooling, context...)."""
    spec = model_spec(spec)
    relevant = {k: spec[k] for k in sorted(spec) if k not in ("batch_size", "label")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def random_features(ids, n_units: int, n_layers: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Gaussian features keyed by stimulus id: the same id always gets the same vector.

    A control model: any score it reaches is what the statistics let through by chance.
    """
    out = {}
    for layer in range(n_layers):
        rows = []
        for sid in ids:
            digest = hashlib.sha256(f"{seed}:{layer}:{sid}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            rows.append(rng.standard_normal(n_units))
        out[huggingface.layer_name(layer)] = np.asarray(rows, dtype=np.float32).reshape(
            len(ids), n_units
        )
    return out


def extract_features(
    spec: dict, stimuli: pd.DataFrame, *, name: str = "model"
) -> tuple[dict[str, xr.DataArray], dict]:
    """Extract layerwise features of a stimulus set.

    Parameters
    ----------
    spec : dict
        Model spec (see module docstring).
    stimuli : DataFrame
        For images: ``stimulus_id`` and ``path``. For narratives: ``word``, ``onset``,
        ``offset``, ``run`` (one row per word, in spoken order).
    name : str
        The model's name in the config, stored as provenance.

    Returns
    -------
    layers : dict of layer name to DataArray
        Dims (stimulus, unit) for images, (word, unit) for narratives, with id/timing coords;
        (stimulus, token, unit) for ``pooling: tokens``, with ``token_grid`` ([rows, columns]
        of the patch grid, row-major) in the DataArray's attrs. float32, or float16 when the
        spec sets ``float16: true``.
    attrs : dict
        Provenance to store with the features.
    """
    spec = model_spec(spec)
    modality = spec.get("modality")
    if modality not in ("image", "text"):
        raise InputError(f"model {name!r}: modality must be 'image' or 'text', got {modality!r}")
    narrative = "word" in stimuli.columns
    if narrative:
        ids = [f"{run}:{i:05d}" for i, run in enumerate(stimuli["run"])]
    else:
        ids = stimuli["stimulus_id"].astype(str).tolist()

    if spec["kind"] == "random":
        arrays = random_features(
            ids, int(spec["n_units"]), int(spec["n_layers"]), int(spec["seed"])
        )
        info = {
            "model_source": "random",
            "model_revision": f"seed-{spec['seed']}",
            "n_layers": len(arrays),
        }
    elif spec["kind"] == "huggingface":
        if "source" not in spec:
            raise InputError(
                f"model {name!r}: 'source' (local folder or Hugging Face id) is required"
            )
        if narrative:
            if modality != "text":
                raise InputError(f"model {name!r} is an {modality} model but the stimuli are words")
            arrays, info = huggingface.word_features(
                spec["source"],
                stimuli["word"].tolist(),
                stimuli["run"].astype(str).tolist(),
                context_words=int(spec["context_words"]),
                layers=spec["layers"],
                batch_size=int(spec["batch_size"]),
                revision=spec["revision"],
            )
        else:
            if modality != "image":
                raise InputError(f"model {name!r} is a {modality} model but the stimuli are images")
            arrays, info = huggingface.image_features(
                spec["source"],
                load_images(stimuli["path"]),
                pooling=spec["pooling"],
                layers=spec["layers"],
                batch_size=int(spec["batch_size"]),
                revision=spec["revision"],
            )
        info["untrained"] = huggingface.is_untrained(spec["source"])
    else:
        raise InputError(
            f"model {name!r}: unknown kind {spec['kind']!r}; use 'huggingface' or 'random'"
        )

    row_dim = dims.WORD if narrative else dims.STIMULUS
    coords = {dims.STIMULUS_ID: (row_dim, ids)}
    if narrative:
        coords.update(
            {
                dims.RUN: (row_dim, stimuli["run"].astype(str).to_numpy()),
                dims.ONSET: (row_dim, stimuli["onset"].to_numpy(float)),
                dims.OFFSET: (row_dim, stimuli["offset"].to_numpy(float)),
                "text": (row_dim, stimuli["word"].astype(str).to_numpy()),
            }
        )
    dtype = np.float16 if spec["float16"] else np.float32
    layers = {}
    for layer, arr in arrays.items():
        if arr.ndim == 3:
            da = xr.DataArray(
                arr.astype(dtype, copy=False),
                dims=(row_dim, dims.TOKEN, dims.UNIT),
                coords=coords,
                name=dims.FEATURES,
                attrs={"token_grid": list(info["token_grid"])},
            )
        else:
            da = xr.DataArray(
                arr.astype(dtype, copy=False),
                dims=(row_dim, dims.UNIT),
                coords=coords,
                name=dims.FEATURES,
            )
        layers[layer] = da
    attrs = {
        dims.MODEL: name,
        "modality": modality,
        "kind": spec["kind"],
        # baselines are flagged in every output: untrained networks and random-feature controls
        "untrained": bool(info.pop("untrained", spec["kind"] == "random")),
        "control": int(spec["kind"] == "random"),
        "cache_key": cache_key(spec),
        "spec": json.dumps(spec, default=str),
        "dtype": np.dtype(dtype).name,
        "alignment_version": __version__,
        **info,
    }
    return layers, attrs
