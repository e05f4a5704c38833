# Study-level answers: one group report per dataset (across subjects) and one comparison of
# every model of the dataset on a relative-depth axis, with the tidy comparison.csv.


rule group_report:
    input:
        scores=lambda wildcards: dataset_scores(wildcards.dataset),
    output:
        html=report(
            "results/group/{dataset}/report.html",
            caption="../report/group_report.rst",
            category="Group reports",
        ),
        stats=report(
            "results/group/{dataset}/group_stats.csv",
            caption="../report/group_stats.rst",
            category="Group reports",
        ),
    log:
        "results/logs/group_report/{dataset}.log",
    benchmark:
        "results/benchmarks/group_report/{dataset}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        group=lambda wildcards: as_arg(config.get("group", {})),
        config=lambda wildcards: as_arg(config),
        truth=lambda wildcards: (
            f"--truth {config['report']['truth']}" if config.get("report", {}).get("truth") else ""
        ),
        # linked, not required: the group report does not wait for the subject reports
        subject_reports=lambda wildcards: " ".join(
            f"results/sub-{s}/report.html" for s in DATASETS[wildcards.dataset]["subjects"]
        ),
    shell:
        "alignment group-report --dataset {wildcards.dataset} --scores {input.scores}"
        " --group {params.group} --config-json {params.config} {params.truth}"
        " --subject-reports {params.subject_reports} --stats-out {output.stats}"
        " --out {output.html} > {log} 2>&1"


rule compare_report:
    input:
        scores=lambda wildcards: dataset_scores(wildcards.dataset),
        features=lambda wildcards: [
            f"results/features/{wildcards.dataset}/{model}.zarr"
            for model in DATASETS[wildcards.dataset]["models"]
        ],
    output:
        html=report(
            "results/compare/{dataset}/report.html",
            caption="../report/compare_report.rst",
            category="Model comparison",
        ),
        csv=report(
            "results/compare/{dataset}/comparison.csv",
            caption="../report/comparison_csv.rst",
            category="Model comparison",
        ),
    log:
        "results/logs/compare_report/{dataset}.log",
    benchmark:
        "results/benchmarks/compare_report/{dataset}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        group=lambda wildcards: as_arg(config.get("group", {})),
        config=lambda wildcards: as_arg(config),
    shell:
        "alignment compare-report --dataset {wildcards.dataset} --scores {input.scores}"
        " --features {input.features} --group {params.group} --config-json {params.config}"
        " --csv-out {output.csv} --out {output.html} > {log} 2>&1"
