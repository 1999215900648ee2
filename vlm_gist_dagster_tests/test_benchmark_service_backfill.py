"""The pure parts of ``benchmarks/service_backfill.py`` (the service backfill benchmark, issue 19): the
phases of a run from its event log, the slot-refill latency, the most runs at once, median / p90, and
which Dagster process a command line is. Fabricated event logs with values computed by hand; the
percentile also against numpy. The benchmark itself (minutes, a PostgreSQL cluster and a daemon) is not
run here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    path = REPO / "benchmarks" / "service_backfill.py"
    spec = importlib.util.spec_from_file_location("service_backfill_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_run_timing_splits_a_run_into_queue_launch_steps_and_overhead(bench):
    events = [
        ("RUN_ENQUEUED", None, 100.0),
        ("ENGINE_EVENT", None, 101.0),
        ("RUN_STARTING", None, 130.0),  # the daemon dequeued and launched it (no RUN_DEQUEUED in 1.13)
        ("RUN_START", None, 134.0),
        ("STEP_START", "descriptions", 135.0),
        ("STEP_OUTPUT", "descriptions", 136.5),
        ("STEP_SUCCESS", "descriptions", 137.0),  # 2.0 s
        ("STEP_START", "masks", 137.5),
        ("STEP_UP_FOR_RETRY", "masks", 138.0),
        ("STEP_RESTARTED", "masks", 140.0),
        ("STEP_START", "masks", 140.0),
        ("STEP_SUCCESS", "masks", 141.0),  # first start to last end: 3.5 s, the retry wait included
        ("STEP_START", "metrics", 141.2),
        ("STEP_FAILURE", "metrics", 141.7),  # 0.5 s
        ("RUN_FAILURE", None, 142.0),
    ]
    t = bench.run_timing(events)
    assert t.queued_s == pytest.approx(30.0)
    assert t.launch_s == pytest.approx(4.0)
    assert t.run_s == pytest.approx(8.0)
    assert t.steps_s == pytest.approx(6.0)
    assert t.overhead_s == pytest.approx(2.0)
    assert (t.dequeued, t.started, t.ended) == (130.0, 134.0, 142.0)


def test_run_timing_of_a_run_that_never_went_through_the_queue(bench):
    t = bench.run_timing(
        [
            ("RUN_START", None, 5.0),
            ("STEP_START", "a", 5.5),
            ("STEP_SUCCESS", "a", 6.0),
            ("RUN_SUCCESS", None, 7.0),
        ]
    )
    assert t.queued_s is None and t.launch_s is None and t.dequeued is None
    assert t.run_s == pytest.approx(2.0) and t.overhead_s == pytest.approx(1.5)
    unfinished = bench.run_timing([("RUN_START", None, 5.0), ("STEP_START", "a", 5.5)])
    assert unfinished.run_s is None and unfinished.overhead_s is None and unfinished.steps_s == 0


def test_refill_latency_is_the_wait_from_a_run_end_to_the_next_dequeue(bench):
    # Three slots filled at 0; runs end at 10, 20, 30; the next runs are dequeued at 11, 20, 31.
    assert bench.refill_latencies([30.0, 10.0, 20.0], [0, 0, 0, 11.0, 20.0, 31.0]) == [1.0, 0.0, 1.0]
    # Runs that end after the last dequeue had nothing left to start.
    assert bench.refill_latencies([10.0, 40.0, 50.0], [0.0, 12.5]) == [2.5]


def test_max_overlap(bench):
    assert bench.max_overlap([]) == 0
    assert bench.max_overlap([(0, 10), (1, 2), (3, 4), (3.5, 5)]) == 3  # (0,10), (3,4), (3.5,5)
    assert bench.max_overlap([(0, 1), (1, 2), (2, 3)]) == 1  # an end at t closes before a start at t


def test_median_and_p90(bench):
    assert bench.median_p90([]) is None
    assert bench.median_p90([4.0, 1.0, 3.0, 2.0]) == pytest.approx((2.5, 3.7))  # rank 0.9 * 3 = 2.7
    values = [0.4, 9.0, 1.25, 3.0, 0.75, 2.0, 7.5]
    median, p90 = bench.median_p90(values)
    assert median == pytest.approx(np.median(values))
    assert p90 == pytest.approx(np.percentile(values, 90))


def test_process_roles_of_a_daemon_tree(bench):
    assert bench.process_role(["/x/.venv/bin/python", "/x/.venv/bin/dagster-daemon", "run"]) == "daemon"
    grpc = ["/x/.venv/bin/python", "-m", "dagster", "api", "grpc", "--lazy-load-user-code", "--port", "0"]
    assert bench.process_role(grpc) == "code_server"
    worker = ["/x/.venv/bin/python", "-m", "dagster", "api", "execute_run", '{"__class__": "ExecuteRunArgs"}']
    assert bench.process_role(worker) == "run_worker"
    # What the code server really starts: a multiprocessing spawn child.
    spawn = [
        "/x/.venv/bin/python",
        "-c",
        "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=7)",
    ]
    assert bench.process_role(spawn, ["code_server", "daemon", "other"]) == "run_worker"
    assert bench.process_role(spawn, ["daemon"]) == "other"
    assert bench.process_role(["/usr/bin/python3", "-c", "print(1)"]) == "other"
