# Layerwise features of each dataset's stimulus set, one zarr store per model.


rule features:
    input:
        stimuli=lambda wildcards: DATASETS[wildcards.dataset]["stimuli"],
    output:
        directory("results/features/{dataset}/{model}.zarr"),
    log:
        "results/logs/features/{dataset}/{model}.log",
    benchmark:
        "results/benchmarks/features/{dataset}/{model}.tsv"
    conda:
        "../../environment.yml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        # batch size, device and loader workers change no number: a resource, since Snakemake
        # reruns a job whose params change
        speed=lambda wildcards: compact_json(model_speed_spec(config["models"][wildcards.model])),
    params:
        # the spec without its descriptive entries (family, params, ...) and speed entries: a
        # change to an entry the extraction reads reruns the rule, editing a label does not
        spec=lambda wildcards: as_arg(model_extraction_spec(config["models"][wildcards.model])),
    shell:
        "alignment features --model {wildcards.model} --spec {params.spec}"
        " --speed {resources.speed:q}"
        " --stimuli {input.stimuli:q} --out {output} > {log} 2>&1"
