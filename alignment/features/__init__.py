"""Model adapters -> layerwise Features (DESIGN.md section 3).

A model is described by a spec (one entry of ``models:`` in config.yaml)::

    kind: huggingface | random
    source: local folder or Hugging Face id        (huggingface)
    revision: hub revision                          (optional)
    modality: image | text
    pooling: images mean | cls | tokens; sentences last | mean | cls;
             multimodal image_tokens | text_tokens | last_token
    float16: false                                  (store features as float16, e.g. tokens)
    layers: all | [0, 2, 4] | [0.0, 0.5, 1.0]       (indices or relative depths)
    context_words: 50, window_stride_words          (narratives)
    untrained: false, seed: 0                       (random-weight control of the architecture)
    device: auto, dtype: auto                       (auto: CUDA + bfloat16, or CPU + float32)
    image_size                                      (override the processor's size)
    jpeg_draft: false                               (decode large JPEGs at a reduced scale)
    image_decoder: pil | nvimgcodec                 (vision: decode JPEGs on the GPU)
    n_workers                                       (image decoding processes; default cores-1)
    prompt, stream: language | vision               (multimodal LLMs)
    n_units / n_layers / seed                       (random)

:func:`extract_features` turns a spec and a stimulus set into one labelled array per layer,
keyed by stimulus id, so nothing downstream aligns by position; :func:`extract_to_store` streams
the same arrays into a zarr store batch by batch, resumably (:mod:`alignment.features.store`).
Supported model families: see :data:`alignment.features.huggingface.FAMILIES`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from alignment import __version__, dims
from alignment.features.spec import (
    MODEL_DEFAULTS,
    cache_key,
    layer_name,
    model_spec,
    relative_depth,
    resolve_layers,
)
from alignment.io import InputError

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_DEFAULTS",
    "Job",
    "cache_key",
    "extract_features",
    "extract_to_store",
    "model_spec",
    "prepare",
    "random_features",
    "resolve_layers",
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
        out[layer_name(layer)] = np.asarray(rows, dtype=np.float32).reshape(len(ids), n_units)
    return out


def stimulus_kind(stimuli: pd.DataFrame) -> str:
    """``narrative`` (word column), ``sentences`` (sentence column) or ``images`` (path)."""
    if "word" in stimuli.columns:
        return "narrative"
    if "sentence" in stimuli.columns:
        return "sentences"
    if "path" in stimuli.columns:
        return "images"
    raise InputError(
        f"stimuli: cannot tell the kind from columns {list(stimuli.columns)}; expected word "
        "timings (word, onset, offset, run), sentences (stimulus_id, sentence) or images "
        "(stimulus_id, path)"
    )


@dataclass
class Job:
    """One extraction, planned: rows, labels, layers, and a batch iterator.

    ``batches(start, batch_size)`` yields ``(row_start, row_stop, {hidden index: array})``
    covering rows ``start..n_rows`` in order.
    """

    name: str
    spec: dict
    kind: str
    row_dim: str
    ids: list[str]
    coords: dict
    indices: list[int]
    n_hidden_states: int
    attrs: dict
    key: str
    batches: Callable[[int, int], Iterator[tuple[int, int, dict]]]
    info: dict = field(default_factory=dict)
    layer_names: dict = field(default_factory=dict)  # index -> name (default layer_XX)
    unit_names: dict = field(default_factory=dict)  # index -> names of the layer's units

    def name_of(self, index: int) -> str:
        """Store name of hidden state (or descriptor group) ``index``."""
        return self.layer_names.get(index, layer_name(index))

    @property
    def n_rows(self) -> int:
        return len(self.ids)

    @property
    def dtype(self):
        return np.float16 if self.spec["float16"] else np.float32

    def layer_coords(self, index: int) -> dict:
        """Scalar coordinates of hidden state ``index``."""
        coords = {
            "layer_index": int(index),
            "relative_depth": relative_depth(index, self.n_hidden_states),
        }
        if index in self.unit_names:
            coords["unit_name"] = (dims.UNIT, np.asarray(self.unit_names[index], dtype=str))
        return coords

    def dims_for(self, ndim: int) -> tuple[str, ...]:
        """Dimension names of a layer array with ``ndim`` dimensions."""
        return (self.row_dim, dims.TOKEN, dims.UNIT) if ndim == 3 else (self.row_dim, dims.UNIT)

    def row_coords_at_start(self) -> dict:
        """Per-row coordinates known before extraction."""
        return dict(self.coords)

    def row_coords(self) -> dict:
        """Per-row coordinates, including those known only after extraction."""
        coords = dict(self.coords)
        if "n_context_words" in self.info:
            coords["n_context_words"] = (self.row_dim, np.asarray(self.info["n_context_words"]))
        return coords

    def final_attrs(self) -> dict:
        """Provenance, including what the extraction learned (token grid, image size)."""
        attrs = dict(self.attrs)
        for k in ("token_grid", "image_size", "n_image_tokens"):
            if k in self.info:
                v = self.info[k]
                attrs[k] = list(v) if isinstance(v, list | tuple) else v
        return attrs

    def data_array(self, index: int, values: np.ndarray) -> xr.DataArray:
        """One layer's labelled array."""
        row_dims = self.dims_for(values.ndim)
        attrs = {"token_grid": list(self.info["token_grid"])} if values.ndim == 3 else {}
        return xr.DataArray(
            values.astype(self.dtype, copy=False),
            dims=row_dims,
            coords={**self.row_coords(), **self.layer_coords(index)},
            name=dims.FEATURES,
            attrs=attrs,
        )


