# The brain-alignment pipeline: features -> encoders -> scores -> brain maps and reports.
# Science parameters live in config.yaml; cluster resources in profiles/.


# The demo's config.yaml is the default; a config named with --configfile replaces it (rather
# than being merged into it), so `snakemake --configfile config/nsd.yaml` runs NSD alone.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/encoders.smk"
include: "workflow/rules/scores.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_reports(),
        "results/summary.txt",
