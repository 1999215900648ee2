"""A small Dagster service for the tests and the scale benchmark: ``deploy/dagster.yaml`` on a throwaway
PostgreSQL database, the simulator, small dataset copies, fast simulated models, and a real
``dagster-daemon`` process that dequeues and launches the runs (run queue, pools, backfills, automation).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import yaml

from vlm_gist_dagster.defs.partitions import DATASETS, pair_key

REPO = Path(__file__).resolve().parents[2]
DEPLOY_YAML = REPO / "deploy" / "dagster.yaml"
DAEMON = Path(sys.executable).with_name("dagster-daemon")
#: One process per run: the pair's steps run in the run worker (no process per step), which keeps a
#: 2-core CI machine from spending its time importing Dagster.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
#: Every per-pair asset (stages A-E), as the backfill selects them.
PAIR_ASSETS = (
    "descriptions",
    "detections",
    "detection_images",
    "masks",
    "validations",
    "label_matches",
    "metrics",
)


def write_fast_model(models_dir: Path, key: str) -> Path:
    """A simulated model file (``sim_strong`` renamed, zero latency, no faults)."""
    raw = json.loads((REPO / "settings" / "models" / "sim_strong.json").read_text())
    raw["model"]["display_name"] = f"{key} (simulated)"
    raw["model"]["simulator"] = {"latency_mean_s": 0.0, "latency_jitter_s": 0.0, "recall": 0.9}
    for block in ("vlm_scene_description", "vlm_structured_description", "vlm_decoupled_attribution"):
        raw[block]["model_name"] = f"test/{key}"
    path = models_dir / f"{key}.json"
    path.write_text(json.dumps(raw, indent=2))
    return path


def mini_vlm_gist(src: Path, dst: Path, samples: int) -> Path:
    document = json.loads((src / "samples.json").read_text())
    document["samples"] = document["samples"][:samples]
    (dst / "data").mkdir(parents=True)
    for s in document["samples"]:
        shutil.copy(src / s["filepath"], dst / s["filepath"])
    shutil.copy(src / "metadata.json", dst / "metadata.json")
    (dst / "samples.json").write_text(json.dumps(document))
    return dst


def mini_coco(src: Path, dst: Path, images: int) -> Path:
    document = json.loads((src / "labels.json").read_text())
    document["images"] = document["images"][:images]
    ids = {im["id"] for im in document["images"]}
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] in ids]
    (dst / "data").mkdir(parents=True)
    for im in document["images"]:
        shutil.copy(src / "data" / im["file_name"], dst / "data" / im["file_name"])
    (dst / "labels.json").write_text(json.dumps(document))
    return dst


def deploy_config() -> dict:
    return yaml.safe_load(DEPLOY_YAML.read_text())


@dataclass
class Service:
    """A deployment under ``root``: ``home`` (DAGSTER_HOME with deploy/dagster.yaml), ``models``, ``data``,
    ``assets``; ``env`` is the environment of every Dagster process (PostgreSQL, simulator, folders)."""

    root: Path
    env: dict[str, str]
    daemon: subprocess.Popen | None = None
    daemon_logs: list[Path] = field(default_factory=list)
    #: Process groups of every daemon started (a killed daemon's code server outlives it in its group).
    daemon_groups: list[int] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def assets_dir(self) -> Path:
        return self.root / "data" / "assets"

    @classmethod
    def create(
        cls, root: Path, pg_env: dict[str, str], extra_env: dict[str, str], config: dict | None = None
    ) -> Service:
        service = cls(root=root, env={})
        service.home.mkdir(parents=True)
        service.models_dir.mkdir()
        (service.home / "dagster.yaml").write_text(
            DEPLOY_YAML.read_text() if config is None else yaml.safe_dump(config, sort_keys=False)
        )
        service.env = {
            **pg_env,
            **extra_env,
            "DAGSTER_HOME": str(service.home),
            "VLM_GIST_DATA_DIR": str(root / "data"),
            "VLM_GIST_ASSETS_DIR": str(service.assets_dir),
            "VLM_GIST_MODELS_DIR": str(service.models_dir),
            "VLM_GIST_CONCURRENCY": "8",
        }
        return service

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        from vlm_gist_dagster.runner import patched_environ

        with patched_environ(self.env):
            yield

    def instance(self) -> dg.DagsterInstance:
        with self.environment():
            return dg.DagsterInstance.from_config(str(self.home))

    def start_daemon(self) -> subprocess.Popen:
        """``dagster-daemon run`` on the project's workspace, in its own process group."""
        assert self.daemon is None or self.daemon.poll() is not None, "a daemon is already running"
        log = self.root / f"daemon_{len(self.daemon_logs)}.log"
        self.daemon_logs.append(log)
        with log.open("wb") as out:
            self.daemon = subprocess.Popen(
                [str(DAEMON), "run", "-w", str(REPO / "workspace.yaml")],
                cwd=REPO,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.daemon_groups.append(self.daemon.pid)
        return self.daemon

    def kill_daemon(self) -> None:
        """SIGKILL the daemon process alone (what a lost daemon host or container does): no clean-up."""
        assert self.daemon is not None
        os.kill(self.daemon.pid, signal.SIGKILL)
        self.daemon.wait(timeout=30)

    def stop_daemon(self) -> None:
        """Stop the daemon and everything the daemons started (their process groups: code servers, run
        workers), including what a killed daemon left behind."""
        if self.daemon is not None and self.daemon.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.daemon.pid, signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for group in self.daemon_groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)  # children that outlived their daemon
        if self.daemon is not None:
            self.daemon.wait(timeout=30)

    def daemon_output(self, chars: int = 4000) -> str:
        return "\n".join(p.read_text(errors="replace")[-chars:] for p in self.daemon_logs if p.is_file())


