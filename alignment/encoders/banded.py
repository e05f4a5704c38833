"""Banded ridge over several feature spaces, with per-space R² (variance partitioning).

Each feature space gets its own regularisation: himalaya's random search over the simplex of
space weights (``gamma``) times a grid of alphas, chosen per voxel by inner cross-validation,
in the primal form (``himalaya.ridge.BandedRidgeCV``) when there are fewer features than
samples, else in the dual form (``himalaya.kernel_ridge.MultipleKernelRidgeCV`` on one linear
kernel per space, built by ``ColumnKernelizer``).

The CV loop (:mod:`alignment.evaluation`) sees one design matrix: the spaces' matrices side by
side (each built like ridge's features: delayed and filtered for narratives), with
``context.features["space_sizes"]`` and ``["spaces"]`` naming the columns of each space. Beyond
``predict``, the encoder offers the registry's optional ``predict_split(X)``: the held-out
prediction of each space (``split``; they sum to the joint prediction less the intercept,
which is scored as himalaya's ``r2_score_split``) and, with ``unique_variance``, the
prediction of the model refitted without each space (``without``; joint R² minus its R² is the
space's unique variance).

In config.yaml::

    encoders:
      banded:
        kind: banded
        spaces:
          - {model: minilm, layer: layer_04}
          - {model: lowlevel-text, layer: [word_rate, phoneme_rate]}
        n_iter: 20
"""

from __future__ import annotations

import itertools

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from alignment.encoders.registry import EncoderContext, register_encoder
from alignment.encoders.ridge import DEFAULT_ALPHAS, _check_xy, available_backend
from alignment.io import InputError

SPACE_KEYS = ("model", "layer", "name")


def space_name(entry: dict) -> str:
    """Name of one space of a banded spec: its ``name``, else ``model:layer`` (``+`` joined)."""
    if entry.get("name"):
        return str(entry["name"])
    layer = entry.get("layer")
    layers = layer if isinstance(layer, list) else [layer]
    return f"{entry.get('model')}:{'+'.join(str(x) for x in layers)}"


def check_spaces(spec: dict, encoder: str = "banded") -> list[dict]:
    """The ``spaces`` of a banded spec, validated: at least two, each with a model and layer(s),
    distinct names. Raises :class:`InputError` naming the config key."""
    spaces = spec.get("spaces")
    key = f"encoders.{encoder}.spaces"
    if not isinstance(spaces, list) or len(spaces) < 2:
        raise InputError(f"{key}: a banded encoder needs a list of at least 2 feature spaces")
    for i, entry in enumerate(spaces):
        layer = entry.get("layer") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not entry.get("model") or layer is None or layer == []:
            raise InputError(f"{key}[{i}]: each space needs a model and a layer, got {entry!r}")
        unknown = sorted(set(entry) - set(SPACE_KEYS))
        if unknown:
            raise InputError(f"{key}[{i}]: unknown key(s) {unknown}; allowed {list(SPACE_KEYS)}")
    names = [space_name(e) for e in spaces]
    if len(set(names)) != len(names):
        raise InputError(f"{key}: two spaces have the same name ({names}); give them a name")
    return spaces


def space_models(spec: dict) -> list[str]:
    """The models a banded spec reads, in order, each once."""
    return list(dict.fromkeys(str(e["model"]) for e in spec.get("spaces", [])))


def space_layers(spec: dict, stores: dict, encoder: str = "banded") -> dict:
    """The layers of every space of a banded spec, read from the models' feature stores.

    Parameters
    ----------
    spec : dict
        The banded encoder's config entry (``spaces``: list of ``{model, layer}``; ``layer`` a
        layer name, a position in the store, or a list of them concatenated into one space).
    stores : dict of model name to path
        The features store of every model the spaces name.
    encoder : str
        The encoder's name in the config (for messages).

    Returns
    -------
    dict ``{joint name: {space name: DataArray}}``: one joint "layer" of the CV loop made of
    several spaces (:func:`alignment.evaluation.score_layers` fits them together).
    """
    import xarray as xr

    from alignment import dims
    from alignment.io import read_zarr_layers

    spaces = {}
    cache = {}
    for i, entry in enumerate(check_spaces(spec, encoder)):
        model = str(entry["model"])
        if model not in stores:
            raise InputError(
                f"encoders.{encoder}.spaces[{i}].model: {model!r} has no features store here "
                f"(given: {sorted(stores)}); is it defined under models?"
            )
        path = str(stores[model])
        if path not in cache:
            cache[path] = read_zarr_layers(path)
        layers = cache[path]
        names = list(layers)
        wanted = entry["layer"] if isinstance(entry["layer"], list) else [entry["layer"]]
        parts, resolved = [], []
        for item in wanted:
            if (
                isinstance(item, int)
                and not isinstance(item, bool)
                and -len(names) <= item < len(names)
            ):
                item = names[item]
            if item not in layers:
                raise InputError(
                    f"encoders.{encoder}.spaces[{i}].layer: {path} has no layer {item!r}; "
                    f"it holds {names}"
                )
            parts.append(layers[item])
            resolved.append(item)
        if len(parts) > 1:  # layers side by side: their scalar coords (depth) no longer apply
            parts = [p.drop_vars([c for c in p.coords if p[c].ndim == 0]) for p in parts]
        arr = parts[0] if len(parts) == 1 else xr.concat(parts, dim=dims.UNIT, coords="minimal")
        arr = arr.copy()
        arr.attrs = {**arr.attrs, "store": path, "model": model}
        name = space_name({**entry, "layer": resolved})  # positions read as layer names
        if name in spaces:
            raise InputError(f"encoders.{encoder}.spaces[{i}]: a second space {name!r}")
        spaces[name] = arr
    return {" + ".join(spaces): spaces}


