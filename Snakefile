# The brain-alignment pipeline: features -> encoders -> scores -> brain maps and reports.
# Science parameters live in config.yaml; cluster resources in profiles/.


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/encoders.smk"
include: "workflow/rules/rsa.smk"
include: "workflow/rules/scores.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_reports(),
        "results/summary.txt",
