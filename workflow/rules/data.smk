# The built-in demo dataset, generated when a dataset points into data/demo.


rule demo_data:
    output:
        truth="data/demo/truth.json",
        images="data/demo/images/stimuli.tsv",
        words="data/demo/narrative/words.tsv",
        responses=expand(
            "data/demo/{experiment}/sub-{subject}_responses.nc",
            experiment=["images", "narrative"],
            subject=config.get("demo", {}).get("subjects", ["01", "02", "03"]),
        ),
    log:
        "results/logs/demo_data.log",
    benchmark:
        "results/benchmarks/demo_data.tsv"
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=20,
    params:
        demo=lambda wildcards: as_arg(config.get("demo", {})),
    shell:
        "alignment demo-data --out data/demo --params {params.demo} > {log} 2>&1"
