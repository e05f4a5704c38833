"""The reduced demo through a real single-node SLURM cluster with `--profile profiles/slurm`.

Run by `make test-slurm` (ALIGNMENT_TEST_SLURM=1), which needs root: tests/slurm/cluster.sh
installs munge, slurmctld, slurmd, slurmdbd and MariaDB from Debian's packages and starts them;
the fixture tears them down. Checks: every rule ran as a SLURM job with the resources the
profile gives it (read back from sacct), the reports exist, and a failing job (a subject whose
data hold a NaN voxel) is reported as FAILED by SLURM and by Snakemake, with its log path, while
the summary names it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
PROFILE = REPO / "profiles" / "slurm"
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.workflow,
    pytest.mark.skipif(
        os.environ.get("ALIGNMENT_TEST_SLURM") != "1",
        reason="needs a real SLURM cluster: run `make test-slurm`",
    ),
]

CONFIG = {
    "demo": {
        "subjects": ["01", "02"],
        "seed": 0,
        "images": {"n_images": 48},
        "narrative": {"n_sentences": 24},
    },
    "datasets": {
        "demo-images": {
            "kind": "images",
            "responses": "data/demo/images/sub-{subject}_responses.nc",
            "stimuli": "data/demo/images/stimuli.tsv",
            "subjects": ["01"],
            "models": ["vit", "random-image"],
        },
    },
    "models": {
        "vit": {
            "source": "data/demo/models/vit-tiny-untrained",
            "modality": "image",
            "layers": [1, 5],
        },
        "random-image": {"kind": "random", "modality": "image", "n_units": 16},
    },
    "encoders": {"ridge": {"kind": "ridge", "alphas": [1.0, 100.0, 10000.0], "backend": "numpy"}},
    "cv": {"n_folds": 3, "inner_folds": 2},
    "stats": {"n_permutations": 20},
    "report": {"truth": "data/demo/truth.json"},
}


@pytest.fixture(scope="module")
def slurm_env():
    up = subprocess.run(
        ["bash", str(CLUSTER), "up"], capture_output=True, text=True, timeout=600, check=False
    )
    if up.returncode == 77:
        pytest.skip(up.stderr.strip().splitlines()[-1])
    assert up.returncode == 0, up.stderr[-3000:]
    conf = re.search(r"SLURM_CONF=(\S+)", up.stdout)[1]
    env = {
        **os.environ,
        "SLURM_CONF": conf,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    yield env
    subprocess.run(["bash", str(CLUSTER), "down"], timeout=300, check=False)


def _snakemake(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--profile",
        str(PROFILE),
        # the plugin waits 40 s before its first status check by default; jobs here take seconds
        "--slurm-init-seconds-before-status-checks",
        "2",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200, check=False)


def _sacct(env: dict, since: str) -> list[dict]:
    fields = "JobID,JobName,Partition,State,ExitCode,ReqCPUS,ReqMem,Timelimit,AllocTRES,Comment"
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-S", since, "-o", fields + "%300"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    names = fields.split(",")
    return [dict(zip(names, line.split("|"), strict=True)) for line in out.splitlines() if line]


def _expected(rule: str) -> tuple[dict, dict]:
    """The profile's resources for a rule: defaults merged with its own, and its own alone."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    own = profile.get("set-resources", {}).get(rule, {})
    return {**profile["default-resources"], **own}, own


def _minutes(limit: str) -> int:
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


def _submitted_resources(stdout: str) -> dict[str, list[dict]]:
    """Per rule, the resources Snakemake submitted each job with (from its job listing)."""
    out: dict[str, list[dict]] = {}
    for block in re.split(r"\n(?=rule \w+:)", stdout):
        head = re.match(r"rule (\w+):", block)
        res = re.search(r"^\s+resources: (.*)$", block, flags=re.M)
        if head and res:
            pairs = dict(item.split("=", 1) for item in res[1].split(", "))
            out.setdefault(head[1], []).append(pairs)
    return out


