# Datasets read by an adapter (a `format` in their config entry): one Responses netCDF per
# subject and, for published datasets, the stimulus table, under results/data/<dataset>/.


rule prepare_responses:
    input:
        lambda wildcards: source_files(DATASETS[wildcards.dataset], wildcards.subject),
    output:
        "results/data/{dataset}/sub-{subject}_responses.nc",
    log:
        "results/logs/prepare_responses/{dataset}_sub-{subject}.log",
    benchmark:
        "results/benchmarks/prepare_responses/{dataset}_sub-{subject}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        spec=dataset_entry,
    shell:
        "alignment prepare-responses --dataset {wildcards.dataset} --subject {wildcards.subject}"
        " --spec {params.spec} --out {output} > {log} 2>&1"


rule prepare_stimuli:
    output:
        "results/data/{dataset}/{table}.tsv",
    log:
        "results/logs/prepare_stimuli/{dataset}_{table}.log",
    benchmark:
        "results/benchmarks/prepare_stimuli/{dataset}_{table}.tsv"
    wildcard_constraints:
        table="stimuli|words",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        spec=dataset_entry,
        subjects=lambda wildcards: " ".join(DATASETS[wildcards.dataset]["subjects"]),
    shell:
        "alignment prepare-stimuli --dataset {wildcards.dataset} --subjects {params.subjects}"
        " --spec {params.spec} --out {output} > {log} 2>&1"