def submit_asset_backfill(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    models: Sequence[str],
    datasets: Sequence[str] = DATASETS,
) -> str:
    """An asset backfill of every pair asset for ``models`` x ``datasets`` (one run per pair), as the UI's
    "Materialize" on a partition selection submits it; the daemon's backfill loop launches its runs
    through the run queue."""
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=defs.resolve_asset_graph(),
        partition_names=[str(pair_key(d, m)) for m in models for d in datasets],
        asset_selection=[dg.AssetKey(a) for a in PAIR_ASSETS],
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=f"{len(models)} models x {len(datasets)} datasets",
        description=None,
        run_config=IN_PROCESS,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def backfill_finished(instance: dg.DagsterInstance, backfill_id: str) -> bool:
    """Whether the backfill reached a final status (completed, failed or canceled)."""
    from dagster._core.execution.backfill import BulkActionStatus

    backfill = instance.get_backfill(backfill_id)
    return backfill is not None and backfill.status in (
        BulkActionStatus.COMPLETED_SUCCESS,
        BulkActionStatus.COMPLETED_FAILED,
        BulkActionStatus.FAILED,
        BulkActionStatus.CANCELED,
    )


def wait_for(predicate, timeout: float, what: str, service: Service, poll: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if service.daemon is not None and service.daemon.poll() is not None:
            raise AssertionError(
                f"the daemon exited ({service.daemon.returncode}):\n{service.daemon_output()}"
            )
        time.sleep(poll)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what}; daemon log:\n{service.daemon_output()}"
    )


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant (an end at t closes before a start at t)."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda e: (e[0], e[1]),
    )
    open_now = peak = 0
    for _, delta in events:
        open_now += delta
        peak = max(peak, open_now)
    return peak


def step_intervals(
    instance: dg.DagsterInstance, run_ids: Sequence[str], step_key: str
) -> list[tuple[float, float, str]]:
    """(start, end, run id) of ``step_key`` in each run, from the event log (STEP_START to
    STEP_SUCCESS / STEP_FAILURE)."""
    out = []
    for run_id in run_ids:
        start = end = None
        for record in instance.all_logs(run_id):
            event = record.dagster_event
            if event is None or event.step_key != step_key:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                start = record.timestamp
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                end = record.timestamp
        if start is not None and end is not None:
            out.append((start, end, run_id))
    return out


def materialization_counts(instance: dg.DagsterInstance, asset: str) -> dict[str | None, int]:
    """How many times each partition of ``asset`` was materialised (None: unpartitioned)."""
    counts: dict[str | None, int] = {}
    cursor = None
    while True:
        result = instance.fetch_materializations(dg.AssetKey(asset), limit=500, cursor=cursor)
        for record in result.records:
            counts[record.partition_key] = counts.get(record.partition_key, 0) + 1
        if not result.has_more:
            return counts
        cursor = result.cursor
