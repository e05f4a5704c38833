# Noise ceilings and cross-validated encoders per subject, dataset, model and encoder.


rule ceiling:
    input:
        ceiling_responses,
    output:
        "results/sub-{subject}/{dataset}/ceiling.nc",
    log:
        "results/logs/ceiling/sub-{subject}_{dataset}.log",
    benchmark:
        "results/benchmarks/ceiling/sub-{subject}_{dataset}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        index=ceiling_index,
        timeseries=lambda wildcards: as_arg(timeseries_spec(wildcards.dataset, CEILING_TIMESERIES)),
        on_bad_voxels=lambda wildcards: DATASETS[wildcards.dataset].get("on_bad_voxels", "error"),
    shell:
        "alignment ceiling --responses {input:q} --index {params.index}"
        " --timeseries {params.timeseries} --on-bad-voxels {params.on_bad_voxels}"
        " --out {output} > {log} 2>&1"


rule encode:
    input:
        unpack(encoder_inputs),
        responses=lambda wildcards: responses_path(wildcards.dataset, wildcards.subject),
        features="results/features/{dataset}/{model}.zarr",
        ceiling="results/sub-{subject}/{dataset}/ceiling.nc",
    output:
        "results/sub-{subject}/{dataset}/{model}/{encoder}/scores.nc",
    log:
        "results/logs/encode/sub-{subject}_{dataset}_{model}_{encoder}.log",
    benchmark:
        "results/benchmarks/encode/sub-{subject}_{dataset}_{model}_{encoder}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        encoder=lambda wildcards: as_arg(config["encoders"][wildcards.encoder]),
        cv=lambda wildcards: as_arg(cv_spec(wildcards.dataset)),
        stats=lambda wildcards: as_arg(stats_spec(wildcards.dataset)),
        timeseries=lambda wildcards: as_arg(timeseries_spec(wildcards.dataset)),
        attrs=lambda wildcards: as_arg({"config_hash": encode_hash(wildcards)}),
        on_bad_voxels=lambda wildcards: DATASETS[wildcards.dataset].get("on_bad_voxels", "error"),
        extra=encoder_input_args,
    shell:
        "alignment encode --responses {input.responses:q} --features {input.features}"
        " --ceiling {input.ceiling} --encoder {wildcards.encoder} --encoder-spec {params.encoder}"
        " --cv {params.cv} --stats {params.stats} --timeseries {params.timeseries}"
        " --attrs {params.attrs} --on-bad-voxels {params.on_bad_voxels} {params.extra}"
        " --out {output} > {log} 2>&1"


# Voxel shards (an encoder's `shards: N`): N jobs over voxel chunks, then one merge job that
# joins them (FDR over all voxels). Unsharded encoders go through `encode` above.
ruleorder: merge_shards > encode


rule encode_shard:
    input:
        unpack(encoder_inputs),
        responses=lambda wildcards: responses_path(wildcards.dataset, wildcards.subject),
        features="results/features/{dataset}/{model}.zarr",
        ceiling="results/sub-{subject}/{dataset}/ceiling.nc",
    output:
        temp("results/sub-{subject}/{dataset}/{model}/{encoder}/shards/{shard}-of-{n_shards}.nc"),
    log:
        "results/logs/encode/sub-{subject}_{dataset}_{model}_{encoder}_{shard}-of-{n_shards}.log",
    benchmark:
        "results/benchmarks/encode/sub-{subject}_{dataset}_{model}_{encoder}_{shard}-of-{n_shards}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        encoder=lambda wildcards: as_arg(config["encoders"][wildcards.encoder]),
        cv=lambda wildcards: as_arg(cv_spec(wildcards.dataset)),
        stats=lambda wildcards: as_arg(stats_spec(wildcards.dataset)),
        timeseries=lambda wildcards: as_arg(timeseries_spec(wildcards.dataset)),
        attrs=lambda wildcards: as_arg({"config_hash": encode_hash(wildcards)}),
        on_bad_voxels=lambda wildcards: DATASETS[wildcards.dataset].get("on_bad_voxels", "error"),
        extra=encoder_input_args,
    shell:
        "alignment encode --responses {input.responses} --features {input.features}"
        " --ceiling {input.ceiling} --encoder {wildcards.encoder} --encoder-spec {params.encoder}"
        " --cv {params.cv} --stats {params.stats} --timeseries {params.timeseries}"
        " --attrs {params.attrs} --on-bad-voxels {params.on_bad_voxels} {params.extra}"
        " --shard {wildcards.shard}/{wildcards.n_shards} --out {output} > {log} 2>&1"


rule merge_shards:
    input:
        shard_scores,
    output:
        "results/sub-{subject}/{dataset}/{model}/{encoder}/scores.nc",
    log:
        "results/logs/merge_shards/sub-{subject}_{dataset}_{model}_{encoder}.log",
    benchmark:
        "results/benchmarks/merge_shards/sub-{subject}_{dataset}_{model}_{encoder}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "alignment merge-scores --scores {input} --out {output} > {log} 2>&1"


# The attention-routing encoder: the same verb, plus each query's attention over the token grid
# for every test image (attention.nc, shown in the report). Only routing encoders match here.
ruleorder: encode_routing > encode


rule encode_routing:
    input:
        unpack(encoder_inputs),
        responses=lambda wildcards: responses_path(wildcards.dataset, wildcards.subject),
        features="results/features/{dataset}/{model}.zarr",
        ceiling="results/sub-{subject}/{dataset}/ceiling.nc",
    output:
        scores="results/sub-{subject}/{dataset}/{model}/{encoder}/scores.nc",
        attention="results/sub-{subject}/{dataset}/{model}/{encoder}/attention.nc",
    log:
        "results/logs/encode/sub-{subject}_{dataset}_{model}_{encoder}.log",
    benchmark:
        "results/benchmarks/encode/sub-{subject}_{dataset}_{model}_{encoder}.tsv"
    wildcard_constraints:
        encoder="|".join(attention_encoders()) or "(?!)",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        encoder=lambda wildcards: as_arg(config["encoders"][wildcards.encoder]),
        cv=lambda wildcards: as_arg(cv_spec(wildcards.dataset)),
        stats=lambda wildcards: as_arg(stats_spec(wildcards.dataset)),
        timeseries=lambda wildcards: as_arg(timeseries_spec(wildcards.dataset)),
        attrs=lambda wildcards: as_arg({"config_hash": encode_hash(wildcards)}),
        on_bad_voxels=lambda wildcards: DATASETS[wildcards.dataset].get("on_bad_voxels", "error"),
        extra=encoder_input_args,
    shell:
        "alignment encode --responses {input.responses} --features {input.features}"
        " --ceiling {input.ceiling} --encoder {wildcards.encoder} --encoder-spec {params.encoder}"
        " --cv {params.cv} --stats {params.stats} --timeseries {params.timeseries}"
        " --attrs {params.attrs} --on-bad-voxels {params.on_bad_voxels} {params.extra}"
        " --interpretation-out {output.attention} --out {output.scores} > {log} 2>&1"
