"""The encoder registry: every encoder kind plugs into the one CV loop by registering a class.

An encoder kind is a scikit-learn-style estimator (``fit(X, Y)`` returns self, ``predict(X)``)
with a class method ``from_spec(spec, context)`` that builds it from its config entry and the
:class:`EncoderContext` of one outer fold. The loop in :mod:`alignment.evaluation` never
branches on the kind: what differs between encoders lives in their ``from_spec`` and in the
features they take (``inputs``):

- ``"pooled"``: (samples, units) matrices, one per layer (ridge, banded ridge, in-context);
- ``"tokens"``: (samples, tokens, units) patch tokens with a token grid (attention routing).

Optional fitted attributes the loop reads when present: ``best_alphas_`` (per voxel, stored as
the Scores' ``alpha``). Optional method: ``interpret(X)`` returning a dict of arrays whose first
axis is the samples of ``X`` (e.g. attention maps), gathered over test folds. Optional method:
``predict_split(X)`` returning ``{"split": (n_spaces, samples, voxels)}`` (each feature space's
part of the prediction) and optionally ``"without"`` (the predictions of the model refitted
without each space), gathered over test folds and scored as per-space R² (banded ridge).
Optional class method: ``fit_layers(spec, contexts, Xs, Y)`` fitting one encoder per layer on
the same responses and fold at once (e.g. ridge's batched layer sweep); :func:`fit_encoders`
uses it when present and fits the layers one by one otherwise.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np

from alignment.io import InputError

INPUT_KINDS = ("pooled", "tokens")
# keys every encoder spec may hold, read by the CV loop rather than by the estimator
# (layer_batch: how many layers the loop fits at once, "all" by default; null: the image null,
# permute | refit; shards: voxel shards, read by the workflow)
GENERIC_KEYS = ("kind", "layers", "layer_batch", "null", "shards")


@dataclass
class EncoderContext:
    """What an encoder may need beyond its config entry, for one outer fold.

    Attributes
    ----------
    inner_cv : list of (train, test) index arrays
        Inner folds over the rows passed to ``fit`` (grouped by image, or blocked with a gap
        for time series); encoders that tune or early-stop use them, never the test rows.
    experiment : {"images", "narrative"}
    voxels : dict of str to ndarray
        Voxel labels (``roi``, ``hemi``, ``vertex``) of the responses' columns.
    features : dict
        Attributes of the features store and layer (``token_grid``, ``model``, ``cache_key``...).
    inputs : dict of str to str
        Extra files the workflow passed for this encoder (e.g. a meta-trained checkpoint).
    fold : int
        Index of the outer fold.
    random_state : int
    subject, dataset : str, optional
        The responses' ``subject`` and ``dataset`` attrs (e.g. an in-context checkpoint checks
        that it was not meta-trained on this subject).
    """

    inner_cv: list = field(default_factory=list)
    experiment: str = "images"
    voxels: dict = field(default_factory=dict)
    features: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    fold: int = 0
    random_state: int = 0
    subject: str | None = None
    dataset: str | None = None


@dataclass(frozen=True)
class EncoderKind:
    """A registered encoder kind: its estimator class and the features it takes."""

    name: str
    estimator: type
    inputs: str = "pooled"
    experiments: tuple = ("images", "narrative")


ENCODERS: dict[str, EncoderKind] = {}

# The built-in kinds: the module that registers each, the features it takes and its
# experiments. The workflow pairs models with encoders from this table without importing the
# torch-heavy modules (every job and every Snakemake start-up would pay seconds for it); a
# module is imported when its kind is first built, and its decorator must agree with the table.
BUILTIN: dict[str, tuple[str, str, tuple]] = {
    "ridge": ("alignment.encoders.ridge", "pooled", ("images", "narrative", "sentences")),
    "routing": ("alignment.encoders.routing", "tokens", ("images",)),
    "incontext": ("alignment.encoders.incontext", "pooled", ("images",)),
    "banded": ("alignment.encoders.banded", "pooled", ("images", "narrative", "sentences")),
}


def register_encoder(name: str, *, inputs: str = "pooled", experiments=("images", "narrative")):
    """Class decorator adding an estimator to :data:`ENCODERS` under ``name``.

    Parameters
    ----------
    name : str
        The ``kind`` used in config.yaml.
    inputs : {"pooled", "tokens"}
        The features the estimator's ``fit`` and ``predict`` take.
    experiments : tuple of str
        Experiment kinds the encoder supports (``images``, ``narrative``).
    """
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs must be one of {INPUT_KINDS}, got {inputs!r}")

    def add(cls):
        if not hasattr(cls, "from_spec"):
            raise TypeError(f"{cls.__name__} needs a from_spec(spec, context) class method")
        if name in BUILTIN and BUILTIN[name][1:] != (inputs, tuple(experiments)):
            raise TypeError(f"{cls.__name__}: registration of {name!r} disagrees with BUILTIN")
        ENCODERS[name] = EncoderKind(name, cls, inputs, tuple(experiments))
        return cls

    return add


def encoder_kind(spec: dict | str) -> EncoderKind:
    """The registered kind of an encoder spec (or kind name); a clear error for an unknown one."""
    name = spec if isinstance(spec, str) else spec.get("kind", "ridge")
    if name not in ENCODERS and name in BUILTIN:
        importlib.import_module(BUILTIN[name][0])  # its decorator registers the kind
    if name not in ENCODERS:
        raise InputError(
            f"unknown encoder kind {name!r}; available: {sorted(set(ENCODERS) | set(BUILTIN))}"
        )
    return ENCODERS[name]


def make_encoder(spec: dict, context: EncoderContext | None = None):
    """Build the estimator of an encoder spec (``kind`` plus its parameters) for one fold."""
    kind = encoder_kind(spec)
    params = {k: v for k, v in spec.items() if k not in GENERIC_KEYS}
    return kind.estimator.from_spec(params, context or EncoderContext())


def fit_encoders(spec: dict, contexts: list, Xs: list, Y) -> list:
    """Fitted encoders of several layers on the same responses ``Y`` and fold.

    Uses the kind's optional ``fit_layers(spec, contexts, Xs, Y)`` class method when it has one
    (any kind may), else builds and fits one encoder per layer.
    """
    kind = encoder_kind(spec)
    params = {k: v for k, v in spec.items() if k not in GENERIC_KEYS}
    if hasattr(kind.estimator, "fit_layers"):
        return kind.estimator.fit_layers(params, list(contexts), list(Xs), Y)
    return [
        kind.estimator.from_spec(params, context).fit(X, Y)
        for context, X in zip(contexts, Xs, strict=True)
    ]


def select_layers(spec: dict, layers: dict, source: str = "features") -> dict:
    """The layers an encoder runs on: all, or those its spec's ``layers`` names.

    ``layers`` in an encoder spec is ``all`` (default), a list of layer names
    (``layer_05``) or of positions in the store (``-1`` = last).
    """
    wanted = spec.get("layers", "all")
    if wanted in (None, "all"):
        return dict(layers)
    names = list(layers)
    out = {}
    for item in wanted:
        if isinstance(item, int) and -len(names) <= item < len(names):
            out[names[item]] = layers[names[item]]
        elif item in layers:
            out[item] = layers[item]
        else:
            raise InputError(
                f"{source}: encoder {spec.get('kind')!r} asks for layer {item!r}; "
                f"the store holds {names}"
            )
    return out


def features_kind(model_spec: dict) -> str:
    """``tokens`` for a model spec that keeps patch tokens, else ``pooled``."""
    return "tokens" if model_spec.get("pooling") == "tokens" else "pooled"


def accepts(encoder_spec: dict, model_spec: dict, experiment: str) -> bool:
    """Whether an encoder runs on a model's features in an experiment (images or narrative).

    The workflow pairs every dataset model with every dataset encoder that accepts it, so a
    tokens model feeds the routing encoder and a pooled model feeds ridge.
    """
    name = encoder_spec.get("kind", "ridge")
    if name in ENCODERS:
        inputs, experiments = ENCODERS[name].inputs, ENCODERS[name].experiments
    elif name in BUILTIN:
        _, inputs, experiments = BUILTIN[name]
    else:
        inputs, experiments = encoder_kind(name).inputs, encoder_kind(name).experiments
    return inputs == features_kind(model_spec) and experiment in experiments


def check_features(X: np.ndarray, kind: EncoderKind, source: str) -> None:
    """Raise when features have the wrong rank for an encoder kind."""
    want = 2 if kind.inputs == "pooled" else 3
    if X.ndim != want:
        shape = "(samples, units)" if want == 2 else "(samples, tokens, units)"
        raise InputError(
            f"{source}: encoder kind {kind.name!r} takes {kind.inputs} features {shape}, "
            f"got an array of shape {X.shape}"
        )
