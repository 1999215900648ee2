"""Stage A, structured descriptions, for one (model, dataset) pair: one row per image.

VLM models run the paper's content-retry loop per image (``clients.describe``), keeping the endpoint's
concurrency limit of requests in flight across images. Baselines have no description stage (docs/protocol/pipeline.md §6):
their rows say so (success, no objects, no time), so that Fail/Ret. are 0 and Time is NaN for them.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from ..clients.describe import ImageDescription, describe_images
from ..protocol.settings import DescriptionSettings, ModelSettings
from .services import Services, progress_logger
from .tables import DESCRIPTIONS

#: Column names of the table (dtypes and meaning: ``stages.tables.DESCRIPTIONS``).
DESCRIPTION_COLUMNS = DESCRIPTIONS.names


def _row(result: ImageDescription) -> dict[str, Any]:
    row = result.as_row()
    # Each attempt's raw completion text, reasoning, reason and timing: nested and heterogeneous, so
    # stored as JSON text rather than as a Parquet struct.
    row["attempt_log_json"] = json.dumps(row.pop("attempt_log"), default=str)
    row.pop("report", None)
    row["from_cache"] = result.from_cache
    row["kind"] = "vlm"
    return row


def description_table(
    results: list[ImageDescription], settings: DescriptionSettings | None = None
) -> pd.DataFrame:
    rows = [_row(r) for r in results]
    if settings is not None:
        for row in rows:
            row["objects"] = canonical_objects(row["objects"], settings)
    return DESCRIPTIONS.from_rows(rows)


def canonical_objects(
    objects: list[dict[str, Any]] | None, settings: DescriptionSettings
) -> list[dict[str, Any]] | None:
    """The objects with their name and description under ``object_name`` and ``description``, the keys the
    later stages read, whatever ``dict_items`` calls them (nimbro-api's prompt asks for ``label``). The
    paper's files use these keys already: their objects are unchanged.

    >>> from vlm_gist_dagster.protocol.settings import DescriptionSettings, DictItem
    >>> s = DescriptionSettings(dict_items=[DictItem(key="label", type="str", required=True),
    ...                                     DictItem(key="description", type="str", required=True)])
    >>> canonical_objects([{"label": "cup", "description": "a cup"}], s)
    [{'object_name': 'cup', 'description': 'a cup'}]
    """
    renames = {settings.name_key: "object_name", settings.description_key: "description"}
    if objects is None or all(old == new for old, new in renames.items()):
        return objects
    return [{renames.get(k, k): v for k, v in obj.items()} for obj in objects]


def baseline_description_table(images: pd.DataFrame) -> pd.DataFrame:
    """Baselines replace stages A and B: every image "succeeds" with no description and no time."""
    rows = [
        {
            "image_id": image_id,
            "kind": "baseline",
            "success": True,
            "objects": None,
            "num_described": None,
            "attempts": 0,
            "failed_attempts": 0,
            "failed_attempts_total": 0,
            "duration_s": math.nan,
            "http_retries": 0,
            "from_cache": False,
            "attempt_log_json": "[]",
        }
        for image_id in images["image_id"]
    ]
    return DESCRIPTIONS.from_rows(rows)


def run_descriptions(
    images: pd.DataFrame,
    model: ModelSettings,
    services: Services,
    *,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Describe every image of ``images`` (the ``dataset_images`` table) with ``model``."""
    if model.kind == "baseline":
        return baseline_description_table(images)
    settings = model.description
    inputs = list(zip(images["image_id"], images["path"]))
    progress = progress_logger(len(inputs), f"descriptions[{model.name}]", log)

    async def main() -> list[ImageDescription]:
        async with services.chat_client() as chat:
            return await describe_images(chat, settings, inputs, progress=progress)

    return description_table(asyncio.run(main()), settings)
