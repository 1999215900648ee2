"""Run every benchmark, one after the other (they would disturb each other's timings), and print their
Markdown tables as one report.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only throughput whole scale eval stats service backfill]

The full run takes about an hour on 2 cores (the description throughput at concurrency 1 alone is 500
requests of 1 s). ``--quick`` uses small sizes to check that everything works (a few minutes); its
numbers are not the README's.

| script | what | target (issue 8) |
|:--|:--|:--|
| ``description_throughput.py`` | images/s at 1 / 8 / 32 / 64 requests in flight, 1 s latency; slowdown with 10 % 429 + 5 % stalls | ≥ 90 % of ideal at 32 |
| ``whole_benchmark.py`` | ``vlm-gist run`` for 1, 5, 20 zero-latency models on both datasets; adding a 21st | ≤ 1/15 of a full run |
| ``scale.py`` | a synthetic 1,000 / 2,500 / 5,000-image dataset through the whole pair | RSS < 1.5 GB, time linear |
| ``eval_speed.py`` | our evaluation vs FiftyOne ``evaluate_detections`` | identical numbers |
| ``statistics_speed.py`` | bootstrap of one pair; paired tests, ranks, groups of 50 models x 2 datasets | < 2 s; < 60 s (issue 17) |
| ``service_scale.py`` | automation sensor tick at 10 / 100 / 500 model partitions, PostgreSQL and SQLite | < 5 s at 500 (issue 19) |
| ``service_backfill.py`` | one backfill of 50 models x 2 datasets through the daemon and run queue, PostgreSQL vs SQLite | measured (issue 19) |
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "throughput": (
        "Description throughput",
        "description_throughput.py",
        ["--images", "128", "--concurrency", "8", "32"],
    ),
    "whole": ("Whole benchmark", "whole_benchmark.py", ["--models", "1", "3", "--datasets", "coco"]),
    "scale": ("Scale", "scale.py", ["--images", "250", "500"]),
    "eval": (
        "Evaluation speed",
        "eval_speed.py",
        ["--images", "1000", "--fiftyone-images", "500", "--repeat", "2"],
    ),
    "stats": (
        "Statistics speed",
        "statistics_speed.py",
        ["--models", "8", "--images", "200", "--repeat", "2"],
    ),
    "service": ("Automation at scale", "service_scale.py", ["--models", "10"]),
    "backfill": ("Backfill through the service", "service_backfill.py", ["--models", "3"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the scripts work")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=list(BENCHMARKS))
    args = parser.parse_args()
    failed = []
    for key in args.only:
        title, script, quick = BENCHMARKS[key]
        command = [sys.executable, str(HERE / script), *(quick if args.quick else [])]
        print(f"## {title}\n", flush=True)
        result = subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True)
        print(result.stdout, flush=True)
        if result.returncode != 0:
            failed.append(script)
            print(
                f"**{script} failed with exit code {result.returncode}** (its stderr is above)\n", flush=True
            )
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