def test_reduced_demo_runs_as_slurm_jobs_and_a_failure_is_reported(slurm_env, tmp_path):
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    workdir = tmp_path / "run dir"  # a path with a space, as on many clusters' home folders
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))

    t0 = time.monotonic()
    run = _snakemake(workdir, slurm_env)
    first_run_s = time.monotonic() - t0
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert (workdir / "results/sub-01/report.html").stat().st_size > 10_000
    assert "sub-01 | demo-images | vit" in (workdir / "results/summary.txt").read_text()

    jobs = _sacct(slurm_env, since)
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        rule = re.match(r"rule_([A-Za-z0-9_]+?)(?:_wildcards_|$)", job["Comment"])
        assert rule, job
        by_rule.setdefault(rule[1], []).append(job)
    submitted = _submitted_resources(log)
    # every rule with a shell command ran as a SLURM job (rule `all` is a local target)
    assert set(by_rule) == {
        "demo_data",
        "features",
        "ceiling",
        "encode",
        "report",
        "summary",
        "group_report",
        "compare_report",
    }
    for rule, rule_jobs in by_rule.items():
        assert len(rule_jobs) == len(submitted[rule]), rule
        want, own = _expected(rule)
        for job, res in zip(rule_jobs, submitted[rule], strict=True):
            assert job["State"] == "COMPLETED", job
            assert job["Partition"] == want["slurm_partition"], (rule, job)
            assert int(job["ReqCPUS"]) == want["cpus_per_task"], (rule, job)
            assert job["ReqMem"] == f"{res['mem_mb']}M", (rule, job)
            assert _minutes(job["Timelimit"]) == int(res["runtime"]), (rule, job)
            if "mem_mb" in own:  # the profile's number for the rule wins over the rule's
                assert job["ReqMem"] == f"{own['mem_mb']}M", (rule, job)
                assert _minutes(job["Timelimit"]) == own["runtime"], (rule, job)
            assert ("gres/gpu=1" in job["AllocTRES"]) == bool(want.get("gpu")), (rule, job)

    # a second run adds a subject whose data hold a NaN voxel: its job fails on SLURM
    from alignment.data.responses import make_responses
    from alignment.io import write_netcdf

    rng = np.random.default_rng(0)
    ids = [f"img{i:04d}" for i in range(48)]
    data = rng.standard_normal((96, 10))
    data[5, 3] = np.nan
    write_netcdf(
        make_responses(data, kind="images", stimulus_id=ids * 2, repetition=[0] * 48 + [1] * 48),
        workdir / "broken" / "sub-02_responses.nc",
    )
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["datasets"]["broken"] = {
        "kind": "images",
        "responses": "broken/sub-{subject}_responses.nc",
        "stimuli": "data/demo/images/stimuli.tsv",
        "subjects": ["02"],
        "models": ["random-image"],
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    since2 = time.strftime("%Y-%m-%dT%H:%M:%S")
    t0 = time.monotonic()
    run = _snakemake(workdir, slurm_env, "--keep-going")
    second_run_s = time.monotonic() - t0
    log = run.stdout + run.stderr
    assert run.returncode != 0, log[-5000:]
    assert "Error in rule ceiling" in log
    assert "results/logs/ceiling/sub-02_broken.log" in log
    failed = [j for j in _sacct(slurm_env, since2) if j["State"] == "FAILED"]
    assert [j["Comment"] for j in failed] == ["rule_ceiling_wildcards_02_broken"], failed
    # the job's own log holds the CLI's one-line reason (it exited 2; the job step reports 1)
    reason = (workdir / "results/logs/ceiling/sub-02_broken.log").read_text()
    assert "alignment ceiling: error: broken/sub-02_responses.nc: 1 voxel(s) with NaN" in reason
    # Snakemake names the SLURM job and its SLURM log too
    assert f"SLURM-job '{failed[0]['JobID']}' failed" in log
    assert re.search(r"slurm_logs/rule_ceiling/\S*/" + failed[0]["JobID"] + r"\.log", log)
    summary = (workdir / "results/summary.txt").read_text()
    assert "sub-01 | demo-images | vit" in summary
    assert "sub-02 | broken | random-image | ridge: FAILED, see results/logs/ceiling/" in summary
    print(f"\nSLURM timings: clean run {first_run_s:.0f} s, failing run {second_run_s:.0f} s")
