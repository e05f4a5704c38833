"""Validating config.yaml at start-up: schema (typos, types) and cross-references.

The workflow calls :func:`check_config` before building the DAG, so a typo fails in a second
with a message naming the key, not an hour later inside a job.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path

import yaml

from alignment.io import InputError


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _describe(error, schema: dict) -> str:
    """One readable line for a jsonschema error, with a suggestion for a misspelt key."""
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        hints = []
        for key in extra:
            close = difflib.get_close_matches(key, allowed, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        where = _path(error)
        return (
            f"{where}: unknown key {', '.join(hints)}; allowed keys: {allowed}"
            if allowed
            else (f"{where}: unknown key {', '.join(hints)}")
        )
    path = [str(p) for p in error.absolute_path]
    if (
        error.validator == "type"
        and "subjects" in path
        and isinstance(error.instance, int | float)
        and not isinstance(error.instance, bool)
    ):
        # YAML reads 01 as the number 1: subject ids are strings, as in file names (sub-01)
        return (
            f"{_path(error)}: subject id {error.instance!r} is a number; quote subject ids "
            f'(YAML reads 01 as 1): subjects: ["01", "02"]'
        )
    return f"{_path(error)}: {error.message}"


def check_config(config: dict, schema_path: str | Path, source: str = "config.yaml") -> dict:
    """Validate a config against the schema and check that every name it uses is defined.

    Parameters
    ----------
    config : dict
        The loaded config.
    schema_path : path-like
        workflow/schemas/config.schema.yaml.
    source : str
        Name of the config file for messages.

    Returns
    -------
    The config (unchanged). Raises :class:`~alignment.io.InputError` listing every problem.
    """
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        _describe(e, schema)
        for e in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    ]
    if not problems:
        models = config.get("models", {})
        encoders = config.get("encoders", {})
        for name, ds in config.get("datasets", {}).items():
            for model in ds.get("models", []):
                if model not in models:
                    close = difflib.get_close_matches(model, list(models), n=1)
                    problems.append(
                        f"datasets.{name}.models: {model!r} is not defined under models"
                        + (f" (did you mean {close[0]!r}?)" if close else "")
                    )
                elif (models[model].get("modality") == "image") != (ds["kind"] == "images"):
                    problems.append(
                        f"datasets.{name}: model {model!r} is a {models[model]['modality']} model "
                        f"but the dataset is {ds['kind']}"
                    )
            for enc in ds.get("encoders", []):
                if enc not in encoders:
                    problems.append(
                        f"datasets.{name}.encoders: {enc!r} is not defined under encoders"
                    )
                elif encoders[enc].get("kind") == "rsa" and ds.get("kind") != "images":
                    problems.append(
                        f"datasets.{name}.encoders: {enc!r} is an rsa encoder, which needs "
                        f"an image dataset (stimuli with repeats), not {ds.get('kind')!r}"
                    )
            # LeBel et al.: the repeated test story can give the ceiling of a single subject
            if (
                ds.get("kind") == "narrative"
                and len(ds.get("subjects", [])) < 2
                and ds.get("format") != "lebel2023"
            ):
                problems.append(
                    f"datasets.{name}: a narrative needs >= 2 subjects (inter-subject ceiling)"
                )
        for name, spec in models.items():
            if spec.get("kind", "huggingface") == "huggingface" and "source" not in spec:
                problems.append(
                    f"models.{name}: 'source' (local folder or Hugging Face id) is required"
                )
        for name, enc in encoders.items():
            if enc.get("kind") != "banded":
                continue
            modalities = set()
            for i, space in enumerate(enc.get("spaces", [])):
                model = space["model"]
                if model not in models:
                    close = difflib.get_close_matches(model, list(models), n=1)
                    problems.append(
                        f"encoders.{name}.spaces[{i}].model: {model!r} is not defined under models"
                        + (f" (did you mean {close[0]!r}?)" if close else "")
                    )
                else:
                    modalities.add(models[model].get("modality"))
            if len(modalities) > 1:
                problems.append(
                    f"encoders.{name}.spaces: the spaces mix modalities {sorted(modalities)}; "
                    "they must describe one stimulus set"
                )
            # the fit runs on the datasets that list its first space's model (its Scores live
            # under that model): one that no dataset lists would silently never run
            first = (enc.get("spaces") or [{}])[0].get("model")
            if first in models and not any(
                first in ds.get("models", []) and name in ds.get("encoders", [name])
                for ds in config.get("datasets", {}).values()
            ):
                problems.append(
                    f"encoders.{name}.spaces[0].model: {first!r} is in no dataset's models that "
                    "uses this encoder, so the banded encoder would run nowhere"
                )
        for pair in config.get("compare", []):
            for model in pair:
                if model not in models:
                    close = difflib.get_close_matches(model, list(models), n=1)
                    problems.append(
                        f"compare: {model!r} is not defined under models"
                        + (f" (did you mean {close[0]!r}?)" if close else "")
                    )
    if problems:
        raise InputError(f"{source}: " + "; ".join(problems))
    return config


#: Entries of a model spec that describe the model for the reports (comparison, group) and change
#: no number: they never enter a features cache key, a rule's params or an encode hash.
MODEL_DESCRIPTIVE_KEYS = ("params", "family", "instruction_tuned", "trained", "label")


def model_extraction_spec(spec: dict) -> dict:
    """A model spec without its descriptive and its speed-only entries.

    What the features rule passes to ``alignment features`` as ``--spec`` and what an encode
    job's provenance hash covers, so that editing a label or the batch size re-runs nothing
    (:data:`MODEL_DESCRIPTIVE_KEYS`, :data:`alignment.features.spec.SPEED_ONLY`).
    """
    from alignment.features.spec import SPEED_ONLY

    drop = set(MODEL_DESCRIPTIVE_KEYS) | set(SPEED_ONLY)
    return {k: v for k, v in spec.items() if k not in drop}


def model_speed_spec(spec: dict) -> dict:
    """The speed-only entries of a model spec (batch size, device, loader workers).

    The features rule passes them as a resource (``--speed``), not a param: Snakemake reruns a
    job whose params change, and these change no number.
    """
    from alignment.features.spec import SPEED_ONLY

    return {k: spec[k] for k in SPEED_ONLY if k in spec}


def config_hash(config: dict) -> str:
    """Short hash of the whole config (provenance)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_config(path: str | Path) -> dict:
    """Read a config file, naming the file (and the line) for a missing file or bad YAML."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing config file")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise InputError(f"{where}: invalid YAML ({getattr(err, 'problem', err)})") from err
    if not isinstance(config, dict):
        kind = type(config).__name__
        raise InputError(f"{path}: a config must be a mapping of sections, not {kind}")
    return config
