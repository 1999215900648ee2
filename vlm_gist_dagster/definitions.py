"""The one Dagster entry point: ``dagster dev -m vlm_gist_dagster.definitions`` / ``dg check defs``."""

from __future__ import annotations

import dagster as dg

from .defs.automation import benchmark_automation_sensor
from .defs.datasets import dataset_tables
from .defs.descriptions import descriptions
from .defs.grounding import detections, masks
from .defs.io_manager import ParquetIOManagerFactory
from .defs.jobs import benchmark_pair_job, datasets_job, leaderboard_job, settings_job
from .defs.label_matches import label_matches
from .defs.metrics import leaderboard, metrics
from .defs.review import review_dataset
from .defs.resources import DatasetsResource, ModelsResource, ServicesResource
from .defs.schedules import nightly_benchmark_schedule
from .defs.sensors import model_settings_sensor, settings_sensor
from .defs.settings_assets import detection_settings, label_matching_settings
from .defs.validations import validations

ASSETS = [
    dataset_tables,
    detection_settings,
    label_matching_settings,
    descriptions,
    detections,
    masks,
    validations,
    label_matches,
    metrics,
    leaderboard,
    review_dataset,
]


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """The project's definitions; ``resources`` replaces defaults (tests point them at temp dirs)."""
    return dg.Definitions(
        assets=ASSETS,
        jobs=[datasets_job, settings_job, benchmark_pair_job, leaderboard_job],
        sensors=[model_settings_sensor, settings_sensor, benchmark_automation_sensor],
        schedules=[nightly_benchmark_schedule],
        resources={
            "io_manager": ParquetIOManagerFactory(),
            "datasets": DatasetsResource(),
            "models": ModelsResource(),
            "services": ServicesResource(),
            **(resources or {}),
        },
    )


defs = build_definitions()