def _row_labels(kind: str, stimuli: pd.DataFrame):
    if kind == "narrative":
        ids = [f"{run}:{i:05d}" for i, run in enumerate(stimuli["run"])]
        row_dim = dims.WORD
        coords = {
            dims.STIMULUS_ID: (row_dim, np.asarray(ids)),
            dims.RUN: (row_dim, stimuli["run"].astype(str).to_numpy()),
            dims.ONSET: (row_dim, stimuli["onset"].to_numpy(float)),
            dims.OFFSET: (row_dim, stimuli["offset"].to_numpy(float)),
            "text": (row_dim, stimuli["word"].astype(str).to_numpy()),
        }
    else:
        ids = stimuli["stimulus_id"].astype(str).tolist()
        row_dim = dims.STIMULUS
        coords = {dims.STIMULUS_ID: (row_dim, np.asarray(ids))}
        if kind == "sentences":
            coords["text"] = (row_dim, stimuli["sentence"].astype(str).to_numpy())
    return ids, row_dim, coords


def prepare(spec: dict, stimuli: pd.DataFrame, *, name: str = "model") -> Job:
    """Load the model and plan the extraction of a stimulus set (see :class:`Job`)."""
    spec = model_spec(spec)
    modality = spec.get("modality")
    if modality not in ("image", "text"):
        raise InputError(f"model {name!r}: modality must be 'image' or 'text', got {modality!r}")
    kind = stimulus_kind(stimuli)
    stim_modality = "image" if kind == "images" else "text"
    ids, row_dim, coords = _row_labels(kind, stimuli)
    info: dict = {}
    base_attrs = {
        dims.MODEL: name,
        "modality": modality,
        "kind": spec["kind"],
        "stimulus_kind": kind,
        "spec": json.dumps(spec, default=str, sort_keys=True),
        "alignment_version": __version__,
    }

    if spec["kind"] == "random":
        n = int(spec["n_layers"])
        indices = list(range(n))
        key = cache_key(spec)

        def batches(start, batch_size):
            for a in range(start, len(ids), batch_size):
                b = min(a + batch_size, len(ids))
                arrays = random_features(ids[a:b], int(spec["n_units"]), n, int(spec["seed"]))
                yield a, b, {i: arrays[layer_name(i)] for i in indices}

        attrs = {
            **base_attrs,
            "model_source": "random",
            "model_revision": f"seed-{spec['seed']}",
            "untrained": True,
            "control": 1,
            "n_hidden_states": n,
            "n_layers": n,
            "cache_key": key,
            "dtype": "float32",
        }
        return Job(name, spec, kind, row_dim, ids, coords, indices, n, attrs, key, batches, info)

    if spec["kind"] == "lowlevel":
        return _lowlevel_job(name, spec, kind, stimuli, ids, row_dim, coords, base_attrs)

    if spec["kind"] != "huggingface":
        raise InputError(
            f"model {name!r}: unknown kind {spec['kind']!r}; use 'huggingface', 'random' or "
            "'lowlevel'"
        )
    if "source" not in spec:
        raise InputError(f"model {name!r}: 'source' (local folder or Hugging Face id) is required")
    if modality != stim_modality:
        raise InputError(
            f"model {name!r} is an {modality} model but the stimuli are "
            f"{'words' if kind == 'narrative' else kind}"
        )
    from alignment.features import huggingface  # torch: only network models need it

    loaded = huggingface.load(
        spec["source"],
        revision=spec["revision"],
        untrained=bool(spec["untrained"]),
        seed=int(spec["seed"]),
        device=spec["device"],
        dtype=spec["dtype"],
        name=name,
        stream=spec["stream"],
    )
    resolved = {"revision": loaded.revision, "dtype": str(loaded.dtype).replace("torch.", "")}
    family = loaded.family
    pooling = spec["pooling"]

    if spec["image_decoder"] != "pil" and not (kind == "images" and family == "vision"):
        raise InputError(
            f"model {name!r}: image_decoder {spec['image_decoder']!r} applies to vision "
            "transformers on images only; remove it or use image_decoder: pil"
        )
    if kind == "images" and family == "vision":
        from alignment.features import gpu_jpeg, vision

        loaded.processor = vision.load_processor(
            spec["source"], spec["revision"], spec["image_size"]
        )
        resolved["preprocessing"] = vision.preprocessing(loaded.processor, spec["jpeg_draft"])
        gpu_jpeg.check_decoder(spec["image_decoder"], fast=vision.fast_path(loaded.processor),
                               device=loaded.device, jpeg_draft=spec["jpeg_draft"],
                               source=spec["source"])  # fmt: skip
        pooling = pooling or "mean"
        indices = resolve_layers(spec["layers"], loaded.n_hidden_states, model=name)
        paths = stimuli["path"].tolist()

        def batches(start, batch_size):
            return vision.image_batches(
                loaded, paths, pooling=pooling, indices=indices, batch_size=batch_size,
                start=start, n_workers=spec.get("n_workers"), jpeg_draft=spec["jpeg_draft"],
                image_decoder=spec["image_decoder"], info=info,
            )  # fmt: skip

    elif kind == "images" and family == "mllm":
        from alignment.features import multimodal

        pooling = "mean" if spec["stream"] == "vision" else (pooling or "last_token")
        multimodal.attach_processor(loaded, spec, name=name)
        resolved["preprocessing"] = multimodal.preprocessing(loaded.processor)
        indices = resolve_layers(spec["layers"], loaded.n_hidden_states, model=name)
        paths = stimuli["path"].tolist()

        def batches(start, batch_size):
            return multimodal.image_prompt_batches(
                loaded, paths, prompt=spec["prompt"], pooling=pooling, stream=spec["stream"],
                indices=indices, batch_size=batch_size, start=start, info=info,
            )  # fmt: skip

    elif kind in ("narrative", "sentences") and family in ("encoder", "decoder"):
        from transformers import AutoTokenizer

        from alignment.features import text

        try:
            loaded.tokenizer = AutoTokenizer.from_pretrained(
                spec["source"], revision=spec["revision"]
            )
        except (OSError, ValueError) as err:
            raise InputError(
                f"model {name!r}: {spec['source']}: cannot load the tokenizer ({err})"
            ) from err
        indices = resolve_layers(spec["layers"], loaded.n_hidden_states, model=name)
        if kind == "sentences":
            from alignment.stimuli.sentences import check_sentences

            check_sentences(stimuli, f"model {name!r} stimuli")
            pooling = pooling or ("last" if family == "decoder" else "mean")
            sentences = stimuli["sentence"].astype(str).tolist()

            def batches(start, batch_size):
                return text.sentence_batches(
                    loaded, sentences, pooling=pooling, indices=indices, batch_size=batch_size,
                    start=start,
                )  # fmt: skip

        else:
            context = int(spec["context_words"])
            if context < 1:
                raise InputError(f"model {name!r}: context_words must be >= 1, got {context}")
            words = stimuli["word"].astype(str).tolist()
            runs = stimuli["run"].astype(str).tolist()
            if family == "decoder":
                stride = int(spec["window_stride_words"] or max(1, context // 2))
                resolved["window_stride_words"] = stride
                pooling = "last_subword_token"

                def batches(start, batch_size):
                    return text.decoder_word_batches(
                        loaded, words, runs, context_words=context, stride=stride,
                        indices=indices, batch_size=batch_size, start=start, info=info,
                    )  # fmt: skip

            else:
                pooling = "mean_subword_tokens"
                info["n_context_words"] = _encoder_context(runs, context)

                def batches(start, batch_size):
                    return text.encoder_word_batches(
                        loaded, words, runs, context_words=context, indices=indices,
                        batch_size=batch_size, start=start,
                    )  # fmt: skip

    else:
        raise InputError(
            f"model {name!r}: a {family} model ({loaded.model_type}) cannot read {kind} stimuli"
        )

    key = cache_key(spec, resolved)
    attrs = {
        **base_attrs,
        "model_source": str(spec["source"]),
        "model_revision": loaded.revision,
        "model_class": type(loaded.model).__name__,
        "model_type": loaded.model_type,
        "family": family,
        "untrained": bool(loaded.untrained),
        "control": 0,
        "seed": int(spec["seed"]),
        "pooling": pooling,
        "n_hidden_states": loaded.n_hidden_states,
        "n_layers": len(indices),
        "compute_dtype": resolved["dtype"],
        "dtype": np.dtype(np.float16 if spec["float16"] else np.float32).name,
        "cache_key": key,
    }
    if kind == "narrative":
        attrs["context_words"] = int(spec["context_words"])
        if "window_stride_words" in resolved:
            attrs["window_stride_words"] = resolved["window_stride_words"]
    if family == "mllm":
        attrs["stream"] = spec["stream"]
        attrs["prompt"] = loaded.extra["prompt"]
    job = Job(
        name,
        spec,
        kind,
        row_dim,
        ids,
        coords,
        indices,
        loaded.n_hidden_states,
        attrs,
        key,
        batches,
        info,
    )
    job.loaded = loaded
    return job


def _lowlevel_job(name, spec, kind, stimuli, ids, row_dim, coords, base_attrs) -> Job:
    """Plan the low-level descriptors of a stimulus set (:mod:`alignment.features.lowlevel`)."""
    from alignment.features import lowlevel

    stim_modality = "image" if kind == "images" else "text"
    if spec["modality"] != stim_modality or kind == "sentences":
        raise InputError(
            f"model {name!r}: lowlevel features exist for images (image modality) and "
            f"narratives (text modality), not {kind} with modality {spec['modality']!r}"
        )
    n_bands = 4 if spec.get("n_bands") is None else spec["n_bands"]
    resolved, extra = {}, {}
    if kind == "narrative":
        names = list(lowlevel.TEXT_LAYERS)
        values, extra = lowlevel.text_features(stimuli, spec.get("phones"))
        if spec.get("phones"):
            files = lowlevel.phone_files(spec["phones"], stimuli["run"]).values()
            resolved["phones"] = lowlevel.files_digest(files)

        def batches(start, batch_size):
            for a in range(start, len(ids), batch_size):
                b = min(a + batch_size, len(ids))
                yield a, b, {i: values[n][a:b] for i, n in enumerate(names)}

    else:
        from PIL import Image

        from alignment.stimuli.images import load_images

        names = list(lowlevel.IMAGE_LAYERS)
        lowlevel.band_edges(n_bands)  # validates n_bands
        paths = stimuli["path"].tolist()
        size = spec["image_size"]

        def batches(start, batch_size):
            for a in range(start, len(ids), batch_size):
                b = min(a + batch_size, len(ids))
                rows = []
                for img in load_images(paths[a:b], lazy=True)[:]:
                    if size:
                        img = img.resize((int(size), int(size)), Image.Resampling.BICUBIC)
                    rows.append(lowlevel.image_descriptors(np.asarray(img), n_bands))
                yield (
                    a,
                    b,
                    {
                        i: np.stack([r[n] for r in rows]).astype(np.float32)
                        for i, n in enumerate(names)
                    },
                )

    key = cache_key(spec, resolved)
    attrs = {
        **base_attrs,
        "model_source": "lowlevel",
        "model_revision": f"lowlevel-{__version__}",
        "untrained": False,
        "control": 0,
        "n_hidden_states": len(names),
        "n_layers": len(names),
        "cache_key": key,
        "dtype": "float32",
        "descriptors": names,
        **extra,
    }
    if kind == "images":
        attrs["n_bands"] = n_bands
    job = Job(name, spec, kind, row_dim, ids, coords, list(range(len(names))), len(names), attrs,
              key, batches)  # fmt: skip
    job.layer_names = dict(enumerate(names))
    job.unit_names = {i: lowlevel.unit_names(n, n_bands) for i, n in enumerate(names)}
    return job


def _encoder_context(runs, context_words: int) -> np.ndarray:
    out = np.zeros(len(runs), int)
    for i in range(len(runs)):
        same = 1
        while i - same >= 0 and same < context_words and runs[i - same] == runs[i]:
            same += 1
        out[i] = same
    return out


def extract_features(
    spec: dict, stimuli: pd.DataFrame, *, name: str = "model"
) -> tuple[dict[str, xr.DataArray], dict]:
    """Extract layerwise features of a stimulus set, in memory.

    Parameters
    ----------
    spec : dict
        Model spec (see module docstring).
    stimuli : DataFrame
        Images: ``stimulus_id`` and ``path``. Sentences: ``stimulus_id`` and ``sentence``.
        Narratives: ``word``, ``onset``, ``offset``, ``run`` (one row per word, spoken order).
    name : str
        The model's name in the config, stored as provenance.

    Returns
    -------
    layers : dict of layer name to DataArray
        Dims (stimulus, unit) for images and sentences, (word, unit) for narratives, with
        id/timing coords; (stimulus, token, unit) for ``pooling: tokens``, with ``token_grid``
        ([rows, columns] of the patch grid, row-major) in the DataArray's attrs. Scalar coords
        ``layer_index`` (hidden-state index, 0 = embeddings) and ``relative_depth``
        (``layer_index / (n_hidden_states - 1)``). float32, or float16 with ``float16: true``.
    attrs : dict
        Provenance to store with the features (``untrained``, ``cache_key``,
        ``n_hidden_states``, ``model_revision``, ...).
    """
    job = prepare(spec, stimuli, name=name)
    parts: dict[int, list[np.ndarray]] = {i: [] for i in job.indices}
    done = 0
    for a, b, arrays in _progress(job, job.batches(0, int(job.spec["batch_size"]))):
        if a != done:
            raise RuntimeError(f"batches out of order: expected row {done}, got {a}")
        for i in job.indices:
            parts[i].append(arrays[i])
        done = b
    layers = {job.name_of(i): job.data_array(i, np.concatenate(parts[i])) for i in job.indices}
    return layers, job.final_attrs()


def _progress(job: Job, iterator, start: int = 0):
    """Wrap a batch iterator with a progress bar and a closing log line with stimuli/s."""
    import time

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    n = 0
    with tqdm(total=job.n_rows, initial=start, desc=f"features {job.name}", unit=job.row_dim,
              disable=None, mininterval=2.0) as bar:  # fmt: skip
        for a, b, arrays in iterator:
            bar.update(b - a)
            n += b - a
            yield a, b, arrays
    dt = time.perf_counter() - t0
    what = {"stimulus": "stimuli", "word": "words"}.get(job.row_dim, job.row_dim)
    log.info(
        "%s: %d %s in %.1f s (%.1f %s/s), %d layers",
        job.name, n, what, dt, n / max(dt, 1e-9), what, len(job.indices),
    )  # fmt: skip


def extract_to_store(
    spec: dict, stimuli: pd.DataFrame, out, *, name: str = "model", extra_attrs=None
):
    """Extract into a zarr store batch by batch; resumable and atomic (see store module)."""
    from alignment.features.store import write_store

    job = prepare(spec, stimuli, name=name)
    if extra_attrs:
        job.attrs.update(extra_attrs)
    return write_store(job, out, progress=_progress)
