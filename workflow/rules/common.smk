# Config validation at start-up, and the small functions that map wildcards onto config entries.
import json
import shlex

from alignment.config import check_config, config_hash
from alignment.data.prepare import resolve_datasets, source_files
from alignment.encoders import accepts

check_config(config, workflow.source_path("../schemas/config.schema.yaml"))

CONFIG_HASH = config_hash(config)
# entries with a `format` read prepared inputs under results/data/ (workflow/rules/datasets.smk)
DATASETS = resolve_datasets(config["datasets"])
# Snakemake itself exports OMP_NUM_THREADS, MKL_NUM_THREADS... = {threads} to every job.


def as_arg(obj):
    """A config section as one shell-quoted JSON argument."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def dataset_encoders(dataset):
    return DATASETS[dataset].get("encoders", list(config["encoders"]))


def dataset_pairs(dataset):
    """(model, encoder) pairs of a dataset: each encoder runs on the models whose features it
    takes (pooled features feed ridge, patch tokens feed the routing encoder)."""
    spec = DATASETS[dataset]
    return [
        (model, encoder)
        for model in spec["models"]
        for encoder in dataset_encoders(dataset)
        if accepts(config["encoders"][encoder], config["models"][model], spec["kind"])
    ]


def encoder_inputs(wildcards):
    """Extra files an encoder kind needs (none for ridge), by name."""
    return {}


def encoder_input_args(wildcards, input):
    """--encoder-input NAME=PATH for each extra file of the encoder."""
    return " ".join(
        f"--encoder-input {shlex.quote(f'{name}={input[name]}')}"
        for name in encoder_inputs(wildcards)
    )


def encoder_shards(encoder):
    """Voxel shards of an encoder (its spec's ``shards``; 1 = one job per subject)."""
    return int(config["encoders"][encoder].get("shards", 1))


def shard_scores(wildcards):
    """The voxel shards' Scores that merge into an encoder's scores.nc. An unsharded encoder
    gets a path that nothing produces, so merge_shards cannot run and encode writes scores.nc."""
    prefix = (
        f"results/sub-{wildcards.subject}/{wildcards.dataset}/{wildcards.model}/"
        f"{wildcards.encoder}"
    )
    n = encoder_shards(wildcards.encoder)
    if n <= 1:
        return [f"{prefix}/unsharded-encoder"]
    return [f"{prefix}/shards/{i}-of-{n}.nc" for i in range(n)]


def dataset_entry(wildcards):
    """The user's dataset entry as one JSON argument (its own file pattern, not ours)."""
    spec = dict(DATASETS[wildcards.dataset])
    if "source_responses" in spec:
        spec["responses"] = spec.pop("source_responses")
    return as_arg(spec)


def responses_path(dataset, subject):
    return DATASETS[dataset]["responses"].format(subject=subject)


def subject_scores(subject):
    return [
        f"results/sub-{subject}/{dataset}/{model}/{encoder}/scores.nc"
        for dataset, spec in DATASETS.items()
        if subject in spec["subjects"]
        for model, encoder in dataset_pairs(dataset)
    ]


def all_subjects():
    return sorted({s for spec in DATASETS.values() for s in spec["subjects"]})


def all_reports():
    return [f"results/sub-{subject}/report.html" for subject in all_subjects()]


def all_scores():
    return [path for subject in all_subjects() for path in subject_scores(subject)]


wildcard_constraints:
    subject="[^/]+",
    dataset="[^/]+",
    model="[^/]+",
    encoder="[^/]+",
    shard="[0-9]+",
    n_shards="[0-9]+",
