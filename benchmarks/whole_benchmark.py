"""The whole benchmark through Dagster, as a user runs it: ``vlm-gist run`` for 1, 5 and 20 simulated
models on both datasets, then adding a 21st model.

    .venv/bin/python benchmarks/whole_benchmark.py [--models 1 5 20] [--datasets vlm_gist coco]

Every run is the real command line (``.venv/bin/vlm-gist run``) in a child process with its own
temporary ``VLM_GIST_DATA_DIR``, ``DAGSTER_HOME`` and ``VLM_GIST_MODELS_DIR``; the models are generated
copies of ``settings/models/sim_{strong,medium,weak}.json`` (distinct names and ``model_name`` values)
whose ``model.simulator`` block keeps the preset's quality and content faults but has zero latency and
none of the faults that only cost waiting time (stalls, 429 / 5xx / dropped connections). Caches start
empty. Chat concurrency is the default (CPU count − 1).

Reported per model count:

* wall time of ``vlm-gist run`` (process start to exit, imports and the simulator included) and peak RSS
  of that process (``wait4``);
* per (dataset, model) pair: wall time of its run and the *Dagster overhead*, i.e. that run's wall time
  minus the time spent in the asset functions (from the run's event log: first ``STEP_OUTPUT`` minus
  the step's last ``STEP_INPUT`` / ``LOADED_INPUT``, summed over the steps): run creation, planning, step
  orchestration, event-log writes and the Parquet IO manager;
* for the largest count: a second ``vlm-gist run`` (every pair re-materialised, all calls from the
  response cache) and, after adding model 21, ``vlm-gist run --only-missing`` (its two pairs and the
  leaderboard), each compared with the full cold run.

Prints Markdown tables and the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import REPO, base_environment, machine, markdown_table, write_model_file, write_models

CLI = Path(sys.executable).with_name("vlm-gist")
PAIR_LINE = re.compile(r"^\[\d+/\d+\] (\S+): (ok|FAILED.*) in ([\d.]+) s$", re.MULTILINE)


@dataclass
class CliRun:
    label: str
    wall_s: float
    peak_rss_mib: float
    returncode: int
    pair_wall_s: dict[str, float] = field(default_factory=dict)
    pair_compute_s: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def overheads(self) -> list[float]:
        return [self.pair_wall_s[k] - self.pair_compute_s.get(k, 0.0) for k in self.pair_wall_s]


def run_cli(label: str, args: list[str], env: dict[str, str], log_dir: Path) -> CliRun:
    """Run ``vlm-gist <args>`` to completion; wall time and the child's own peak RSS (``wait4``)."""
    log_path = log_dir / f"{label.replace(' ', '_')}.log"
    with log_path.open("w") as log:
        start = time.perf_counter()
        process = subprocess.Popen([str(CLI), *args], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
    output = log_path.read_text()
    run = CliRun(label, wall, usage.ru_maxrss / 1024, process.returncode, output=output)
    for key, status_text, seconds in PAIR_LINE.findall(output):
        run.pair_wall_s[key] = float(seconds)
        if status_text != "ok":
            run.failed.append(key)
    # vlm-gist exits with 1 when a pair failed (reported in the table); anything else is a crash
    if process.returncode != 0 and not (process.returncode == 1 and run.failed):
        tail = "\n".join(output.splitlines()[-30:])
        raise SystemExit(f"{label}: vlm-gist exited with {process.returncode}; log {log_path}:\n{tail}")
    return run


def add_compute_times(run: CliRun, home: Path, run_ids_before: set[str]) -> set[str]:
    """Fill ``run.pair_compute_s`` from the event logs of the pair runs made since ``run_ids_before``."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        all_runs = instance.get_runs()
        for record in all_runs:
            if record.run_id in run_ids_before or record.job_name != "benchmark_pair_job":
                continue
            run.pair_compute_s[record.tags.get("dagster/partition", "?")] = compute_seconds(
                instance, record.run_id
            )
        return {r.run_id for r in all_runs}
    finally:
        instance.dispose()


def compute_seconds(instance, run_id: str) -> float:
    """Time inside the asset functions of one run: per step, from the last input event to the first output."""
    ready: dict[str, float] = {}
    first_output: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event, step = entry.dagster_event, entry.step_key
        if event is None or step is None:
            continue
        kind = event.event_type_value
        if kind in ("STEP_START", "LOADED_INPUT", "STEP_INPUT") and step not in first_output:
            ready[step] = entry.timestamp
        elif kind == "STEP_OUTPUT" and step not in first_output:
            first_output[step] = entry.timestamp
    return sum(first_output[s] - ready[s] for s in first_output if s in ready)


def run_ids(home: Path) -> set[str]:
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        return {r.run_id for r in instance.get_runs()}
    finally:
        instance.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--datasets", nargs="+", default=["vlm_gist", "coco"])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories (printed)")
    args = parser.parse_args()

    dataset_args = ["--datasets", *args.datasets]
    cold: dict[int, CliRun] = {}
    extra: list[tuple[str, CliRun, CliRun]] = []
    roots = []
    for count in args.models:
        root = Path(tempfile.mkdtemp(prefix=f"whole_benchmark_{count}_"))
        roots.append(root)
        models = root / "models"
        write_models(models, count)
        env = base_environment(root, models)
        home = root / "dagster_home"
        seen = run_ids(home)
        run = run_cli(f"{count} models cold", ["run", *dataset_args], env, root)
        seen = add_compute_times(run, home, seen)
        cold[count] = run
        print(f"done: {count} models in {run.wall_s:.0f} s", file=sys.stderr, flush=True)
        if count == max(args.models):
            warm = run_cli(f"{count} models again", ["run", *dataset_args], env, root)
            seen = add_compute_times(warm, home, seen)
            extra.append(
                (
                    f"`vlm-gist run` again ({count} models, every pair re-materialised from the caches)",
                    warm,
                    run,
                )
            )
            print(f"done: {count} models again in {warm.wall_s:.0f} s", file=sys.stderr, flush=True)
            write_model_file(models, f"bench_{count + 1:02d}", ("strong", "medium", "weak")[count % 3])
            added = run_cli(f"model {count + 1} added", ["run", "--only-missing", *dataset_args], env, root)
            add_compute_times(added, home, seen)
            extra.append((f"model {count + 1} added, `vlm-gist run --only-missing`", added, run))
            print(f"done: model {count + 1} added in {added.wall_s:.0f} s", file=sys.stderr, flush=True)
    try:
        rows = []
        for count, run in cold.items():
            pairs = len(run.pair_wall_s)
            rows.append(
                (
                    count,
                    pairs,
                    f"{run.wall_s:.0f} s",
                    f"{statistics.mean(run.pair_wall_s.values()):.1f} s",
                    f"{statistics.mean(run.pair_compute_s.values()):.1f} s",
                    f"{statistics.mean(run.overheads):.2f} s",
                    f"{100 * sum(run.overheads) / run.wall_s:.0f} %",
                    f"{run.peak_rss_mib:.0f} MiB",
                    len(run.failed),
                )
            )
        print(
            f"### Whole benchmark, cold (empty caches), {' + '.join(args.datasets)}, zero-latency simulated models\n"
        )
        print(
            markdown_table(
                [
                    "models",
                    "pairs",
                    "wall time",
                    "per pair",
                    "in asset code per pair",
                    "Dagster overhead per pair",
                    "overhead share of wall",
                    "peak RSS",
                    "failed pairs",
                ],
                rows,
            )
        )
        if extra:
            print("\n### Re-running and adding a model\n")
            print(
                markdown_table(
                    [
                        "run",
                        "pairs run",
                        "wall time",
                        "Dagster overhead per pair",
                        "peak RSS",
                        "vs the cold full run",
                    ],
                    [
                        (
                            label,
                            len(run.pair_wall_s),
                            f"{run.wall_s:.1f} s",
                            f"{statistics.mean(run.overheads):.2f} s" if run.overheads else "–",
                            f"{run.peak_rss_mib:.0f} MiB",
                            f"{run.wall_s / base.wall_s:.3f} (1/{base.wall_s / run.wall_s:.1f})",
                        )
                        for label, run, base in extra
                    ],
                )
            )
        print(
            "\n- Wall time: the whole `vlm-gist run` process (Python and Dagster imports, simulator start, "
            "dataset and settings jobs, every pair, leaderboard). Dagster overhead: a pair run's wall time "
            "minus the time inside the asset functions (event-log timestamps)."
        )
        print(f"- Machine: {machine()}.")
    finally:
        for root in roots:
            if args.keep:
                print(f"- kept {root}", file=sys.stderr)
            else:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
