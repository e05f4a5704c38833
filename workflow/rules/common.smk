# Config validation at start-up, and the small functions that map wildcards onto config entries.
import json
import shlex

from alignment.config import check_config, config_hash, model_extraction_spec, model_speed_spec
from alignment.data.prepare import resolve_datasets, source_files
from alignment.encoders import accepts
from alignment.failures import SCORES_PATTERN

check_config(config, workflow.source_path("../schemas/config.schema.yaml"))

CONFIG_HASH = config_hash(config)
# entries with a `format` read prepared inputs under results/data/ (workflow/rules/datasets.smk)
DATASETS = resolve_datasets(config["datasets"])
# Snakemake itself exports OMP_NUM_THREADS, MKL_NUM_THREADS... = {threads} to every job.


def as_arg(obj):
    """A config section as one shell-quoted JSON argument."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def compact_json(obj):
    """JSON without spaces (a string resource; the shell command quotes it with :q)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def dataset_encoders(dataset):
    return DATASETS[dataset].get("encoders", list(config["encoders"]))


def is_rsa(encoder):
    """RSA compares RDMs instead of predicting voxels: its own rule, not the encode loop."""
    return config["encoders"][encoder].get("kind") == "rsa"


def banded_models(encoder):
    """The models whose features a banded encoder's spaces read (first space first), else []."""
    spec = config["encoders"][encoder]
    if spec.get("kind") != "banded":
        return []
    return list(dict.fromkeys(space["model"] for space in spec["spaces"]))


def encoder_models(encoder, model):
    """The models an encoder runs on: its `models`, a banded encoder's first space (its Scores
    live under that model), else every model it accepts."""
    if banded_models(encoder):
        return banded_models(encoder)[:1]
    return config["encoders"][encoder].get("models", [model])


def dataset_pairs(dataset):
    """(model, encoder) pairs of a dataset: each encoder runs on the models whose features it
    takes (pooled features feed ridge, patch tokens feed the routing encoder)."""
    spec = DATASETS[dataset]
    return [
        (model, encoder)
        for model in spec["models"]
        for encoder in dataset_encoders(dataset)
        if not is_rsa(encoder)
        and accepts(config["encoders"][encoder], config["models"][model], spec["kind"])
        and model in encoder_models(encoder, model)
    ]


def dataset_rsa_pairs(dataset):
    """(model, encoder) pairs of a dataset's rsa encoders: image datasets, pooled features."""
    spec = DATASETS[dataset]
    if spec["kind"] != "images":
        return []
    return [
        (model, encoder)
        for model in spec["models"]
        for encoder in dataset_encoders(dataset)
        if is_rsa(encoder)
        and config["models"][model].get("pooling") != "tokens"
        and model in config["encoders"][encoder].get("models", [model])
    ]


def subject_rsa(subject):
    return [
        f"results/sub-{subject}/{dataset}/{model}/{encoder}/rsa.nc"
        for dataset, spec in DATASETS.items()
        if subject in spec["subjects"]
        for model, encoder in dataset_rsa_pairs(dataset)
    ]


def encoder_inputs(wildcards):
    """Extra files an encoder kind needs (none for ridge), by name: an incontext encoder takes
    the checkpoint meta-trained on the dataset's other subjects."""
    if config["encoders"][wildcards.encoder].get("kind") == "incontext":
        return {
            "checkpoint": (
                f"results/incontext/{wildcards.dataset}/{wildcards.model}/"
                f"{wildcards.encoder}/heldout-{wildcards.subject}.pt"
            )
        }
    # banded ridge: the feature stores of its other spaces' models, by model name
    return {
        model: f"results/features/{wildcards.dataset}/{model}.zarr"
        for model in banded_models(wildcards.encoder)
        if model != wildcards.model
    }


def incontext_training_responses(dataset, subject):
    """Responses of every subject of a dataset but the held-out one (meta-training)."""
    others = [s for s in DATASETS[dataset]["subjects"] if s != subject]
    return [responses_path(dataset, s) for s in others]


def incontext_ridge_spec():
    """Parameters of the config's first ridge encoder: the baseline of the scaling curve."""
    for spec in config["encoders"].values():
        if spec.get("kind", "ridge") == "ridge":
            return {k: v for k, v in spec.items() if k not in ("kind", "layers")}
    return {}


def incontext_tables(subject):
    """Scaling, decoding and attention tables of a subject's incontext fits (one fewshot job)."""
    out = []
    for dataset, spec in DATASETS.items():
        if subject not in spec["subjects"]:
            continue
        for model, encoder in dataset_pairs(dataset):
            enc = config["encoders"][encoder]
            if enc.get("kind") != "incontext":
                continue
            base = f"results/sub-{subject}/{dataset}/{model}/{encoder}"
            out += [f"{base}/{name}.tsv" for name in ("fewshot", "decoding", "attention")]
    return out


def encoder_input_args(wildcards, input):
    """--encoder-input NAME=PATH for each extra file of the encoder."""
    return " ".join(
        f"--encoder-input {shlex.quote(f'{name}={input[name]}')}"
        for name in encoder_inputs(wildcards)
    )


def dataset_entry(wildcards):
    """The user's dataset entry as one JSON argument (its own file pattern, not ours)."""
    spec = dict(DATASETS[wildcards.dataset])
    if "source_responses" in spec:
        spec["responses"] = spec.pop("source_responses")
    return as_arg(spec)


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


