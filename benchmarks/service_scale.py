"""Automation at scale: how long one tick of ``benchmark_automation_sensor`` takes with 10, 100 and 500
model partitions (x 2 datasets), on PostgreSQL (``deploy/dagster.yaml``, a throwaway cluster) and on the
embedded SQLite instance of ``make run``. Target: under 5 s per tick at 500 models.

    .venv/bin/python benchmarks/service_scale.py [--models 10 100 500]

Per size and backend, on a fresh instance: the dataset tables and settings materialised, then
* "new models": the tick right after N model partitions were added (every pair missing: it requests the
  2N description partitions, the work of the first tick after a batch of new model files);
* "steady": the next tick after every pair asset of every pair was reported materialised (nothing to
  do, the tick a nightly deployment runs every 30 s).
The tick is ``dg.evaluate_automation_conditions`` in this process on the project's definitions (what the
daemon evaluates, without its gRPC and bookkeeping); the partitions are reported with
``report_runless_asset_event`` (no runs are executed). Needs Debian's PostgreSQL binaries.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

import dagster as dg  # noqa: E402
from _common import machine, markdown_table  # noqa: E402

from vlm_gist_dagster.definitions import build_definitions  # noqa: E402
from vlm_gist_dagster.defs.partitions import DATASETS, pair_key  # noqa: E402
from vlm_gist_dagster.runner import patched_environ  # noqa: E402
from vlm_gist_dagster_tests.postgres.pg_cluster import start_cluster  # noqa: E402

PAIR_ASSETS = (
    "descriptions",
    "detections",
    "detection_images",
    "masks",
    "validations",
    "label_matches",
    "metrics",
)
SQLITE_YAML = "telemetry:\n  enabled: false\n"


def report(instance: dg.DagsterInstance, asset: str, partitions: list[str | None]) -> None:
    for partition in partitions:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=partition))


def measure(instance: dg.DagsterInstance, defs: dg.Definitions, models: int) -> dict[str, float]:
    for asset in ("dataset_images", "ground_truth", "label_matching_settings"):
        report(instance, asset, list(DATASETS))
    report(instance, "detection_settings", [None])
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # the sensor's first tick
    keys = [f"m{i:03d}" for i in range(models)]
    instance.add_dynamic_partitions("models", keys)
    t0 = time.perf_counter()
    new = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    new_s = time.perf_counter() - t0
    requested = new.get_num_requested(dg.AssetKey("descriptions"))
    assert requested == 2 * models, requested
    pairs = [str(pair_key(d, m)) for m in keys for d in DATASETS]
    t0 = time.perf_counter()
    for asset in PAIR_ASSETS:
        report(instance, asset, pairs)
    report_s = time.perf_counter() - t0
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=new.cursor)  # leaderboard
    t0 = time.perf_counter()
    dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after.cursor)
    steady_s = time.perf_counter() - t0
    return {"new": new_s, "steady": steady_s, "report": report_s, "requested": requested}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[10, 100, 500])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vlm_gist_service_scale_"))
    cluster = start_cluster()
    rows = []
    try:
        with patched_environ(
            {"VLM_GIST_DATA_DIR": str(root / "data"), "VLM_GIST_MODELS_DIR": str(root / "models")}
        ):
            defs = build_definitions()
            for models in args.models:
                for backend in ("PostgreSQL", "SQLite"):
                    home = root / f"{backend}_{models}"
                    home.mkdir(parents=True)
                    env = {}
                    if backend == "PostgreSQL":
                        db = f"scale_{models}"
                        cluster.create_database(db)
                        env = cluster.env(db)
                        shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
                    else:
                        (home / "dagster.yaml").write_text(SQLITE_YAML)
                    with patched_environ(env):
                        instance = dg.DagsterInstance.from_config(str(home))
                        try:
                            result = measure(instance, defs, models)
                        finally:
                            instance.dispose()
                    print(f"{backend} {models} models: {result}", flush=True)
                    rows.append(
                        [backend, models, 2 * models, f"{result['new']:.2f} s", f"{result['steady']:.2f} s"]
                    )
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{machine()}\n")
    print(
        markdown_table(
            ["instance", "models", "pairs", "tick after adding them", "steady tick"], rows, "llrrr"
        )
    )


if __name__ == "__main__":
    main()
