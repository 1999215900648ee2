"""The one Dagster entry point: ``dagster dev -m vlm_gist_dagster.definitions`` / ``dg check defs``."""

from __future__ import annotations

import dagster as dg

from .defs.datasets import dataset_tables, datasets_job
from .defs.io_manager import ParquetIOManagerFactory
from .defs.resources import DatasetsResource


def build_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=[dataset_tables],
        jobs=[datasets_job],
        resources={
            "io_manager": ParquetIOManagerFactory(),
            "datasets": DatasetsResource(),
        },
    )


defs = build_definitions()
