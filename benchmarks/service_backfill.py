"""The service at scale (issue 19): one backfill of N simulated models x 2 datasets (every pair asset,
one run per pair) driven by a real ``dagster-daemon`` through the run queue, on PostgreSQL
(``deploy/dagster.yaml`` on a throwaway local cluster) and on SQLite (the embedded storage of ``make run``
with the same run queue, pools and daemons: ``deploy/dagster.yaml`` without its ``storage`` block, so the
only difference is the database).

    .venv/bin/python benchmarks/service_backfill.py [--models 50] [--images 2] [--backend both] [--json out.json]

Per backend, on a fresh instance: both dataset tables and the settings materialised in this process; N
generated zero-latency models (``_common.write_models``: copies of ``sim_strong`` / ``sim_medium`` /
``sim_weak``); the simulator in its own process; datasets cut to ``--images`` images each (the runs stay
short: this measures the service, not the stages); then ONE asset backfill of all 2N pairs is submitted
and the daemon started, and the script waits until the backfill is done. It reports:

* wall time: backfill submitted to the last of its runs finished;
* runs succeeded / failed (backfill runs) and other runs (the automation sensor's, e.g. the leaderboard);
* per run, from its event log: *queued* (enqueued to dequeued: waiting for a slot, by design), *launch*
  (dequeued to RUN_START: starting the run worker process and loading the code), *in-run overhead* (RUN_START
  to RUN_SUCCESS minus the summed STEP_START..STEP_SUCCESS durations: planning, event-log writes, waits for a
  pool slot), *refill* (a backfill run finished to the next run dequeued: how fast the daemon fills a free
  slot); median and p90;
* CPU seconds (psutil, sampled every 0.5 s) of the daemon process, the code server it started, and the run
  workers (a lower bound: a worker's last half second before it exits can be missed), and of the simulator;
* the most runs in progress at once (RUN_START..end; must be <= ``max_concurrent_runs``) and the most
  backfill runs at once (its tag limit);
* database size before the backfill (schema, datasets, settings) and after: ``pg_database_size``, or the
  SQLite files under DAGSTER_HOME (``history/runs.db``, ``history/runs/*.db`` per run, ``schedules/``);
* runs and event-log entries in the instance.

Needs Debian's PostgreSQL binaries for the PostgreSQL backend (``pg_cluster.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

from _common import DATASET_DIRS, SimulatorProcess, machine, markdown_table, write_models  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Pure parts (tested in vlm_gist_dagster_tests/test_benchmark_service_backfill.py)

RUN_END_EVENTS = ("RUN_SUCCESS", "RUN_FAILURE", "RUN_CANCELED")
STEP_END_EVENTS = ("STEP_SUCCESS", "STEP_FAILURE")


@dataclass(frozen=True)
class RunTiming:
    """One run's phases in seconds (None where its event log lacks the events)."""

    queued_s: float | None  # RUN_ENQUEUED -> RUN_STARTING (the daemon took it off the queue)
    launch_s: float | None  # RUN_STARTING -> RUN_START (the run worker is up and has loaded the code)
    run_s: float | None  # RUN_START -> RUN_SUCCESS / RUN_FAILURE / RUN_CANCELED
    steps_s: float  # sum over steps of first STEP_START -> last STEP_SUCCESS / STEP_FAILURE
    dequeued: float | None
    started: float | None
    ended: float | None

    @property
    def overhead_s(self) -> float | None:
        """The run's wall time outside its steps."""
        return None if self.run_s is None else self.run_s - self.steps_s


