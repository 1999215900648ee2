"""Stage settings as assets, so that lineage shows which settings produced which results and a change of
the detection (or label-matching) settings recomputes exactly the stages below it.

``settings_sensor`` materialises them when their file's content hash changes; declarative automation
then refreshes the downstream stages (not the descriptions, which do not depend on them).
"""

import json
import warnings
from pathlib import Path

import dagster as dg
import pandas as pd

from .. import paths
from ..files import file_sha256
from ..protocol.settings import load_settings
from .metadata import column_schema
from .partitions import dataset_partitions

SETTINGS_COLUMNS = ("path", "sha256", "settings_json")
SETTINGS_COLUMN_DOCS = {
    "path": "the settings file read",
    "sha256": "content hash of the file (the asset's data version)",
    "settings_json": "the validated settings, every default filled in, as canonical JSON",
}

# The settings assets report the file's hash as their data version on purpose (Output(data_version=)),
# a parameter Dagster marks beta: its BetaWarning on every materialisation says nothing to a user.
warnings.filterwarnings(
    "ignore", message=r"Parameter `data_version` of initializer `Output.__init__`", category=dg.BetaWarning
)


def detection_settings_file() -> Path:
    return paths.settings_dir() / "detection" / "detection.json"


def label_matching_settings_file(dataset: str) -> Path:
    return paths.settings_dir() / "label_matching" / f"{dataset}.json"


def settings_table(path: Path, expected_type: type) -> tuple[pd.DataFrame, object]:
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


def settings_from_table(table: pd.DataFrame, model: type):
    """The typed settings stored by a settings asset."""
    return model.model_validate(json.loads(table["settings_json"].iloc[0]))


@dg.asset(
    group_name="settings",
    kinds={"json"},
    description="The stage-B settings (MM-Grounding-DINO + SAM2) from settings/detection/detection.json.",
)
def detection_settings(context: dg.AssetExecutionContext) -> dg.Output[pd.DataFrame]:
    from ..protocol.settings import DetectionSettings

    path = detection_settings_file()
    table, settings = settings_table(path, DetectionSettings)
    return dg.Output(
        table,
        metadata={
            "dagster/column_schema": column_schema(table, SETTINGS_COLUMN_DOCS),
            "path": dg.MetadataValue.path(str(path)),
            "sha256": table["sha256"].iloc[0],
            "settings": dg.MetadataValue.json(settings.model_dump(mode="json")),
        },
        data_version=dg.DataVersion(table["sha256"].iloc[0]),
    )


@dg.asset(
    group_name="settings",
    kinds={"json"},
    partitions_def=dataset_partitions,
    description="The label-matching settings of each dataset from settings/label_matching/<dataset>.json.",
)
def label_matching_settings(context: dg.AssetExecutionContext) -> dg.Output[pd.DataFrame]:
    from ..protocol.settings import LabelMatchingSettings

    path = label_matching_settings_file(context.partition_key)
    table, settings = settings_table(path, LabelMatchingSettings)
    summary = settings.model_dump(mode="json")
    for key in ("dataset_targets", "augmented_targets"):
        summary[key] = f"{len(summary[key])} targets"
    return dg.Output(
        table,
        metadata={
            "dagster/column_schema": column_schema(table, SETTINGS_COLUMN_DOCS),
            "path": dg.MetadataValue.path(str(path)),
            "sha256": table["sha256"].iloc[0],
            "per_image_targets": settings.use_per_set_targets,
            "settings": dg.MetadataValue.json(summary),
        },
        data_version=dg.DataVersion(table["sha256"].iloc[0]),
    )
