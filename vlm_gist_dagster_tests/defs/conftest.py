"""Fixtures of the benchmark-graph tests (issue 7): one simulator per module, a temp "bench" per test.

A :class:`Bench` is one isolated deployment in a temp directory: its own models folder (copies of the
project's ``settings/models/sim_*.json``), settings folder (a copy of ``settings/`` without the models),
data directory (response / definitions caches, leaderboard files), Parquet assets directory and
``DAGSTER_HOME``. :meth:`Bench.activated` points the environment at it (the sensors, the schedule and
the leaderboard files read the environment) and :meth:`Bench.resources` returns the same locations as
resources for ``build_definitions(resources=...)``.

The simulator runs in the test process on ephemeral loopback ports, with a fixed seed and every
simulated chat model's latency and faults at 0 (tests about faults set their own).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from vlm_gist_dagster.definitions import build_definitions
from vlm_gist_dagster.defs.io_manager import ParquetIOManagerFactory, read_parquet
from vlm_gist_dagster.defs.partitions import pair_key
from vlm_gist_dagster.defs.resources import (
    SIMULATOR_ENV,
    DatasetsResource,
    ModelsResource,
    ServicesResource,
    SettingsResource,
)
from vlm_gist_dagster.defs.selections import PAIR_ASSET_KEYS
from vlm_gist_dagster.runner import patched_environ, simulator_environment
from vlm_gist_dagster.sim import (
    FAULT_TYPES,
    SERVER_NAMES,
    SIM_MODEL_PRESETS,
    SimulatorHandle,
    start_simulator,
)

REPO = Path(__file__).resolve().parents[2]
PROJECT_SETTINGS = REPO / "settings"
DATASETS = ("vlm_gist", "coco")
#: Every per-pair asset of the graph (stages A-E), in graph order: the project's one exported selection
#: (``test_pair_selection_is_the_per_pair_stages`` checks it against the graph).
PAIR_ASSETS = tuple(key.to_user_string() for key in PAIR_ASSET_KEYS)
NO_FAULTS = {name: 0.0 for name in FAULT_TYPES}
SIM_SEED = 0
#: Chat requests in flight per endpoint during the tests (the default is the CPU count - 1, i.e. 1 here).
TEST_CONCURRENCY = 8


def quiet_controls(handle: SimulatorHandle) -> None:
    """Latency 0 and no faults for every simulated chat model (the presets have both)."""
    for model in SIM_MODEL_PRESETS:
        handle.set_controls(
            "chat",
            model=model,
            latency_mean_s=0.0,
            latency_jitter_s=0.0,
            chunk_interval_s=0.0,
            faults=NO_FAULTS,
        )
    # The other chat models (the label-matching LLM writing ~2,000 definitions for VLM-GIST): one SSE
    # chunk per answer instead of one per 24 characters (VLM-GIST label matching: 28 s -> 20 s here).
    handle.set_controls(
        "chat", model=None, latency_mean_s=0.0, latency_jitter_s=0.0, chunk_chars=4096, faults=NO_FAULTS
    )


@pytest.fixture(scope="module")
def simulator(vlm_gist_dataset, coco_dataset) -> Iterator[SimulatorHandle]:
    """One simulator per test module (both datasets, ephemeral ports, seed 0, no latency, no faults),
    with the process environment pointed at it as ``vlm-gist run`` does."""
    handle = start_simulator(
        {"vlm_gist": vlm_gist_dataset, "coco": coco_dataset},
        ports={name: 0 for name in SERVER_NAMES},
        seed=SIM_SEED,
    )
    try:
        quiet_controls(handle)
        with patched_environ(simulator_environment(handle)):
            yield handle
    finally:
        handle.stop()


@dataclass(frozen=True)
class Bench:
    """One isolated deployment of the benchmark under ``root`` (see the module docstring)."""

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def assets_dir(self) -> Path:
        return self.root / "assets"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def settings_dir(self) -> Path:
        return self.root / "settings"

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def leaderboard_dir(self) -> Path:
        return self.data_dir / "leaderboard"

    @classmethod
    def create(cls, root: Path, models: Sequence[str] = ()) -> Bench:
        bench = cls(Path(root))
        for directory in (bench.data_dir, bench.assets_dir, bench.models_dir, bench.home):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.copytree(PROJECT_SETTINGS, bench.settings_dir, ignore=shutil.ignore_patterns("models"))
        for name in models:
            bench.add_model(name)
        return bench

    def add_model(self, name: str, *, as_name: str | None = None) -> Path:
        """Copy the project's ``settings/models/<name>.json`` into this bench's models folder."""
        target = self.models_dir / f"{as_name or name}.json"
        shutil.copyfile(PROJECT_SETTINGS / "models" / f"{name}.json", target)
        return target

    def environ(self) -> dict[str, str]:
        return {
            "VLM_GIST_DATA_DIR": str(self.data_dir),
            "VLM_GIST_ASSETS_DIR": str(self.assets_dir),
            "VLM_GIST_MODELS_DIR": str(self.models_dir),
            "VLM_GIST_SETTINGS_DIR": str(self.settings_dir),
            "VLM_GIST_CONCURRENCY": str(TEST_CONCURRENCY),
        }

    @contextlib.contextmanager
    def activated(self) -> Iterator[Bench]:
        with patched_environ(self.environ()):
            yield self

    def resources(self, *, concurrency: int = TEST_CONCURRENCY) -> dict[str, object]:
        return {
            "io_manager": ParquetIOManagerFactory(base_path=str(self.assets_dir)),
            "datasets": DatasetsResource(settings_file=str(self.settings_dir / "datasets.json")),
            "settings": SettingsResource(settings_dir=str(self.settings_dir)),
            "models": ModelsResource(models_dir=str(self.models_dir)),
            # The simulator fixture sets VLM_GIST_SIMULATOR as `vlm-gist run` does.
            "services": ServicesResource(
                data_dir=str(self.data_dir),
                concurrency=concurrency,
                simulator=os.environ.get(SIMULATOR_ENV) == "1",
            ),
        }

    def definitions(self, **kwargs) -> dg.Definitions:
        return build_definitions(resources=self.resources(**kwargs))

    def read(self, asset: str, dataset: str | None = None, model: str | None = None) -> pd.DataFrame:
        """A stored asset: ``<assets>/<asset>[/<dataset>[/<model>]].parquet``."""
        path = self.assets_dir / asset
        if dataset is not None:
            path = path / dataset
        if model is not None:
            path = path / model
        return read_parquet(path.with_name(path.name + ".parquet"))


@pytest.fixture()
def bench(tmp_path) -> Iterator[Bench]:
    """An empty bench (no models) with the environment pointed at it for the test."""
    with Bench.create(tmp_path / "bench").activated() as b:
        yield b


def run_job(
    defs: dg.Definitions, instance: dg.DagsterInstance, job: str, partition: str | None = None
) -> dg.ExecuteInProcessResult:
    """Run a job in this process on ``instance`` as ``vlm-gist run`` does (``runner.run_benchmark``)."""
    result = defs.resolve_job_def(job).execute_in_process(
        partition_key=partition, instance=instance, raise_on_error=False
    )
    if not result.success:
        failures = [
            f"{e.step_key}: {e.event_specific_data.error.message if e.event_specific_data else ''}"
            for e in result.all_events
            if e.is_step_failure
        ]
        raise AssertionError(f"{job} [{partition}] failed: {failures}")
    return result


def run_inputs(
    defs: dg.Definitions, instance: dg.DagsterInstance, datasets: Sequence[str] = DATASETS
) -> None:
    """The pairs' inputs: dataset tables and label-matching settings per dataset, detection settings."""
    for dataset in datasets:
        run_job(defs, instance, "datasets_job", dataset)
    run_job(defs, instance, "settings_job")


def pair_keys(models: Sequence[str], datasets: Sequence[str] = DATASETS) -> list[str]:
    return [str(pair_key(d, m)) for m in models for d in datasets]


def tick_model_sensor(
    bench: Bench, instance: dg.DagsterInstance, cursor: str | None = None
) -> dg.SensorResult:
    """One tick of ``model_settings_sensor`` on ``bench``'s models folder (its ``models`` resource)."""
    from vlm_gist_dagster.defs.sensors import model_settings_sensor

    resources = {"models": bench.resources()["models"]}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = model_settings_sensor(context)
    assert isinstance(result, dg.SensorResult), result
    return result


def apply_partition_requests(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    """What the daemon does with a sensor's dynamic partition requests."""
    for request in result.dynamic_partitions_requests or []:
        assert isinstance(request, dg.AddDynamicPartitionsRequest), request
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