def run_timing(events: Iterable[tuple[str, str | None, float]]) -> RunTiming:
    """The phases of one run from its event log, given as ``(event type name, step key, timestamp)``
    (``DagsterEventType`` names: ``RUN_ENQUEUED``, ``STEP_START``, ...). The run queue logs no
    ``RUN_DEQUEUED`` (Dagster 1.13 defines but never emits it): the daemon's ``RUN_STARTING``, logged when
    it launches a dequeued run, marks the dequeue. A retried step counts from its first start to its last
    end (its retry waits are step time).

    >>> t = run_timing([("RUN_ENQUEUED", None, 0.0), ("RUN_STARTING", None, 4.0), ("RUN_START", None, 7.0),
    ...                 ("STEP_START", "a", 7.5), ("STEP_SUCCESS", "a", 8.5), ("RUN_SUCCESS", None, 9.0)])
    >>> (t.queued_s, t.launch_s, t.run_s, t.steps_s, t.overhead_s)
    (4.0, 3.0, 2.0, 1.0, 1.0)
    """
    first: dict[str, float] = {}
    step_start: dict[str, float] = {}
    step_end: dict[str, float] = {}
    for kind, step, timestamp in events:
        if step is not None:
            if kind == "STEP_START":
                step_start.setdefault(step, timestamp)
            elif kind in STEP_END_EVENTS:
                step_end[step] = timestamp
            continue
        if kind in RUN_END_EVENTS:
            kind = "RUN_END"
        first.setdefault(kind, timestamp)

    def span(a: str, b: str) -> float | None:
        return first[b] - first[a] if a in first and b in first else None

    return RunTiming(
        queued_s=span("RUN_ENQUEUED", "RUN_STARTING"),
        launch_s=span("RUN_STARTING", "RUN_START"),
        run_s=span("RUN_START", "RUN_END"),
        steps_s=sum(step_end[s] - step_start[s] for s in step_end if s in step_start),
        dequeued=first.get("RUN_STARTING"),
        started=first.get("RUN_START"),
        ended=first.get("RUN_END"),
    )