def _slices(sizes) -> list[slice]:
    edges = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


@register_encoder("banded", experiments=("images", "narrative", "sentences"))
class BandedRidgeEncoder(RegressorMixin, BaseEstimator):
    """Banded ridge regression from several feature spaces to every voxel (himalaya).

    Features are standardised with the training mean and standard deviation and the responses
    centred with the training mean (the intercept), so each space's prediction is its own.

    Parameters
    ----------
    space_sizes : list of int
        Columns of each space in ``X`` (side by side, in order).
    space_names : list of str, optional
    alphas : array-like
        Ridge strengths searched for each voxel (per sampled space weighting).
    n_iter : int
        Space weightings sampled from a Dirichlet distribution (the first is uniform).
    concentration : float or list of float
        Dirichlet concentrations, cycled through.
    cv : int or iterable of (train, test)
        Inner cross-validation (explicit folds from the CV loop's context).
    backend : str
        ``auto`` (CUDA when present), ``numpy``, ``torch``, ``torch_cuda``.
    solver : {"auto", "primal", "dual"}
        ``auto``: primal (BandedRidgeCV) when features <= samples, else dual
        (MultipleKernelRidgeCV with ColumnKernelizer).
    unique_variance : bool
        Also fit the model without each space (``predict_split`` then returns ``without``).
    n_targets_batch : int, optional
        Voxels solved at once by himalaya.
    random_state : int

    Attributes
    ----------
    best_alphas_ : ndarray (n_voxels,)
        ``1 / sum(exp(deltas))``, himalaya's equivalent alpha.
    space_weights_ : ndarray (n_spaces, n_voxels)
        Normalised space weights ``exp(deltas) / sum(exp(deltas))``.
    solver_ : str
    n_features_in_ : int
    """

    def __init__(
        self,
        space_sizes=None,
        space_names=None,
        alphas=DEFAULT_ALPHAS,
        n_iter=20,
        concentration=(0.1, 1.0),
        cv=5,
        backend="numpy",
        solver="auto",
        unique_variance=True,
        n_targets_batch=None,
        random_state=0,
    ):
        self.space_sizes = space_sizes
        self.space_names = space_names
        self.alphas = alphas
        self.n_iter = n_iter
        self.concentration = concentration
        self.cv = cv
        self.backend = backend
        self.solver = solver
        self.unique_variance = unique_variance
        self.n_targets_batch = n_targets_batch
        self.random_state = random_state

    @classmethod
    def from_spec(cls, spec: dict, context: EncoderContext) -> BandedRidgeEncoder:
        """Build from a config entry; space sizes and names come from the fold's context."""
        spec = {k: v for k, v in spec.items() if k != "spaces"}
        if "alphas" in spec:
            spec["alphas"] = np.asarray(spec["alphas"], dtype=float)
        sizes = context.features.get("space_sizes")
        if not sizes:
            raise InputError(
                "a banded encoder needs several feature spaces (its spec's spaces), got one "
                f"features matrix of layer {context.features.get('layer')!r}"
            )
        return cls(
            space_sizes=list(sizes),
            space_names=list(context.features.get("spaces") or []) or None,
            cv=context.inner_cv or 5,
            random_state=context.random_state,
            **spec,
        )

    def _check_params(self, n_features: int) -> list[slice]:
        sizes = [int(s) for s in (self.space_sizes or [])]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"space_sizes must list >= 2 positive widths, got {self.space_sizes}")
        if sum(sizes) != n_features:
            raise ValueError(f"space_sizes {sizes} add up to {sum(sizes)}, X has {n_features}")
        if self.solver not in ("auto", "primal", "dual"):
            raise ValueError(f"solver must be 'auto', 'primal' or 'dual', got {self.solver!r}")
        alphas = np.asarray(self.alphas, dtype=float).ravel()
        if alphas.size == 0 or (alphas <= 0).any():
            raise ValueError(f"alphas must be positive numbers, got {alphas}")
        if int(self.n_iter) < 1:
            raise ValueError(f"n_iter must be >= 1, got {self.n_iter}")
        return _slices(sizes)

    def _cv(self):
        if isinstance(self.cv, int | np.integer):
            return int(self.cv)
        return [(np.asarray(t), np.asarray(v)) for t, v in self.cv]

    def _fit_spaces(self, Xs: list, Y: np.ndarray):
        """One himalaya banded fit on centred data, no intercept; returns (model, form)."""
        from himalaya.backend import set_backend

        backend = set_backend(available_backend(self.backend), on_error="warn")
        n, p = Y.shape[0], sum(x.shape[1] for x in Xs)
        form = self.solver if self.solver != "auto" else ("primal" if p <= n else "dual")
        params = {
            "alphas": np.asarray(self.alphas, dtype=np.float32),
            "n_iter": int(self.n_iter) if len(Xs) > 1 else 1,
            "concentration": list(np.atleast_1d(self.concentration).astype(float)),
            "progress_bar": False,
        }
        if self.n_targets_batch:
            params["n_targets_batch"] = int(self.n_targets_batch)
            params["n_targets_batch_refit"] = int(self.n_targets_batch)
        Yb = backend.asarray(Y)
        if form == "primal":
            from himalaya.ridge import BandedRidgeCV

            model = BandedRidgeCV(
                groups="input",
                solver_params=params,
                fit_intercept=False,
                cv=self._cv(),
                random_state=self.random_state,
            )
            model.fit([backend.asarray(x) for x in Xs], Yb)
        else:
            from himalaya.kernel_ridge import ColumnKernelizer, Kernelizer, MultipleKernelRidgeCV
            from sklearn.pipeline import make_pipeline

            kernelizer = ColumnKernelizer(
                [
                    (f"space{i}", Kernelizer(kernel="linear"), sl)
                    for i, sl in enumerate(_slices([x.shape[1] for x in Xs]))
                ]
            )
            model = make_pipeline(
                kernelizer,
                MultipleKernelRidgeCV(
                    kernels="precomputed",
                    solver_params=params,
                    fit_intercept=False,
                    cv=self._cv(),
                    random_state=self.random_state,
                ),
            )
            model.fit(backend.asarray(np.concatenate(Xs, axis=1)), Yb)
        return model, form

    def _predict_spaces(self, model, form: str, Xs: list) -> np.ndarray:
        """Split predictions (n_spaces, n_samples, n_voxels) of one fitted banded model."""
        from himalaya.backend import get_backend

        backend = get_backend()
        if form == "primal":
            pred = model.predict([backend.asarray(x) for x in Xs], split=True)
        else:
            pred = model.predict(backend.asarray(np.concatenate(Xs, axis=1)), split=True)
        return np.asarray(backend.to_numpy(pred), dtype=np.float32)

    def fit(self, X, Y):
        """Fit on (samples, features of every space side by side) and (samples, voxels)."""
        from himalaya.backend import get_backend

        X, Y = _check_xy(X, Y)
        slices = self._check_params(X.shape[1])
        self.mean_ = X.mean(0)
        scale = X.std(0)
        self.scale_ = np.where(scale > 0, scale, 1.0).astype(np.float32)
        self.intercept_ = Y.mean(0)
        Xz = (X - self.mean_) / self.scale_
        Yc = Y - self.intercept_
        Xs = [Xz[:, sl] for sl in slices]
        self.model_, self.solver_ = self._fit_spaces(Xs, Yc)
        backend = get_backend()
        last = self.model_[-1] if self.solver_ == "dual" else self.model_
        deltas = np.asarray(backend.to_numpy(last.deltas_), dtype=np.float64)
        weights = np.exp(deltas)
        self.best_alphas_ = 1.0 / weights.sum(0)
        self.space_weights_ = weights / weights.sum(0)
        self.reduced_ = []
        if self.unique_variance:
            for s in range(len(Xs)):
                rest = [x for j, x in enumerate(Xs) if j != s]
                self.reduced_.append(self._fit_spaces(rest, Yc))
        self.slices_ = slices
        self.n_features_in_ = X.shape[1]
        return self

    def _spaces_of(self, X) -> list:
        X = _check_xy(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features; the encoder was fitted on {self.n_features_in_}"
            )
        Xz = (X - self.mean_) / self.scale_
        return [Xz[:, sl] for sl in self.slices_]

    def predict(self, X):
        """Joint predicted responses, (samples, voxels)."""
        Xs = self._spaces_of(X)
        return self._predict_spaces(self.model_, self.solver_, Xs).sum(0) + self.intercept_

    def predict_split(self, X) -> dict[str, np.ndarray]:
        """Per-space predictions, and those of the models without each space.

        Returns
        -------
        dict
            ``split`` (n_spaces, samples, voxels): each space's part of the joint prediction
            (intercept excluded); with ``unique_variance``, ``without`` (n_spaces, samples,
            voxels): the prediction (intercept included) of the model fitted without space i.
        """
        Xs = self._spaces_of(X)
        out = {"split": self._predict_spaces(self.model_, self.solver_, Xs)}
        if self.reduced_:
            without = []
            for s, (model, form) in enumerate(self.reduced_):
                rest = [x for j, x in enumerate(Xs) if j != s]
                without.append(self._predict_spaces(model, form, rest).sum(0) + self.intercept_)
            out["without"] = np.stack(without).astype(np.float32)
        return out
