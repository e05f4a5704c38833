"""Wall time and peak memory of the whole demo pipeline (what `make demo` runs after set-up).

Runs Snakemake on the default config in a fresh working directory and prints one JSON line
last: wall time, peak resident memory of the largest job, and the ratios to the targets
(about 10 minutes and under 4 GB on 2 cores).

Usage: python benchmarks/demo_pipeline.py [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_WALL_S = 600.0
TARGET_PEAK_MB = 4096.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="demo-bench-"))
    shutil.copy(REPO / "config.yaml", workdir / "config.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    snakemake = Path(sys.executable).parent / "snakemake"
    start = time.perf_counter()
    done = subprocess.run(
        [
            str(snakemake),
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(workdir),
            "--cores",
            str(args.cores),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
    reports = sorted(str(p.relative_to(workdir)) for p in workdir.glob("results/sub-*/report.html"))
    shutil.rmtree(workdir, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "demo_pipeline",
                "cores": args.cores,
                "ok": done.returncode == 0,
                "reports": reports,
                "wall_s": round(wall, 1),
                "peak_rss_mb": round(peak_mb, 1),
                "wall_ratio_to_target": round(wall / TARGET_WALL_S, 3),
                "peak_ratio_to_target": round(peak_mb / TARGET_PEAK_MB, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