def refill_latencies(ends: Iterable[float], dequeues: Iterable[float]) -> list[float]:
    """For each run end, the time until the next run was dequeued (ends after the last dequeue are
    dropped: nothing was left to start).

    >>> refill_latencies([1.0, 5.0, 9.0], [0.0, 0.0, 1.5, 5.25])
    [0.5, 0.25]
    """
    later = sorted(dequeues)
    out = []
    for end in sorted(ends):
        nxt = next((d for d in later if d >= end), None)
        if nxt is not None:
            out.append(nxt - end)
    return out


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant (an end at t closes before a start at t).

    >>> max_overlap([(0, 2), (1, 3), (2, 4)])
    2
    """
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    open_now = peak = 0
    for _, delta in events:
        open_now += delta
        peak = max(peak, open_now)
    return peak


def median_p90(values: Sequence[float]) -> tuple[float, float] | None:
    """Median and 90th percentile (linear interpolation between closest ranks, numpy's default).

    >>> median_p90([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0])
    (6.0, 10.0)
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = 0.9 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    p90 = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return statistics.median(ordered), p90


def process_role(cmdline: Sequence[str], ancestor_roles: Iterable[str] = ()) -> str:
    """Which Dagster process a command line is: ``daemon``, ``code_server``, ``run_worker`` or ``other``.
    The code server starts each run worker with ``multiprocessing``'s spawn (a ``spawn_main`` command
    line), so any other process below a code server is a run worker.

    >>> process_role(["/v/bin/python", "/v/bin/dagster-daemon", "run", "-w", "workspace.yaml"])
    'daemon'
    >>> process_role(["/v/bin/python", "-m", "dagster", "api", "grpc", "--lazy-load-user-code"])
    'code_server'
    >>> process_role(["/v/bin/python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()"],
    ...              ["code_server", "daemon"])
    'run_worker'
    """
    line = " ".join(cmdline)
    if "dagster-daemon" in line:
        return "daemon"
    if "api grpc" in line:
        return "code_server"
    if "execute_run" in line or any(role in ("code_server", "run_worker") for role in ancestor_roles):
        return "run_worker"
    return "other"


# --------------------------------------------------------------------------------------------------
# Measuring a live service


class TreeCPU:
    """CPU seconds (user + system) of a process tree by role since :meth:`start`, sampled in a thread:
    the last value seen of every process (a process that exits between two samples loses at most one
    interval, so the sums are lower bounds)."""

    def __init__(self, root_pid: int, interval: float = 0.5) -> None:
        self.root_pid = root_pid
        self.interval = interval
        self.last: dict[tuple[int, float], tuple[str, float]] = {}  # (pid, create_time) -> (role, cpu)
        self.first: dict[tuple[int, float], float] = {}  # CPU of the processes already there at start
        self.roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            try:
                with process.oneshot():
                    key = (process.pid, process.create_time())
                    times = process.cpu_times()
                    if key in self.last:
                        role = self.last[key][0]
                    else:
                        ancestors = [self.roles.get(p.pid, "other") for p in process.parents()]
                        role = process_role(process.cmdline(), ancestors)
                self.roles[process.pid] = role
                self.last[key] = (role, times.user + times.system)
            except psutil.Error:
                continue

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.sample()
        self.first = {key: cpu for key, (_, cpu) in self.last.items()}
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.by_role()

    def by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, (role, cpu) in self.last.items():
            out[role] = out.get(role, 0.0) + cpu - self.first.get(key, 0.0)
        return out


def sqlite_sizes(home: Path) -> dict[str, int]:
    """Bytes of the instance's SQLite files under DAGSTER_HOME (with their -wal / -shm files) by folder."""
    sizes: dict[str, int] = {}
    for path in home.rglob("*"):
        if path.is_file() and ".db" in path.name:
            folder = str(path.parent.relative_to(home))
            sizes[folder] = sizes.get(folder, 0) + path.stat().st_size
    return sizes


def run_events(instance, run_id: str) -> list[tuple[str, str | None, float]]:
    return [
        (entry.dagster_event.event_type.name, entry.step_key, entry.timestamp)
        for entry in instance.all_logs(run_id)
        if entry.dagster_event is not None
    ]


def measure_backend(
    backend: str,
    root: Path,
    models: int,
    images: int,
    cluster=None,
    timeout_s: float = 3600,
    backfill_runs: int | None = None,
) -> dict[str, Any]:
    import dagster as dg

    from vlm_gist_dagster.defs.partitions import DATASETS
    from vlm_gist_dagster.runner import simulator_environment
    from vlm_gist_dagster.sim import FAULT_TYPES, controls_from_model_files
    from vlm_gist_dagster_tests.postgres.service import (
        IN_PROCESS,
        Service,
        backfill_finished,
        deploy_config,
        mini_coco,
        mini_vlm_gist,
        submit_asset_backfill,
        wait_for,
    )

    root.mkdir(parents=True)
    vlm_gist = mini_vlm_gist(DATASET_DIRS["vlm_gist"], root / "vlm_gist_mini", images)
    coco = mini_coco(DATASET_DIRS["coco"], root / "coco_mini", images)
    config = deploy_config()
    if backend == "postgresql":
        db = "backfill_bench"
        cluster.create_database(db)
        pg_env, service_config = cluster.env(db), None  # deploy/dagster.yaml as it is
    else:
        config.pop("storage")  # Dagster's default: SQLite files under DAGSTER_HOME, as `make run` has
        pg_env, service_config = {}, config
    queue = config["concurrency"]["runs"]
    if backfill_runs is not None:
        # deploy/dagster.yaml keeps a slot free for automation and the schedule (a backfill takes at most
        # 3 of the 4); a benchmark of "N runs at once" lifts that cap for its one backfill.
        for limit in queue.get("tag_concurrency_limits", []):
            if limit["key"] == "dagster/backfill":
                limit["limit"] = backfill_runs
        service_config = config
    backfill_limit = next(
        (t["limit"] for t in queue.get("tag_concurrency_limits", []) if t["key"] == "dagster/backfill"), None
    )
    service = Service.create(root / "service", pg_env, {}, config=service_config)
    files = write_models(service.models_dir, models)
    keys = [p.stem for p in files]
    no_faults = {name: 0.0 for name in FAULT_TYPES}
    simulator = SimulatorProcess(
        {"vlm_gist": vlm_gist, "coco": coco}, seed=0, model_controls=controls_from_model_files(files)
    )
    result: dict[str, Any] = {"backend": backend, "models": models, "pairs": 2 * models, "images": images}
    instance = None
    try:
        # The label-matching LLM: one SSE chunk per answer, no latency, no faults (as the service test).
        simulator.set_controls(
            "chat", model=None, latency_mean_s=0.0, latency_jitter_s=0.0, chunk_chars=4096, faults=no_faults
        )
        service.env.update(simulator_environment(simulator))
        service.env.update(
            {"VLM_GIST_DATASET_DIR_VLM_GIST": str(vlm_gist), "VLM_GIST_DATASET_DIR_COCO": str(coco)}
        )
        instance = service.instance()
        # The README's one-off setup of a deployment: the API pools above the default limit of 1.
        instance.event_log_storage.set_concurrency_slots("vlm_api", 8)
        instance.event_log_storage.set_concurrency_slots("vision_servers", 4)
        with service.environment():
            from vlm_gist_dagster.defs.label_matches import LABEL_MATCHING_POOL
            from vlm_gist_dagster.defs.validations import VALIDATION_POOL
        for provider_pool in {LABEL_MATCHING_POOL, VALIDATION_POOL} - {"vlm_api"}:  # vlm_api/<provider>
            instance.event_log_storage.set_concurrency_slots(provider_pool, 4)
        with service.environment():
            from vlm_gist_dagster.definitions import build_definitions

            defs = build_definitions()
            for dataset in DATASETS:
                job = defs.resolve_job_def("datasets_job")
                done = job.execute_in_process(partition_key=dataset, instance=instance, run_config=IN_PROCESS)
                assert done.success, dataset
            assert defs.resolve_job_def("settings_job").execute_in_process(instance=instance).success
            instance.add_dynamic_partitions("models", keys)
        size_before = (
            cluster.database_size(db) if backend == "postgresql" else sum(sqlite_sizes(service.home).values())
        )
        runs_before = {r.run_id for r in instance.get_runs()}
        simulator_cpu_before = _cpu_seconds(simulator._process.pid)

        with service.environment():
            submitted = time.time()
            backfill_id = submit_asset_backfill(instance, defs, keys)
        database_cpu = None
        if backend == "postgresql":  # the server and its backends (one per connection)
            database_cpu = TreeCPU(int((cluster.data_dir / "postmaster.pid").read_text().split()[0]))
            database_cpu.start()
        daemon = service.start_daemon()
        cpu = TreeCPU(daemon.pid)
        cpu.start()

        def backfill_done() -> bool:
            return backfill_finished(instance, backfill_id)

        progress = {"last": 0.0}

        def done_with_progress() -> bool:
            finished = backfill_done()
            if time.monotonic() - progress["last"] > 30 or finished:
                progress["last"] = time.monotonic()
                by_status: dict[str, int] = {}
                for run in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id})):
                    by_status[run.status.value] = by_status.get(run.status.value, 0) + 1
                print(f"  {backend} {time.time() - submitted:6.0f} s: {by_status}", flush=True)
            return finished

        wait_for(done_with_progress, timeout_s, "the backfill to finish", service, poll=1.0)
        done_at = time.time()
        cpu_by_role = cpu.stop()
        if database_cpu is not None:
            cpu_by_role["postgresql_server"] = sum(database_cpu.stop().values())
        simulator_cpu = _cpu_seconds(simulator._process.pid) - simulator_cpu_before
        service.stop_daemon()

        backfill = instance.get_backfill(backfill_id)
        records = list(instance.get_run_records())
        new = [r for r in records if r.dagster_run.run_id not in runs_before]
        ours = [r for r in new if r.dagster_run.tags.get("dagster/backfill") == backfill_id]
        others = [r for r in new if r.dagster_run.tags.get("dagster/backfill") != backfill_id]
        timings = {r.dagster_run.run_id: run_timing(run_events(instance, r.dagster_run.run_id)) for r in new}
        mine = [timings[r.dagster_run.run_id] for r in ours]
        ended = [t.ended for t in mine if t.ended is not None]
        events = sum(len(instance.all_logs(r.dagster_run.run_id)) for r in records)

        def stat(values: Iterable[float | None]) -> dict[str, float] | None:
            got = median_p90([v for v in values if v is not None])
            return None if got is None else {"median": got[0], "p90": got[1]}

        result.update(
            {
                "backfill_status": backfill.status.value,
                "wall_s": max(ended) - submitted if ended else None,
                "backfill_marked_done_s": done_at - submitted,
                "runs_succeeded": sum(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in ours),
                "runs_failed": sum(r.dagster_run.status == dg.DagsterRunStatus.FAILURE for r in ours),
                "backfill_runs": len(ours),
                "other_runs": sorted(r.dagster_run.job_name for r in others),
                "run_s": stat(t.run_s for t in mine),
                "steps_s": stat(t.steps_s for t in mine),
                "in_run_overhead_s": stat(t.overhead_s for t in mine),
                "queued_s": stat(t.queued_s for t in mine),
                "launch_s": stat(t.launch_s for t in mine),
                "refill_s": stat(
                    refill_latencies(ended, [t.dequeued for t in timings.values() if t.dequeued is not None])
                ),
                "cpu_s": {role: round(v, 1) for role, v in sorted(cpu_by_role.items())},
                "simulator_cpu_s": round(simulator_cpu, 1),
                "max_runs_at_once": max_overlap(
                    [(t.started, t.ended) for t in timings.values() if t.started and t.ended]
                ),
                "max_backfill_runs_at_once": max_overlap(
                    [(t.started, t.ended) for t in mine if t.started and t.ended]
                ),
                "max_concurrent_runs": queue["max_concurrent_runs"],
                "backfill_tag_limit": backfill_limit,
                "db_bytes_before": size_before,
                "db_bytes_after": (
                    cluster.database_size(db)
                    if backend == "postgresql"
                    else sum(sqlite_sizes(service.home).values())
                ),
                "sqlite_bytes_by_folder": sqlite_sizes(service.home) if backend == "sqlite" else None,
                "instance_runs": len(records),
                "instance_events": events,
            }
        )
        assert result["max_runs_at_once"] <= queue["max_concurrent_runs"], result
        return result
    finally:
        service.stop_daemon()
        if instance is not None:
            instance.dispose()
        simulator.stop()


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# --------------------------------------------------------------------------------------------------
# Report


