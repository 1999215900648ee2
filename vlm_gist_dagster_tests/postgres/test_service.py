"""The production instance (``deploy/dagster.yaml``) on a real PostgreSQL, driven by a real daemon
(issue 19, item 3).

* ``dagster instance info`` accepts the file and reports PostgreSQL storage and the run queue; the
  pool limits that the README tells operators to set (``dagster instance concurrency set``) land in it.
* A backfill of 10 simulated models x 2 datasets (20 runs) goes through the queued run coordinator and
  the daemon: never more runs at once than ``max_concurrent_runs`` (nor than the backfill's tag limit),
  never two SAM2 (``masks``) steps at once on the one SAM2 server (its pool's default limit 1), all
  checked from the event log; the leaderboard follows by automation; the daemon is SIGKILLed half-way
  and restarted, and the backfill still finishes with every pair materialised exactly once and no model
  request sent twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pandas as pd
import pytest
from dagster._core.execution.backfill import BulkActionStatus

from vlm_gist_dagster.defs.partitions import DATASETS, pair_key
from vlm_gist_dagster.runner import simulator_environment
from vlm_gist_dagster.sim import FAULT_TYPES, SERVER_NAMES, controls_from_model_files, start_simulator

from .service import (
    IN_PROCESS,
    Service,
    backfill_finished,
    deploy_config,
    materialization_counts,
    max_overlap,
    mini_coco,
    mini_vlm_gist,
    step_intervals,
    submit_asset_backfill,
    wait_for,
    write_fast_model,
)

DAGSTER = Path(sys.executable).with_name("dagster")
MODELS = [f"m{i:02d}" for i in range(10)]
NO_FAULTS = {name: 0.0 for name in FAULT_TYPES}
BACKFILL_TAG = "dagster/backfill"


def test_dagster_instance_info_accepts_the_deploy_config(tmp_path, pg_env):
    service = Service.create(tmp_path, pg_env, {})
    env = {**os.environ, **service.env}
    info = subprocess.run(
        [str(DAGSTER), "instance", "info"], env=env, capture_output=True, text=True, timeout=120
    )
    assert info.returncode == 0, info.stderr[-3000:]
    for expected in (
        "PostgresRunStorage",
        "PostgresEventLogStorage",
        "PostgresScheduleStorage",
        "max_concurrent_runs: 4",
    ):
        assert expected in info.stdout, info.stdout
    assert "current: " in info.stdout.split("Storage schema state:")[1]  # it created and reads the schema
    # The README's one-off setup: the VLM APIs' pool above the default limit of 1.
    done = subprocess.run(
        [str(DAGSTER), "instance", "concurrency", "set", "vlm_api", "8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    instance = service.instance()
    try:
        assert instance.event_log_storage.get_concurrency_info("vlm_api").slot_count == 8
        # Pools without their own limit (a vision server's) get deploy/dagster.yaml's default of 1.
        assert instance.global_op_concurrency_default_limit == 1
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
    finally:
        instance.dispose()


@pytest.fixture()
def service(tmp_path, pg_env, vlm_gist_dir, coco_dir) -> Iterator[tuple[Service, object]]:
    """10 fast simulated models, 2-image copies of both datasets, the simulator, deploy/dagster.yaml."""
    vlm_gist = mini_vlm_gist(vlm_gist_dir, tmp_path / "vlm_gist_2", 2)
    coco = mini_coco(coco_dir, tmp_path / "coco_2", 2)
    handle = None
    service = Service.create(tmp_path / "service", pg_env, {})
    try:
        files = [write_fast_model(service.models_dir, m) for m in MODELS]
        handle = start_simulator(
            {"vlm_gist": vlm_gist, "coco": coco},
            ports={name: 0 for name in SERVER_NAMES},
            seed=0,
            model_controls=controls_from_model_files(files),
            capture_bodies=True,
        )
        for model in MODELS:
            handle.set_controls("chat", model=f"test/{model}", faults=NO_FAULTS)
        # The label-matching LLM: one SSE chunk per answer, no latency, no faults.
        handle.set_controls(
            "chat", model=None, latency_mean_s=0.0, latency_jitter_s=0.0, chunk_chars=4096, faults=NO_FAULTS
        )
        service.env.update(simulator_environment(handle))
        service.env.update(
            {"VLM_GIST_DATASET_DIR_VLM_GIST": str(vlm_gist), "VLM_GIST_DATASET_DIR_COCO": str(coco)}
        )
        yield service, handle
    finally:
        service.stop_daemon()
        if handle is not None:
            handle.stop()


def test_backfill_through_the_run_queue_survives_a_daemon_kill(service):
    service, simulator = service
    config = deploy_config()
    max_runs = config["concurrency"]["runs"]["max_concurrent_runs"]
    backfill_limit = next(
        limit["limit"]
        for limit in config["concurrency"]["runs"]["tag_concurrency_limits"]
        if limit["key"] == BACKFILL_TAG
    )
    assert config["concurrency"]["pools"]["default_limit"] == 1  # the SAM2 server's pool

    instance = service.instance()
    try:
        # The one-off setup of the README: the API pools above the default limit of 1.
        instance.event_log_storage.set_concurrency_slots("vlm_api", 8)
        instance.event_log_storage.set_concurrency_slots("vision_servers", 4)
        with service.environment():
            from vlm_gist_dagster.defs.label_matches import LABEL_MATCHING_POOL
            from vlm_gist_dagster.defs.validations import VALIDATION_POOL
        for provider_pool in {LABEL_MATCHING_POOL, VALIDATION_POOL} - {"vlm_api"}:
            instance.event_log_storage.set_concurrency_slots(provider_pool, 4)
        with service.environment():
            from vlm_gist_dagster.definitions import build_definitions

            defs = build_definitions()
            for dataset in DATASETS:
                result = defs.resolve_job_def("datasets_job").execute_in_process(
                    partition_key=dataset, instance=instance, run_config=IN_PROCESS
                )
                assert result.success
            assert defs.resolve_job_def("settings_job").execute_in_process(instance=instance).success
            instance.add_dynamic_partitions("models", MODELS)
            backfill_id = submit_asset_backfill(instance, defs, MODELS)

        def backfill_runs(*statuses: dg.DagsterRunStatus) -> list[dg.DagsterRun]:
            filters = dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}, statuses=list(statuses) or None)
            return list(instance.get_runs(filters=filters))

        # First daemon: killed once a third of the pairs are done, with runs in flight.
        service.start_daemon()
        wait_for(lambda: len(backfill_runs(dg.DagsterRunStatus.SUCCESS)) >= 6, 420, "6 pair runs", service)
        in_flight_at_kill = len(backfill_runs(dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING))
        service.kill_daemon()
        time.sleep(2)
        service.start_daemon()

        def backfill_done() -> bool:
            return backfill_finished(instance, backfill_id)

        wait_for(backfill_done, 420, "the backfill to finish", service)
        assert instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS, (
            service.daemon_output()
        )

        last_metrics = max(
            r.timestamp for r in instance.fetch_materializations(dg.AssetKey("metrics"), limit=1000).records
        )

        def leaderboard_after_metrics():
            event = instance.get_latest_materialization_event(dg.AssetKey("leaderboard"))
            return event if event is not None and event.timestamp > last_metrics else None

        leaderboard_event = wait_for(leaderboard_after_metrics, 240, "the leaderboard (automation)", service)
        service.stop_daemon()

        # Every pair materialised exactly once: nothing lost, nothing run twice across the daemon kill.
        pairs = {str(pair_key(d, m)) for m in MODELS for d in DATASETS}
        for asset in ("descriptions", "masks", "metrics"):
            counts = materialization_counts(instance, asset)
            assert set(counts) == pairs, asset
            assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
        # ... and no model request sent twice (every answer came from the server once, then the cache).
        bodies = Counter(
            (r.model, r.body)
            for r in simulator.request_log.filter(server="chat")
            if (r.model or "").startswith("test/")
        )
        assert bodies and max(bodies.values()) == 1, [k[0] for k, n in bodies.items() if n > 1]

        # The run queue, from the event log: RUN_START .. RUN_SUCCESS/FAILURE of every run.
        runs = [r for r in instance.get_run_records() if r.start_time and r.end_time]
        pair_runs = [r for r in runs if r.dagster_run.tags.get(BACKFILL_TAG) == backfill_id]
        runs_seen = [
            (
                r.dagster_run.tags.get("dagster/partition"),
                r.dagster_run.status.value,
                r.dagster_run.tags.get("dagster/parent_run_id"),
            )
            for r in pair_runs
        ]
        # One successful run per pair; any other run of the backfill is one the kill interrupted, which the
        # instance's run retries replaced (a later run names it as its parent) without a second
        # materialisation or a second model request (both checked above).
        ids = {r.dagster_run.run_id for r in pair_runs}
        retries = [
            r
            for r in runs
            if r.dagster_run.tags.get("dagster/parent_run_id") in ids and r.dagster_run.run_id not in ids
        ]  # in case a retry does not carry the backfill's tag
        succeeded = [r for r in pair_runs + retries if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS]
        assert sorted(r.dagster_run.tags.get("dagster/partition") for r in succeeded) == sorted(pairs), (
            runs_seen
        )
        parents = {r.dagster_run.tags.get("dagster/parent_run_id") for r in runs}
        interrupted = [r for r in pair_runs if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
        assert all(r.dagster_run.run_id in parents for r in interrupted), runs_seen
        launched = [
            r
            for r in runs
            if r.dagster_run.tags.get(BACKFILL_TAG) or r.dagster_run.tags.get("dagster/sensor_name")
        ]
        assert max_overlap([(r.start_time, r.end_time) for r in launched]) <= max_runs
        peak = max_overlap([(r.start_time, r.end_time) for r in pair_runs])
        assert 2 <= peak <= backfill_limit, peak  # the queue ran pairs in parallel, within the tag limit

        # The SAM2 pool (`sam2_realtime@<host>:<port>`, orchestration/policies.py) got deploy/dagster.yaml's
        # default limit of 1, and the masks steps of all runs never overlapped.
        sam2 = urlsplit(simulator.vision_urls["sam2_realtime"])
        sam2_pool = f"sam2_realtime@{sam2.hostname}:{sam2.port}"
        assert sam2_pool in instance.event_log_storage.get_concurrency_keys()
        assert instance.event_log_storage.get_concurrency_info(sam2_pool).slot_count == 1
        masks = step_intervals(instance, [r.dagster_run.run_id for r in pair_runs], "masks")
        assert len(masks) == len(pairs)
        assert max_overlap([(s, e) for s, e, _ in masks]) == 1

        # The leaderboard was launched by the automation sensor and lists every model on both datasets.
        leaderboard_run = instance.get_run_by_id(leaderboard_event.run_id)
        assert leaderboard_run.tags.get("dagster/sensor_name") == "benchmark_automation_sensor", (
            leaderboard_run.tags
        )
        table = pd.read_parquet(service.assets_dir / "leaderboard.parquet")
        print(
            f"in flight at the kill: {in_flight_at_kill}; peak pair runs: {peak}; leaderboard columns: {list(table.columns)}"
        )
        assert {f"{m} (simulated)" for m in MODELS} <= set(table.astype(str).stack()), table.head()
    finally:
        instance.dispose()
