"""One throwaway deployment of the benchmark for the tests, and the pieces that run jobs on it.

A :class:`Deployment` is one isolated installation under a temp directory: its own models folder
(copies of the project's ``settings/models/sim_*.json``, or files written by :meth:`~Deployment.write_model`),
settings folder (a copy of ``settings/`` without the models), data directory (response / definitions
caches, leaderboard files), Parquet assets directory and ``DAGSTER_HOME``.

Tests hand its locations to the code as resources (:meth:`~Deployment.resources`,
:meth:`~Deployment.definitions`: ``build_definitions(resources=...)``), and run jobs in this process on
its instance (:meth:`~Deployment.instance`) with :func:`run_job`, as ``vlm-gist run`` runs them. Only
code that reads the environment itself (a child process, the ``vlm-gist`` command line) needs
:meth:`~Deployment.environ` / :meth:`~Deployment.activated`.

The ``simulator`` and ``deployment`` fixtures (``vlm_gist_dagster_tests/conftest.py``) build on
:func:`quiet_simulator` and :class:`Deployment`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster._core.instance.ref import InstanceRef

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

REPO = Path(__file__).resolve().parents[1]
PROJECT_SETTINGS = REPO / "settings"
SIM_STRONG = PROJECT_SETTINGS / "models" / "sim_strong.json"
DATASETS = ("vlm_gist", "coco")
#: Every per-pair asset of the graph (stages A-E), in graph order: the project's one exported selection
#: (``test_pair_selection_is_the_per_pair_stages`` checks it against the graph).
PAIR_ASSETS = tuple(key.to_user_string() for key in PAIR_ASSET_KEYS)
#: The request blocks of a model settings file (each names the model it asks).
REQUEST_BLOCKS = ("vlm_scene_description", "vlm_structured_description", "vlm_decoupled_attribution")
NO_FAULTS = {name: 0.0 for name in FAULT_TYPES}
SIM_SEED = 0
#: Chat requests in flight per endpoint during the tests (the default, CPU count - 1, is 1 on a 2-core
#: machine).
TEST_CONCURRENCY = 8


@dataclass(frozen=True)
class Deployment:
    """One isolated installation of the benchmark under ``root`` (see the module docstring)."""

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
    def create(cls, root: Path, models: Sequence[str] = ()) -> Deployment:
        """The folders under ``root``, the project's settings copied, and the project's model files
        ``models`` (e.g. ``sim_strong``) copied into the models folder."""
        deployment = cls(Path(root))
        for directory in (deployment.data_dir, deployment.assets_dir, deployment.models_dir, deployment.home):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.copytree(PROJECT_SETTINGS, deployment.settings_dir, ignore=shutil.ignore_patterns("models"))
        for name in models:
            deployment.add_model(name)
        return deployment

    def add_model(self, name: str, *, as_name: str | None = None) -> Path:
        """Copy the project's ``settings/models/<name>.json`` into this deployment's models folder."""
        target = self.models_dir / f"{as_name or name}.json"
        shutil.copyfile(PROJECT_SETTINGS / "models" / f"{name}.json", target)
        return target

    def write_model(
        self, key: str, model_name: str, *, request: Mapping[str, Any] | None = None, **top: Any
    ) -> Path:
        """``<models>/<key>.json``: the shipped sim_strong file (the benchmark's prompt, retry 3, SSE,
        JSON mode) answering as ``model_name``; ``request`` updates the request blocks (e.g. timeouts),
        ``top`` top-level settings (e.g. ``retry``)."""
        raw = json.loads(SIM_STRONG.read_text())
        raw["model"]["display_name"] = f"{key} (simulated)"
        for block in REQUEST_BLOCKS:
            raw[block]["model_name"] = model_name
            raw[block].update(request or {})
        raw.update(top)
        path = self.models_dir / f"{key}.json"
        path.write_text(json.dumps(raw, indent=1))
        return path

    def environ(self) -> dict[str, str]:
        """The environment that points a process reading it (``vlm-gist``, a child process, ``dg dev``)
        at this deployment."""
        return {
            "VLM_GIST_DATA_DIR": str(self.data_dir),
            "VLM_GIST_ASSETS_DIR": str(self.assets_dir),
            "VLM_GIST_MODELS_DIR": str(self.models_dir),
            "VLM_GIST_SETTINGS_DIR": str(self.settings_dir),
            "VLM_GIST_CONCURRENCY": str(TEST_CONCURRENCY),
            "DAGSTER_HOME": str(self.home),
        }

    @contextlib.contextmanager
    def activated(self) -> Iterator[Deployment]:
        """This process's environment pointed at the deployment (for code that reads it)."""
        with patched_environ(self.environ()):
            yield self

    def resources(self, *, concurrency: int = TEST_CONCURRENCY) -> dict[str, Any]:
        """Every resource, pointed at this deployment. Simulator mode is what the environment says now
        (``VLM_GIST_SIMULATOR``, set with the simulator's URLs by ``simulator_environment``), as in
        ``vlm-gist run``."""
        return {
            "io_manager": ParquetIOManagerFactory(base_path=str(self.assets_dir)),
            "datasets": DatasetsResource(settings_file=str(self.settings_dir / "datasets.json")),
            "settings": SettingsResource(settings_dir=str(self.settings_dir)),
            "models": ModelsResource(models_dir=str(self.models_dir)),
            "services": ServicesResource(
                data_dir=str(self.data_dir),
                concurrency=concurrency,
                simulator=os.environ.get(SIMULATOR_ENV) == "1",
            ),
        }

    def definitions(self, **kwargs: Any) -> dg.Definitions:
        """The project's definitions with :meth:`resources` (``kwargs`` go to it)."""
        return build_definitions(resources=self.resources(**kwargs))

    def instance(self) -> dg.DagsterInstance:
        """The persistent instance in this deployment's ``DAGSTER_HOME`` (the caller disposes of it)."""
        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))

    def read(self, asset: str, dataset: str | None = None, model: str | None = None) -> pd.DataFrame:
        """A stored asset: ``<assets>/<asset>[/<dataset>[/<model>]].parquet``."""
        path = self.assets_dir / asset
        if dataset is not None:
            path = path / dataset
        if model is not None:
            path = path / model
        return read_parquet(path.with_name(path.name + ".parquet"))


def run_job(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job: str,
    partition: str | None = None,
    assets: Sequence[str] | None = None,
) -> dg.ExecuteInProcessResult:
    """Run ``job`` (optionally only ``assets`` of it) in this process on ``instance`` as ``vlm-gist run``
    does (``runner.run_benchmark``); a failed run fails the test with the step errors."""
    result = defs.resolve_job_def(job).execute_in_process(
        partition_key=partition,
        instance=instance,
        raise_on_error=False,
        asset_selection=[dg.AssetKey(a) for a in assets] if assets else None,
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


@contextlib.contextmanager
def quiet_simulator(datasets: Mapping[str, Any]) -> Iterator[SimulatorHandle]:
    """The simulator on ``datasets`` (ephemeral ports, seed 0, no latency, no faults), with the process
    environment pointed at it as ``vlm-gist run`` does (its URLs, simulator mode)."""
    handle = start_simulator(dict(datasets), ports={name: 0 for name in SERVER_NAMES}, seed=SIM_SEED)
    try:
        quiet_controls(handle)
        with patched_environ(simulator_environment(handle)):
            yield handle
    finally:
        handle.stop()