def _mib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.1f} MiB"


def _mp(stat: Mapping[str, float] | None) -> str:
    return "–" if not stat else f"{stat['median']:.2f} / {stat['p90']:.2f} s"


def report_table(results: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for r in results:
        cpu = r["cpu_s"]
        rows.append(
            [
                "PostgreSQL" if r["backend"] == "postgresql" else "SQLite",
                f"{r['models']} × 2 = {r['pairs']}",
                f"{r['wall_s']:.0f} s",
                f"{r['runs_succeeded']} / {r['runs_failed']}",
                _mp(r["run_s"]),
                _mp(r["in_run_overhead_s"]),
                _mp(r["launch_s"]),
                _mp(r["refill_s"]),
                f"{cpu.get('daemon', 0):.0f} s",
                f"{cpu.get('code_server', 0):.0f} s",
                f"≥ {cpu.get('run_worker', 0):.0f} s",
                f"{cpu['postgresql_server']:.0f} s" if "postgresql_server" in cpu else "(in process)",
                f"{r['max_runs_at_once']} (backfill {r['max_backfill_runs_at_once']})",
                f"{_mib(r['db_bytes_before'])} → {_mib(r['db_bytes_after'])}",
                f"{r['instance_runs']:,} / {r['instance_events']:,}",
            ]
        )
    return markdown_table(
        [
            "instance",
            "pairs (runs)",
            "wall time",
            "runs ok / failed",
            "run wall, median / p90",
            "in-run overhead",
            "launch (dequeued → started)",
            "slot refill",
            "daemon CPU",
            "code server CPU",
            "run workers CPU",
            "database server CPU",
            "most runs at once",
            "database",
            "runs / events in instance",
        ],
        rows,
        "l" + "r" * 14,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--images", type=int, default=2, help="images per dataset (default 2)")
    parser.add_argument("--backend", choices=("postgres", "sqlite", "both"), default="both")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per backfill before giving up")
    parser.add_argument(
        "--backfill-runs",
        type=int,
        help="runs of one backfill at once (default: deploy/dagster.yaml's dagster/backfill limit, 3 of 4)",
    )
    args = parser.parse_args()
    backends = {"postgres": ["postgresql"], "sqlite": ["sqlite"], "both": ["postgresql", "sqlite"]}
    root = Path(tempfile.mkdtemp(prefix="vlm_gist_service_backfill_"))
    results = []
    cluster = None
    try:
        for backend in backends[args.backend]:
            if backend == "postgresql":
                from vlm_gist_dagster_tests.postgres.pg_cluster import start_cluster

                cluster = start_cluster()
            print(f"{backend}: {args.models} models x 2 datasets, {args.images} images each", flush=True)
            try:
                result = measure_backend(
                    backend,
                    root / backend,
                    args.models,
                    args.images,
                    cluster,
                    args.timeout,
                    args.backfill_runs,
                )
            finally:
                if cluster is not None:
                    cluster.stop()
                    cluster = None
            print(json.dumps(result, indent=1), flush=True)
            results.append(result)
            if args.json:  # after each backend: a run stopped half-way keeps the first
                args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{machine()}\n")
    print(report_table(results))
    for r in results:
        print(r["backend"], asdict_safe(r))


def asdict_safe(r: Mapping[str, Any]) -> str:
    keys = ("backfill_status", "other_runs", "queued_s", "steps_s", "simulator_cpu_s", "cpu_s")
    return ", ".join(f"{k}={r.get(k)}" for k in keys)


if __name__ == "__main__":
    main()
