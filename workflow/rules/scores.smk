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
    shell:
        "alignment summary --scores {input} --out {output} > {log} 2>&1"
