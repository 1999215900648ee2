"""``vlm-gist``: the project's command line.

``vlm-gist run`` runs the main job into the local Dagster instance (``$DAGSTER_HOME``, default
``data/dagster_home``), so that ``dagster dev`` shows the runs, lineage and metadata afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import paths


def _instance():
    import dagster as dg

    home = os.environ.get("DAGSTER_HOME")
    if not home:
        home = str(paths.data_dir() / "dagster_home")
        os.environ["DAGSTER_HOME"] = home
    os.makedirs(home, exist_ok=True)
    return dg.DagsterInstance.get()


def run(args: argparse.Namespace) -> int:
    from .definitions import defs
    from .defs.partitions import DATASETS

    instance = _instance()
    datasets = args.datasets or list(DATASETS)
    job = defs.resolve_job_def("datasets_job")
    failed = []
    for index, dataset in enumerate(datasets, start=1):
        print(f"[{index}/{len(datasets)}] materialising dataset assets for {dataset!r}", flush=True)
        result = job.execute_in_process(partition_key=dataset, instance=instance, raise_on_error=False)
        if not result.success:
            failed.append(dataset)
            print(f"  failed: see the run {result.run_id} in `make dev` (Dagster UI)", file=sys.stderr)
    print(f"\nDagster instance: {os.environ['DAGSTER_HOME']}  (browse it with `make dev`)")
    print(f"Parquet assets:   {paths.assets_dir()}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-gist", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the benchmark's main job into the local Dagster instance")
    p_run.add_argument("--datasets", nargs="*", help="datasets to run (default: all)")
    p_run.set_defaults(func=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
