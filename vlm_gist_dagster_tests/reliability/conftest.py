"""Shared pieces of the reliability tests (issue 8): temp deployments, model files, the simulator.

A :class:`Deployment` is one isolated benchmark installation under a temp directory: models folder,
data directory (caches, leaderboard), Parquet assets and ``DAGSTER_HOME``. Its jobs run in this process
on its own instance with :func:`run_job`, as ``vlm-gist run`` runs them. The simulator runs in the test
process on ephemeral loopback ports; tests that need particular controls set them per model name.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster._core.instance.ref import InstanceRef

from vlm_gist_dagster.definitions import build_definitions
from vlm_gist_dagster.defs.io_manager import ParquetIOManagerFactory, read_parquet
from vlm_gist_dagster.defs.resources import SIMULATOR_ENV, ModelsResource, ServicesResource
from vlm_gist_dagster.runner import patched_environ

REPO = Path(__file__).resolve().parents[2]
SIM_STRONG = REPO / "settings" / "models" / "sim_strong.json"
REQUEST_BLOCKS = ("vlm_scene_description", "vlm_structured_description", "vlm_decoupled_attribution")
#: Chat requests in flight per endpoint (the default, CPU count − 1, is 1 on a 2-core machine).
CONCURRENCY = 8


def write_model(
    models_dir: Path, key: str, model_name: str, *, request: Mapping[str, Any] | None = None, **top: Any
) -> Path:
    """``<models_dir>/<key>.json``: the shipped sim_strong file (the benchmark's prompt, retry 3, SSE,
    JSON mode) answering as ``model_name``; ``request`` updates the request blocks (e.g. timeouts),
    ``top`` top-level settings (e.g. ``retry``)."""
    raw = json.loads(SIM_STRONG.read_text())
    raw["model"]["display_name"] = f"{key} (simulated)"
    for block in REQUEST_BLOCKS:
        raw[block]["model_name"] = model_name
        raw[block].update(request or {})
    raw.update(top)
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / f"{key}.json"
    path.write_text(json.dumps(raw, indent=1))
    return path


@dataclass(frozen=True)
class Deployment:
    """One isolated installation of the benchmark under ``root``."""

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
    def home(self) -> Path:
        return self.root / "dagster_home"

    @classmethod
    def create(cls, root: Path) -> Deployment:
        deployment = cls(Path(root))
        for directory in (deployment.data_dir, deployment.assets_dir, deployment.models_dir, deployment.home):
            directory.mkdir(parents=True, exist_ok=True)
        return deployment

    def environ(self) -> dict[str, str]:
        return {
            "VLM_GIST_DATA_DIR": str(self.data_dir),
            "VLM_GIST_ASSETS_DIR": str(self.assets_dir),
            "VLM_GIST_MODELS_DIR": str(self.models_dir),
            "VLM_GIST_CONCURRENCY": str(CONCURRENCY),
            "DAGSTER_HOME": str(self.home),
        }

    @contextlib.contextmanager
    def activated(self) -> Iterator[Deployment]:
        with patched_environ(self.environ()):
            yield self

    def definitions(self) -> dg.Definitions:
        return build_definitions(
            resources={
                "io_manager": ParquetIOManagerFactory(base_path=str(self.assets_dir)),
                "models": ModelsResource(models_dir=str(self.models_dir)),
                # simulator mode as the environment (the simulator fixture) says
                "services": ServicesResource(
                    data_dir=str(self.data_dir),
                    concurrency=CONCURRENCY,
                    simulator=os.environ.get(SIMULATOR_ENV) == "1",
                ),
            }
        )

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))

    def read(self, asset: str, dataset: str, model: str | None = None) -> pd.DataFrame:
        path = self.assets_dir / asset / dataset
        if model is not None:
            path = path / model
        return read_parquet(path.with_name(path.name + ".parquet"))


def run_job(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job: str,
    partition: str | None = None,
    assets: tuple[str, ...] | None = None,
) -> dg.ExecuteInProcessResult:
    """Run ``job`` (optionally only ``assets`` of it) in this process; a failed run fails the test with
    the step errors."""
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
