# Representational similarity per subject, dataset, model and rsa encoder (kind: rsa).


rule rsa:
    input:
        # the subject-based noise ceiling needs every subject's responses
        responses=lambda wildcards: [
            responses_path(wildcards.dataset, s) for s in DATASETS[wildcards.dataset]["subjects"]
        ],
        features="results/features/{dataset}/{model}.zarr",
    output:
        "results/sub-{subject}/{dataset}/{model}/{encoder}/rsa.nc",
    log:
        "results/logs/rsa/sub-{subject}_{dataset}_{model}_{encoder}.log",
    benchmark:
        "results/benchmarks/rsa/sub-{subject}_{dataset}_{model}_{encoder}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        index=lambda wildcards: DATASETS[wildcards.dataset]["subjects"].index(wildcards.subject),
        encoder=lambda wildcards: as_arg(config["encoders"][wildcards.encoder]),
        stats=lambda wildcards: as_arg(stats_spec(wildcards.dataset)),
        attrs=lambda wildcards: as_arg(
            {
                "config_hash": encode_hash(wildcards),
                "dataset": wildcards.dataset,
                "subject": wildcards.subject,
            }
        ),
    shell:
        "alignment rsa --responses {input.responses} --index {params.index}"
        " --features {input.features} --encoder {wildcards.encoder}"
        " --encoder-spec {params.encoder} --stats {params.stats} --attrs {params.attrs}"
        " --out {output} > {log} 2>&1"
