"""A pair run killed in the middle and restarted repeats no successful model call, and ends with the
tables of an uninterrupted run.

The run is a separate process (the pair job, executed as ``vlm-gist run`` executes it, configured by the
environment) against the simulator running in this process, whose request log survives the kill. The
process SIGKILLs itself right after the response cache stored its ``KILL_AFTER``-th description attempt:
a crash with no cleanup, at a point where no other request is in flight (one request at a time in that
process; the cache write follows the response with no ``await`` in between), so every call the model
answered before the crash is in the cache. The restart (in this process, same instance, data and asset
directories) must then ask the simulator only for what was never answered.

The model has a seeded 30 % invalid-JSON rate, so images need 1-4 attempts and the cache must replay the
failed attempts too (by attempt number), or the restarted run would repeat them or shift the attempts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter

import dagster as dg
import pandas as pd
import pytest

from vlm_gist_dagster.defs.partitions import pair_key

from ..deployment import NO_FAULTS, PAIR_ASSETS, Deployment, run_inputs, run_job

MODEL_NAME = "sim/strong"
KEY = str(pair_key("coco", "sim_strong"))
KILL_AFTER = 17  # description attempts answered (and cached) before the crash
#: Columns that measure wall-clock time or say where a value came from: they differ between two runs.
TIMING = {"duration_s", "attempt_log_json", "from_cache", "time"}

CHILD = textwrap.dedent(
    """
    import os, signal, sys

    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    from vlm_gist_dagster.clients.cache import ResponseCache
    from vlm_gist_dagster.definitions import build_definitions

    kill_after, model, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    stored = 0
    put = ResponseCache.put

    def put_then_maybe_crash(self, cache_key, response):
        global stored
        put(self, cache_key, response)
        if cache_key.model == model:
            stored += 1
            if stored == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    ResponseCache.put = put_then_maybe_crash
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(os.environ["DAGSTER_HOME"]))
    job = build_definitions().resolve_job_def("benchmark_pair_job")
    job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
    sys.exit(3)  # not reached: the process kills itself during the descriptions
    """
)


@pytest.fixture()
def flaky_model(simulator):
    simulator.set_controls("chat", model=MODEL_NAME, seed=5, faults={**NO_FAULTS, "invalid_json": 0.3})
    yield simulator
    simulator.set_controls("chat", model=MODEL_NAME, faults=NO_FAULTS)


def successful_calls(records) -> Counter:
    """``(server, path, image) -> answered requests`` of the model and the vision servers."""
    return Counter(
        (r.server, r.path, r.image_key)
        for r in records
        if r.status == 200
        and (
            (r.server == "chat" and r.model == MODEL_NAME)
            or r.path in ("/infer", "/update")  # vision inference (SAM2 update + track)
        )
    )


def tables(deployment: Deployment) -> dict[str, pd.DataFrame]:
    out = {}
    for asset in PAIR_ASSETS:
        table = deployment.read(asset, "coco", "sim_strong")
        out[asset] = table.drop(columns=[c for c in table.columns if c in TIMING])
    return out


def test_killed_run_resumes_without_repeating_a_successful_call(flaky_model, tmp_path):
    simulator = flaky_model
    log = simulator.request_log

    # -- the interrupted run, then the restart -------------------------------------------------------
    deployment = Deployment.create(tmp_path / "resumed", ["sim_strong"])
    instance = deployment.instance()
    try:
        defs = deployment.definitions()
        instance.add_dynamic_partitions("models", ["sim_strong"])
        run_inputs(defs, instance, ["coco"])
        simulator.reset_counters()
        start = len(log)
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        env = {**os.environ, **deployment.environ(), "VLM_GIST_CONCURRENCY": "1"}
        child = subprocess.run(
            [sys.executable, str(script), str(KILL_AFTER), MODEL_NAME, KEY],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert child.returncode == -signal.SIGKILL, child.stderr[-4000:]
        before_crash = log.snapshot()[start:]
        crashed = successful_calls(before_crash)
        # killed in the middle of the descriptions: exactly KILL_AFTER answered attempts, no vision yet
        assert sum(crashed.values()) == KILL_AFTER
        assert all(server == "chat" for server, _, _ in crashed)
        runs = instance.get_runs()
        pair_runs = [r.status for r in runs if r.job_name == "benchmark_pair_job"]
        assert pair_runs == [dg.DagsterRunStatus.STARTED]  # the crashed run never finished
        assert not instance.get_materialized_partitions(dg.AssetKey("descriptions"))

        restart = len(log)
        run_job(defs, instance, "benchmark_pair_job", KEY)
        resumed_log = log.snapshot()[restart:]
        resumed = tables(deployment)
        descriptions = deployment.read("descriptions", "coco", "sim_strong")
    finally:
        instance.dispose()
    total = successful_calls(before_crash) + successful_calls(resumed_log)

    # -- the same pair uninterrupted, from the same simulator state -----------------------------------
    reference = Deployment.create(tmp_path / "uninterrupted", ["sim_strong"])
    with dg.instance_for_test() as instance:
        defs = reference.definitions()
        instance.add_dynamic_partitions("models", ["sim_strong"])
        run_inputs(defs, instance, ["coco"])
        simulator.reset_counters()
        start = len(log)
        run_job(defs, instance, "benchmark_pair_job", KEY)
        uninterrupted = successful_calls(log.snapshot()[start:])
        expected = tables(reference)

    # no answered call was asked again: per image, as many answered description attempts and vision
    # calls as the uninterrupted run, and the restart asked none of the KILL_AFTER answered before
    assert total == uninterrupted
    assert sum(n for (server, _, _), n in uninterrupted.items() if server == "chat") > len(descriptions)
    restarted = successful_calls(resumed_log)
    for call, n in crashed.items():
        assert restarted[call] == uninterrupted[call] - n, call
    # the final descriptions replayed exactly those attempts from the cache
    attempt_logs = descriptions["attempt_log_json"].map(json.loads)
    assert sum(a["from_cache"] for attempts in attempt_logs for a in attempts) == KILL_AFTER
    answered = sum(n for (server, _, _), n in uninterrupted.items() if server == "chat")
    assert descriptions["attempts"].sum() == answered

    for asset in PAIR_ASSETS:
        pd.testing.assert_frame_equal(resumed[asset], expected[asset], obj=asset)
