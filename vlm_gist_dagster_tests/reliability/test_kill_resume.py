"""Kill -9 in the middle of ``descriptions``, then re-run: no successful call is repeated, and the final
tables equal those of an uninterrupted run.

The pair run (COCO sample, 32 images, 4 requests in flight) runs in a child process against the
simulator of this test. The simulated model answers in 0.2 s until some images are described; then its
latency becomes 60 s, and once every answered request is in the response cache (cache files = answers
the server completed, stable) the child is killed with SIGKILL while the next requests wait for their
answer. Deterministic: the kill happens while no answer is on the wire.

The simulator draws each answer from (seed, model, image, how many times it saw that image); a crashed
client's unanswered requests were counted, so the counters are reset before the re-run and before the
reference run — as a real model that does not remember the request that was cut off. The model has
recall 1 and always one invented object, so every answer is a valid description (one attempt per image)
and both runs ask the simulator exactly the same questions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from vlm_gist_dagster.defs.partitions import pair_key
from vlm_gist_dagster.defs.selections import PAIR_ASSET_KEYS
from vlm_gist_dagster.runner import patched_environ, simulator_environment
from vlm_gist_dagster.sim import SERVER_NAMES, start_simulator

from ..deployment import REPO, Deployment, run_job

MODEL, KEY = "rel/resume", "resume"
PAIR = str(pair_key("coco", KEY))
PAIR_ASSETS = tuple(key.to_user_string() for key in PAIR_ASSET_KEYS)
#: Columns that record wall-clock time or how a value was obtained (live or from the cache).
VOLATILE = {"duration_s", "attempt_log_json", "from_cache", "time"}
CHILD = """
import dagster as dg
from vlm_gist_dagster.definitions import build_definitions
instance = dg.DagsterInstance.get()
job = build_definitions().resolve_job_def("benchmark_pair_job")
job.execute_in_process(partition_key={pair!r}, instance=instance)
"""


def answered(sim) -> list:
    return [
        r
        for r in sim.request_log
        if r.model == MODEL and r.path == "/v1/chat/completions" and r.status == 200
    ]


def cache_files(deployment: Deployment) -> int:
    return sum(1 for _ in (deployment.data_dir / "cache" / "responses").rglob("*.json"))


def wait_for(condition, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def prepare(deployment: Deployment) -> None:
    deployment.write_model(KEY, MODEL)
    instance = deployment.instance()
    try:
        instance.add_dynamic_partitions("models", [KEY])
        defs = deployment.definitions()
        run_job(defs, instance, "datasets_job", "coco")
        run_job(defs, instance, "settings_job")
    finally:
        instance.dispose()


def run_pair(deployment: Deployment) -> None:
    instance = deployment.instance()
    try:
        run_job(deployment.definitions(), instance, "benchmark_pair_job", PAIR)
    finally:
        instance.dispose()


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in frame.columns if c in VOLATILE]).reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, coco_dataset):
    interrupted = Deployment.create(tmp_path_factory.mktemp("interrupted"))
    reference = Deployment.create(tmp_path_factory.mktemp("reference"))
    sim = start_simulator({"coco": coco_dataset}, ports={name: 0 for name in SERVER_NAMES}, seed=0)
    quiet = {"recall": 1.0, "hallucinations": 1.0, "latency_jitter_s": 0.0, "faults": {}}
    try:
        with patched_environ(simulator_environment(sim)):
            prepare(interrupted)
            sim.set_controls("chat", model=MODEL, latency_mean_s=0.2, **quiet)
            env = {
                **os.environ,
                **simulator_environment(sim),
                **interrupted.environ(),
                "VLM_GIST_CONCURRENCY": "4",
            }
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD.format(pair=PAIR)],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_for(lambda: len(answered(sim)) >= 8, 120, "8 described images")
                sim.set_controls("chat", model=MODEL, latency_mean_s=60.0)  # the next answers will not come

                # Quiet for 1.5 s (7x the 0.2 s answers still in flight when the latency went up, so a
                # loaded machine's scheduling delays fit inside it) and every answer cached.
                def quiet_and_cached() -> bool:
                    before = (len(answered(sim)), cache_files(interrupted))
                    time.sleep(1.5)
                    after = (len(answered(sim)), cache_files(interrupted))
                    return before == after and after[0] == after[1]

                wait_for(quiet_and_cached, 90, "every answered request to be cached")
                assert child.poll() is None, "the pair run ended before it could be killed"
                killed_after = len(answered(sim))
                os.kill(child.pid, signal.SIGKILL)
            finally:
                child.wait(30)
            assert child.returncode == -signal.SIGKILL
            assert killed_after < 32  # killed in the middle of descriptions
            before_resume = Counter(r.image_key for r in answered(sim))

            sim.reset_counters()
            sim.set_controls("chat", model=MODEL, latency_mean_s=0.0)
            run_pair(interrupted)
            after_resume = Counter(r.image_key for r in answered(sim))

            sim.reset_counters()
            prepare(reference)
            run_pair(reference)
        yield interrupted, reference, before_resume, after_resume, killed_after
    finally:
        sim.stop()


def test_no_successful_call_is_repeated(runs):
    interrupted, _, before_resume, after_resume, killed_after = runs
    assert 8 <= killed_after == sum(before_resume.values())
    table = interrupted.read("descriptions", "coco", KEY)
    assert table["success"].all() and (table["attempts"] == 1).all()
    # every image was answered exactly once over both runs: the resumed run asked only for the rest
    assert after_resume == Counter({f"coco/{i}": 1 for i in table["image_id"]})
    resumed = after_resume - before_resume
    assert sum(resumed.values()) == 32 - killed_after
    assert int(table["from_cache"].sum()) == killed_after


@pytest.mark.parametrize("asset", PAIR_ASSETS)
def test_final_tables_equal_an_uninterrupted_run(runs, asset):
    interrupted, reference, *_ = runs
    got = comparable(interrupted.read(asset, "coco", KEY))
    want = comparable(reference.read(asset, "coco", KEY))
    assert len(want) > 0
    pd.testing.assert_frame_equal(got, want)


def test_the_leftover_run_of_the_killed_process_does_not_block_the_rerun(runs):
    interrupted, *_ = runs
    instance = interrupted.instance()
    try:
        import dagster as dg

        runs_of_pair = instance.get_runs(filters=dg.RunsFilter(job_name="benchmark_pair_job"))
        statuses = sorted(r.status.value for r in runs_of_pair)
    finally:
        instance.dispose()
    # the killed run is left as started (nobody could mark it), the re-run succeeded
    assert statuses == ["STARTED", "SUCCESS"]


def test_no_partial_parquet_file_is_left(runs):
    interrupted, *_ = runs
    leftovers = [p for p in Path(interrupted.assets_dir).rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
