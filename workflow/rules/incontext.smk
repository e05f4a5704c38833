# The in-context encoder (BraInCoRL): meta-training leave-one-subject-out, then one fewshot job
# per subject for test-time scaling against ridge, in-context decoding (BrainCoDec; `alignment
# decode` alone does the same outside the workflow) and token 0's attention. Few-shot encoding
# itself is the encode rule (encoder kind incontext), which takes the checkpoint through
# encoder_inputs().


rule meta_train:
    input:
        # the other subjects of the dataset only; `alignment meta-train` checks it again
        responses=lambda wildcards: incontext_training_responses(
            wildcards.dataset, wildcards.subject
        ),
        features="results/features/{dataset}/{model}.zarr",
    output:
        "results/incontext/{dataset}/{model}/{encoder}/heldout-{subject}.pt",
    log:
        "results/logs/meta_train/{dataset}_{model}_{encoder}_heldout-{subject}.log",
    benchmark:
        "results/benchmarks/meta_train/{dataset}_{model}_{encoder}_heldout-{subject}.tsv"
    conda:
        "../../environment.yml"
    # small models train as fast on one thread; the slurm profile gives it a GPU
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        encoder=lambda wildcards: as_arg(config["encoders"][wildcards.encoder]),
        cv=lambda wildcards: as_arg(cv_spec(wildcards.dataset)),
    shell:
        "alignment meta-train --responses {input.responses} --features {input.features}"
        " --heldout {wildcards.subject} --encoder {wildcards.encoder}"
        " --encoder-spec {params.encoder} --cv {params.cv} --out {output} > {log} 2>&1"


rule fewshot:
    # the scaling curve, decoding (BrainCoDec and the analytic inversion) and token 0's
    # attention, all from one set of in-context fits per (N, fold)
    input:
        responses=lambda wildcards: responses_path(wildcards.dataset, wildcards.subject),
        features="results/features/{dataset}/{model}.zarr",
        checkpoint="results/incontext/{dataset}/{model}/{encoder}/heldout-{subject}.pt",
        stimuli=lambda wildcards: DATASETS[wildcards.dataset]["stimuli"],
    output:
        scaling="results/sub-{subject}/{dataset}/{model}/{encoder}/fewshot.tsv",
        decoding="results/sub-{subject}/{dataset}/{model}/{encoder}/decoding.tsv",
        attention="results/sub-{subject}/{dataset}/{model}/{encoder}/attention.tsv",
    log:
        "results/logs/fewshot/sub-{subject}_{dataset}_{model}_{encoder}.log",
    benchmark:
        "results/benchmarks/fewshot/sub-{subject}_{dataset}_{model}_{encoder}.tsv"
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        encoder=lambda wildcards: as_arg(config["encoders"][wildcards.encoder]),
        ridge=lambda wildcards: as_arg(incontext_ridge_spec()),
        cv=lambda wildcards: as_arg(cv_spec(wildcards.dataset)),
        on_bad_voxels=lambda wildcards: DATASETS[wildcards.dataset].get("on_bad_voxels", "error"),
    shell:
        "alignment fewshot --responses {input.responses} --features {input.features}"
        " --checkpoint {input.checkpoint} --encoder {wildcards.encoder}"
        " --encoder-spec {params.encoder} --ridge-spec {params.ridge} --cv {params.cv}"
        " --on-bad-voxels {params.on_bad_voxels} --stimuli {input.stimuli}"
        " --decoding-out {output.decoding} --attention-out {output.attention}"
        " --out {output.scaling} > {log} 2>&1"