def responses_path(dataset, subject):
    return DATASETS[dataset]["responses"].format(subject=subject)


def subject_scores(subject):
    return [
        f"results/sub-{subject}/{dataset}/{model}/{encoder}/scores.nc"
        for dataset, spec in DATASETS.items()
        if subject in spec["subjects"]
        for model, encoder in dataset_pairs(dataset)
    ]


def attention_encoders():
    """Names of the routing encoders: their encode rule also writes attention.nc."""
    return [name for name, spec in config["encoders"].items() if spec.get("kind") == "routing"]


def subject_attention(subject):
    """attention.nc of every routing fit of a subject (image datasets), for the report."""
    return [
        f"results/sub-{subject}/{dataset}/{model}/{encoder}/attention.nc"
        for dataset, spec in DATASETS.items()
        if subject in spec["subjects"]
        for model, encoder in dataset_pairs(dataset)
        if encoder in attention_encoders()
    ]


def all_subjects():
    return sorted({s for spec in DATASETS.values() for s in spec["subjects"]})


def all_reports():
    return [f"results/sub-{subject}/report.html" for subject in all_subjects()]


def all_scores():
    return [path for subject in all_subjects() for path in subject_scores(subject)]


def dataset_scores(dataset):
    """Scores of every subject and (model, encoder) pair of a dataset."""
    return [
        f"results/sub-{subject}/{dataset}/{model}/{encoder}/scores.nc"
        for subject in DATASETS[dataset]["subjects"]
        for model, encoder in dataset_pairs(dataset)
    ]


def all_group_reports():
    return [f"results/group/{dataset}/report.html" for dataset in DATASETS] + [
        f"results/compare/{dataset}/report.html" for dataset in DATASETS
    ]


wildcard_constraints:
    subject="[^/]+",
    dataset="[^/]+",
    model="[^/]+",
    encoder="[^/]+",
    shard="[0-9]+",
    n_shards="[0-9]+",


# Cache honesty: each job's params hold exactly the config entries that change its numbers, so
# Snakemake's params trigger reruns exactly the affected jobs and nothing else
# (tests/test_reruns.py). Image experiments ignore timeseries, cv.gap_trs and
# stats.narrative_null; narratives ignore cv.train_on; a ceiling uses only the detrending entries
# of timeseries.
CV_ONLY_FOR = {"train_on": "images", "gap_trs": "narrative"}
STATS_ONLY_FOR = {"narrative_null": "narrative"}
CEILING_TIMESERIES = ("detrend", "detrend_order", "savgol_window_s")


def cv_spec(dataset):
    """The cv entries that change a dataset's numbers."""
    kind = DATASETS[dataset]["kind"]
    return {k: v for k, v in config.get("cv", {}).items() if CV_ONLY_FOR.get(k, kind) == kind}


def stats_spec(dataset):
    """The stats entries that change a dataset's numbers."""
    kind = DATASETS[dataset]["kind"]
    return {k: v for k, v in config.get("stats", {}).items() if STATS_ONLY_FOR.get(k, kind) == kind}


def timeseries_spec(dataset, keys=None):
    """The timeseries entries that change a dataset's numbers (none for images)."""
    if DATASETS[dataset]["kind"] != "narrative":
        return {}
    ts = config.get("timeseries", {})
    return {k: v for k, v in ts.items() if keys is None or k in keys}


def ceiling_responses(wildcards):
    """An image ceiling needs the subject's own repeats; a narrative's (inter-subject) needs every
    subject's responses."""
    if DATASETS[wildcards.dataset]["kind"] == "narrative":
        return [
            responses_path(wildcards.dataset, s) for s in DATASETS[wildcards.dataset]["subjects"]
        ]
    return [responses_path(wildcards.dataset, wildcards.subject)]


def ceiling_index(wildcards):
    if DATASETS[wildcards.dataset]["kind"] == "narrative":
        return DATASETS[wildcards.dataset]["subjects"].index(wildcards.subject)
    return 0


def encode_hash(wildcards):
    """Hash of every config entry an encode job's numbers depend on (provenance in Scores)."""
    return config_hash(
        {
            "model": model_extraction_spec(config["models"][wildcards.model]),
            "encoder": config["encoders"][wildcards.encoder],
            "cv": cv_spec(wildcards.dataset),
            "stats": stats_spec(wildcards.dataset),
            "timeseries": timeseries_spec(wildcards.dataset),
            "on_bad_voxels": DATASETS[wildcards.dataset].get("on_bad_voxels", "error"),
            # a banded encoder's other spaces (absent otherwise, so other hashes are unchanged)
            **(
                {"spaces": {m: config["models"][m] for m in banded_models(wildcards.encoder)}}
                if banded_models(wildcards.encoder)
                else {}
            ),
        }
    )


def subject_config(subject):
    """The config a subject's report shows: its datasets and what they use."""
    datasets = {d: s for d, s in DATASETS.items() if subject in s["subjects"]}
    used_models = {m for s in datasets.values() for m in s["models"]}
    return {
        **{k: v for k, v in config.items() if k not in ("datasets", "models", "demo")},
        "datasets": datasets,
        "models": {m: v for m, v in config["models"].items() if m in used_models},
    }
