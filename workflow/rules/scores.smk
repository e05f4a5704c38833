# The short summary of every score, printed at the end of a run.


rule summary:
    input:
        all_scores(),
    output:
        report(
            "results/summary.txt",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        "results/logs/summary.log",
    benchmark:
        "results/benchmarks/summary.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        group=lambda wildcards: as_arg(config.get("group", {})),
        models=lambda wildcards: as_arg(config["models"]),
    shell:
        "alignment summary --scores {input} --group {params.group} --models {params.models}"
        " --out {output} > {log} 2>&1"
