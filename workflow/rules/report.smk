# One self-contained HTML report per subject: layer profiles, brain maps, ROI tables, provenance.


rule report:
    input:
        scores=lambda wildcards: subject_scores(wildcards.subject),
        attention=lambda wildcards: subject_attention(wildcards.subject),
        incontext=lambda wildcards: incontext_tables(wildcards.subject),
        rsa=lambda wildcards: subject_rsa(wildcards.subject),
    output:
        report(
            "results/sub-{subject}/report.html",
            caption="../report/subject_report.rst",
            category="Subject reports",
        ),
    log:
        "results/logs/report/sub-{subject}.log",
    benchmark:
        "results/benchmarks/report/sub-{subject}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        config=lambda wildcards: as_arg(subject_config(wildcards.subject)),
        truth=lambda wildcards: (
            f"--truth {config['report']['truth']}" if config.get("report", {}).get("truth") else ""
        ),
        rsa=lambda wildcards, input: f"--rsa {input.rsa}" if input.rsa else "",
    shell:
        "alignment report --subject {wildcards.subject} --scores {input.scores}"
        " --attention {input.attention}"
        " --incontext-tables {input.incontext}"
        " --config-json {params.config} {params.truth} {params.rsa} --out {output} > {log} 2>&1"
