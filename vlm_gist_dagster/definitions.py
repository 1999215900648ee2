"""The one Dagster entry point, for ``dg check defs`` / ``dg dev``, ``dagster dev`` and ``workspace.yaml``
alike (``[tool.dg.project]`` and ``[tool.dagster]`` in pyproject.toml name this module).

Every definition lives in a module under ``defs/`` and is found there by ``dg.load_from_defs_folder``,
the layout ``create-dagster project`` makes: a new asset, job, sensor or schedule needs no registration
here. ``defs/resources.py`` fills the resources from the environment when the definitions load.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

_PROJECT = Path(__file__).parent


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=_PROJECT)


def build_definitions(resources: Mapping[str, Any] | None = None) -> dg.Definitions:
    """The project's definitions, as :func:`defs` loads them (the environment is read now); ``resources``
    replaces some or all of the resources (tests point them at temporary folders; the runner builds the
    definitions inside the simulator's environment)."""
    loaded = dg.load_from_defs_folder(path_within_project=_PROJECT)
    if not resources:
        return loaded
    return dg.Definitions(
        assets=loaded.assets,
        asset_checks=loaded.asset_checks,
        jobs=loaded.jobs,
        sensors=loaded.sensors,
        schedules=loaded.schedules,
        executor=loaded.executor,
        loggers=loaded.loggers,
        metadata=loaded.metadata,
        resources={**(loaded.resources or {}), **resources},
    )
