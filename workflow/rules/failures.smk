# After a failed run (e.g. --keep-going with one subject's data bad): the summary lists the scores
# that exist and names every missing one with the job log that says why.


def score_job_logs(path):
    """Logs of the jobs a Scores file depends on, upstream first."""
    w = SCORES_PATTERN.search(path)
    return [
        "results/logs/demo_data.log",
        f"results/logs/features/{w['dataset']}/{w['model']}.log",
        f"results/logs/ceiling/sub-{w['subject']}_{w['dataset']}.log",
        f"results/logs/encode/sub-{w['subject']}_{w['dataset']}_{w['model']}_{w['encoder']}.log",
    ]


onerror:
    scores = all_scores()
    logs = {path: score_job_logs(path) for path in scores}
    shell(
        "mkdir -p results/logs && alignment summary --allow-missing --scores {scores:q}"
        " --logs {logs_arg} --group {group_arg} --models {models_arg}"
        " --out results/summary.txt 2> results/logs/summary.log || true",
        logs_arg=as_arg(logs),
        group_arg=as_arg(config.get("group", {})),
        models_arg=as_arg(config["models"]),
    )
