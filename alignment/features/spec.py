"""Model specs: defaults, layer selection (indices or relative depths) and the cache key.

A spec is one entry of ``models:`` in config.yaml. Every entry that changes the numbers is part
of the cache key, and only those: entries that change the speed (``batch_size``, ``device``,
``n_workers``) or describe the model for the reports (``family``, ``params``,
``instruction_tuned``, ``trained``, ``label``) are not, and neither is any entry the extractor
does not read.
"""

from __future__ import annotations

import hashlib
import json
import numbers

from alignment.io import InputError

MODEL_DEFAULTS = {
    "kind": "huggingface",
    "revision": None,
    "pooling": None,  # per stimulus kind: images mean, sentences last (decoders) / mean
    "layers": "all",
    "context_words": 50,
    "window_stride_words": None,  # decoders: default context_words // 2
    "batch_size": 32,
    "n_units": 64,
    "n_layers": 1,
    "seed": 0,
    "float16": False,
    "untrained": False,
    "device": "auto",
    "dtype": "auto",
    "image_size": None,
    "jpeg_draft": False,  # images: decode large JPEGs at a reduced scale (approximate)
    "image_decoder": "pil",  # vision: "nvimgcodec" decodes JPEGs on the GPU (gpu_jpeg.py)
    "prompt": None,
    "stream": "language",  # multimodal: language model or vision tower layers
    "n_bands": None,  # lowlevel images: spatial-frequency bands (lowlevel's own default)
    "phones": None,  # lowlevel narratives: TextGrids with a phone tier
}

# entries that change speed only, never the numbers
SPEED_ONLY = ("batch_size", "device", "n_workers")
# the entries that change the numbers: the only ones in the cache key
KEY_FIELDS = tuple(sorted((set(MODEL_DEFAULTS) | {"source", "modality"}) - set(SPEED_ONLY)))


def model_spec(spec: dict) -> dict:
    """Spec with defaults filled in."""
    return {**MODEL_DEFAULTS, **spec}


def cache_key(spec: dict, resolved: dict | None = None) -> str:
    """Hash of everything that changes the numbers.

    Parameters
    ----------
    spec : dict
        The model spec (source, revision, pooling, layers, context, prompt, untrained, seed...).
    resolved : dict, optional
        What the spec resolves to at run time: the model revision (hub commit or content hash
        of a local folder), the compute dtype, the preprocessing (image processor settings).

    Returns
    -------
    str
        16 hex digits. Only :data:`KEY_FIELDS` enter it (not ``batch_size``, ``device`` or
        descriptive entries such as ``family``).
    """
    spec = model_spec(spec)
    relevant = {k: spec[k] for k in sorted(spec) if k in KEY_FIELDS}
    if resolved:
        relevant["_resolved"] = {k: resolved[k] for k in sorted(resolved)}
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_layers(layers, n_hidden_states: int, *, model: str = "model") -> list[int]:
    """Hidden-state indices selected by ``layers``.

    Parameters
    ----------
    layers : "all", list of int, or list of float in [0, 1]
        ``all``; hidden-state indices (0 = embeddings, negative counts from the end); or
        relative depths (any float in the list makes the whole list relative), mapped to
        ``round(depth * (n_hidden_states - 1))``.
    n_hidden_states : int
        Embeddings + one per block.
    model : str
        Model name for error messages.

    Returns
    -------
    list of int
        Sorted, unique, non-negative indices.
    """
    n = int(n_hidden_states)
    if layers in (None, "all"):
        return list(range(n))
    if isinstance(layers, str | numbers.Number) or not len(layers):
        raise InputError(f"{model}: layers must be 'all' or a non-empty list, got {layers!r}")
    if any(isinstance(x, bool) or not isinstance(x, numbers.Real) for x in layers):
        raise InputError(f"{model}: layers must be numbers, got {layers!r}")
    if any(isinstance(x, float) for x in layers):
        bad = [x for x in layers if not 0.0 <= x <= 1.0]
        if bad:
            raise InputError(
                f"{model}: relative depths must lie in [0, 1], got {bad} (a list with a float "
                "is read as relative depths)"
            )
        return sorted({round(float(x) * (n - 1)) for x in layers})
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise InputError(
            f"{model}: layer index {bad} out of range: the model has {n} hidden states (0..{n - 1})"
        )
    return sorted({int(i) % n for i in layers})


def relative_depth(index: int, n_hidden_states: int) -> float:
    """``index / (n_hidden_states - 1)``: 0 = embeddings, 1 = last layer."""
    return float(index) / max(1, n_hidden_states - 1)


def layer_name(index: int) -> str:
    """Canonical name of hidden state ``index`` (0 = embeddings)."""
    return f"layer_{index:02d}"
