"""Settings files as assets, so that lineage shows which settings produced which results.

Every settings file the benchmark reads is an external asset (group ``settings``) whose data version is
the file's content hash: ``model_settings_file`` and ``validation_settings_file`` per model (the latter:
the validation file the model's header selects, ``off`` when none), ``detection_settings_file``,
``label_matching_settings_file`` per dataset, and ``prices_file``. ``settings_sensor`` records a new
version when a file's content changes, so the UI marks exactly its dependants stale.

``detection_settings`` and ``label_matching_settings`` are the validated settings tables the stages read;
the sensor re-materialises them when their file changes, and declarative automation then refreshes the
stages below them (not the descriptions, which do not depend on them).

Why external assets reported by a sensor and not ``@observable_source_asset``: that decorator (and
``Output(data_version=)``) is beta in Dagster 1.13 and warns on every load; external assets, runless
asset events and ``MaterializeResult(data_version=)`` are stable API.
"""

import json
from pathlib import Path
from typing import TypeVar

import dagster as dg
import pandas as pd
from pydantic import BaseModel

from ..files import file_sha256
from ..orchestration.metadata import column_schema
from ..protocol.settings import load_settings
from .partitions import dataset_partitions, model_partitions
from .resources import SettingsResource

SETTINGS_COLUMNS = ("path", "sha256", "settings_json")
SETTINGS_COLUMN_DOCS = {
    "path": "the settings file read",
    "sha256": "content hash of the file (the asset's data version)",
    "settings_json": "the validated settings, every default filled in, as canonical JSON",
}
#: The tag under which Dagster stores an event's data version (what ``ObserveResult(data_version=)``
#: writes); runless events reported by a sensor set it themselves.
DATA_VERSION_TAG = "dagster/data_version"
#: The data version of ``validation_settings_file`` for a model whose validation is off.
VALIDATION_OFF = "off"


def settings_file_spec(
    name: str, description: str, partitions_def: dg.PartitionsDefinition | None = None
) -> dg.AssetSpec:
    """An external asset for one settings file (group ``settings``; its data version, the file's content
    hash, is recorded by ``settings_sensor``)."""
    return dg.AssetSpec(
        name, group_name="settings", kinds={"json"}, partitions_def=partitions_def, description=description
    )


model_settings_file = settings_file_spec(
    "model_settings_file",
    "Each model's settings file in settings/models/ (data version: its content hash).",
    model_partitions,
)
validation_settings_file = settings_file_spec(
    "validation_settings_file",
    "The validation settings each model's header selects (settings/validation/validation.json "
    "for `true`); data version: that file's content hash, or 'off'.",
    model_partitions,
)
detection_settings_file = settings_file_spec(
    "detection_settings_file", "settings/detection/detection.json (data version: its content hash)."
)
label_matching_settings_file = settings_file_spec(
    "label_matching_settings_file",
    "settings/label_matching/<dataset>.json (data version: its content hash).",
    dataset_partitions,
)
prices_file = settings_file_spec(
    "prices_file",
    "settings/prices.json, the price table of the cost column (data version: its content hash).",
)
SETTINGS_FILES = (
    model_settings_file,
    validation_settings_file,
    detection_settings_file,
    label_matching_settings_file,
    prices_file,
)
#: The settings files, for automation conditions that must neither wait for nor react to them.
SETTINGS_FILES_SELECTION = dg.AssetSelection.assets(*(spec.key for spec in SETTINGS_FILES))


SettingsT = TypeVar("SettingsT", bound=BaseModel)


def settings_table(path: Path, expected_type: type[SettingsT]) -> tuple[pd.DataFrame, SettingsT]:
    """Load and validate a settings file; one row with its path, hash and canonical JSON."""
    settings = load_settings(path)
    if not isinstance(settings, expected_type):
        raise dg.Failure(
            description=f"{path}: expected {expected_type.__name__} settings, found {type(settings).__name__}",
            allow_retries=False,
        )
    canonical = json.dumps(settings.model_dump(mode="json"), sort_keys=True)
    return pd.DataFrame(
        [{"path": str(path), "sha256": file_sha256(path), "settings_json": canonical}]
    ), settings


def settings_from_table(table: pd.DataFrame, model: type[SettingsT]) -> SettingsT:
    """The typed settings stored by a settings asset."""
    return model.model_validate(json.loads(table["settings_json"].iloc[0]))


@dg.asset(
    group_name="settings",
    kinds={"json"},
    deps=[detection_settings_file],
    description="The stage-B settings (MM-Grounding-DINO + SAM2) from settings/detection/detection.json.",
)
def detection_settings(context: dg.AssetExecutionContext, settings: SettingsResource) -> dg.MaterializeResult:
    from ..protocol.settings import DetectionSettings

    path = settings.detection_file()
    table, detection = settings_table(path, DetectionSettings)
    return dg.MaterializeResult(
        value=table,
        metadata={
            "dagster/column_schema": column_schema(table, SETTINGS_COLUMN_DOCS),
            "path": dg.MetadataValue.path(str(path)),
            "sha256": table["sha256"].iloc[0],
            "settings": dg.MetadataValue.json(detection.model_dump(mode="json")),
        },
        data_version=dg.DataVersion(table["sha256"].iloc[0]),
    )


@dg.asset(
    group_name="settings",
    kinds={"json"},
    partitions_def=dataset_partitions,
    deps=[label_matching_settings_file],
    description="The label-matching settings of each dataset from settings/label_matching/<dataset>.json.",
)
def label_matching_settings(
    context: dg.AssetExecutionContext, settings: SettingsResource
) -> dg.MaterializeResult:
    from ..protocol.settings import LabelMatchingSettings

    path = settings.label_matching_file(context.partition_key)
    table, matching = settings_table(path, LabelMatchingSettings)
    summary = matching.model_dump(mode="json")
    for key in ("dataset_targets", "augmented_targets"):
        summary[key] = f"{len(summary[key])} targets"
    return dg.MaterializeResult(
        value=table,
        metadata={
            "dagster/column_schema": column_schema(table, SETTINGS_COLUMN_DOCS),
            "path": dg.MetadataValue.path(str(path)),
            "sha256": table["sha256"].iloc[0],
            "per_image_targets": matching.use_per_set_targets,
            "settings": dg.MetadataValue.json(summary),
        },
        data_version=dg.DataVersion(table["sha256"].iloc[0]),
    )
