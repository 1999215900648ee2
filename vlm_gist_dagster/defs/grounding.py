"""Stage B assets: ``detections`` + ``detection_images`` (MM-Grounding-DINO, or a baseline detector) and
``masks`` (SAM2), per (dataset, model). A model file's ``grounding`` mode may replace them with SAM 3 or the
VLM's own boxes (``protocol.settings.grounding``); the assets and their tables stay the same."""

import dagster as dg
import pandas as pd

from ..orchestration.failures import api_errors, check_model_mode
from ..orchestration.metadata import column_schema, preview
from ..orchestration.policies import API_RETRY, VISION_POOL, vision_server_pool
from ..protocol.settings import DetectionSettings, ModelSettings, load_label_matching_settings
from ..stages.grounding import run_detections, run_masks
from ..stages.tables import DETECTION_IMAGES, DETECTIONS, MASKS
from .automation import STAGE_CONDITION
from .partitions import model_dataset_partitions, pair
from .resources import (
    DatasetsResource,
    ModelsResource,
    ServicesResource,
    SettingsResource,
    resources_from_environment,
)
from .settings_assets import settings_from_table


def _sam2_pool() -> str:
    """The pool of the masks step: the SAM2 server's, at the URL the resources are configured with when
    the definitions load."""
    services = resources_from_environment()["services"]
    assert isinstance(services, ServicesResource)
    return vision_server_pool("sam2_realtime", services.vision_urls)


SAM2_POOL = _sam2_pool()


def dataset_class_names(
    dataset: str, model: ModelSettings, datasets: DatasetsResource, settings: SettingsResource
) -> list[str] | None:
    """The class names a ``sam3`` baseline (``sam3_classes``) prompts SAM 3 with, None for other models:
    the dataset's label-matching ``dataset_targets`` (COCO's 80 classes), or for a dataset matched per
    image (VLM-GIST, no fixed vocabulary) every label of its ground truth, sorted."""
    if model.kind != "baseline" or model.baseline.model_name != "sam3" or model.baseline.model_classes:
        return None
    matching = load_label_matching_settings(settings.label_matching_file(dataset))
    if not matching.use_per_set_targets:
        return list(matching.dataset_targets)
    return sorted(set(datasets.load(dataset).ground_truth["label"]))


@dg.multi_asset(
    outs={
        "detections": dg.AssetOut(
            description="Stage B: one row per detector output (prompt = description string, int xyxy box, "
            "confidence, direct/over-detection flag, the instance it belongs to).",
            kinds={"parquet", "vision"},
            group_name="benchmark",
            automation_condition=STAGE_CONDITION,
            code_version="1",
        ),
        "detection_images": dg.AssetOut(
            description="Stage B per image: prompts, detection count, missing prompts, over-detections, time.",
            kinds={"parquet"},
            group_name="benchmark",
            automation_condition=STAGE_CONDITION,
            code_version="1",
        ),
    },
    partitions_def=model_dataset_partitions,
    pool=VISION_POOL,
    retry_policy=API_RETRY,
    can_subset=False,
    check_specs=[dg.AssetCheckSpec("boxes_inside_image", asset="detections")],
)
def detections(
    context: dg.AssetExecutionContext,
    dataset_images: pd.DataFrame,
    descriptions: pd.DataFrame,
    detection_settings: pd.DataFrame,
    models: ModelsResource,
    services: ServicesResource,
    datasets: DatasetsResource,
    settings: SettingsResource,
):
    dataset, key = pair(context)
    _, model = models.load(key)
    check_model_mode(model, services.simulator)
    detection = settings_from_table(detection_settings, DetectionSettings)
    with api_errors():
        class_names = dataset_class_names(dataset, model, datasets, settings)
        table, per_image = run_detections(
            dataset_images,
            descriptions,
            model,
            detection,
            services.services(),
            log=context.log.info,
            class_names=class_names,
        )
    errors = per_image["error"].dropna()
    for image_id, error in zip(per_image.loc[errors.index, "image_id"], errors):
        context.log.warning(f"detection failed for image {image_id}: {error}")
    yield dg.Output(
        table,
        output_name="detections",
        metadata={
            "dagster/row_count": len(table),
            "dagster/column_schema": column_schema(table, DETECTIONS.descriptions),
            "detections": len(table),
            "over_detections": int(table["is_over_detection"].fillna(False).astype(bool).sum()),
            "images_with_prompts": int((per_image["num_prompts"] > 0).sum()),
            "image_errors": len(errors),
            "grounding_mode": model.grounding.mode if model.kind == "vlm" else model.baseline.model_name,
            "preview": preview(table),
        },
    )
    yield dg.Output(
        per_image,
        output_name="detection_images",
        metadata={
            "dagster/row_count": len(per_image),
            "dagster/column_schema": column_schema(per_image, DETECTION_IMAGES.descriptions),
            "detections_per_image_mean": float(
                per_image.loc[per_image["num_prompts"] > 0, "num_detections"].mean()
            )
            if (per_image["num_prompts"] > 0).any()
            else 0.0,
            "missing_prompts": int(per_image["missing_prompts"].map(len).sum()),
            "median_time_s": float(per_image["duration_s"].median()) if len(per_image) else 0.0,
            "preview": preview(per_image),
        },
    )
    sizes = dataset_images.set_index("image_id")[["width", "height"]]
    joined = table.join(sizes, on="image_id")
    outside = joined[
        (joined["x1"] < 0)
        | (joined["y1"] < 0)
        | (joined["x2"] > joined["width"])
        | (joined["y2"] > joined["height"])
        | (joined["x2"] <= joined["x1"])
        | (joined["y2"] <= joined["y1"])
    ]
    yield dg.AssetCheckResult(
        check_name="boxes_inside_image",
        asset_key="detections",
        passed=outside.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"boxes_outside_or_empty": len(outside), "checked": len(table)},
    )


@dg.asset(
    partitions_def=model_dataset_partitions,
    group_name="benchmark",
    kinds={"parquet", "vision"},
    pool=SAM2_POOL,  # one per SAM2 server: its global tracker serves one sequence at a time
    retry_policy=API_RETRY,
    automation_condition=STAGE_CONDITION,
    code_version="1",
    description="Stage B, SAM2: one row per detection with its mask (full-image COCO RLE), mask box, track id "
    "and the preferred box (mask box when segmentation_use_bbox) as pixel xyxy and relative xywh.",
)
def masks(
    context: dg.AssetExecutionContext,
    dataset_images: pd.DataFrame,
    detections: pd.DataFrame,
    detection_images: pd.DataFrame,
    detection_settings: pd.DataFrame,
    models: ModelsResource,
    services: ServicesResource,
) -> dg.Output[pd.DataFrame]:
    dataset, key = pair(context)
    _, model = models.load(key)
    check_model_mode(model, services.simulator)
    settings = settings_from_table(detection_settings, DetectionSettings)
    with api_errors():
        table = run_masks(
            dataset_images,
            detections,
            detection_images,
            model,
            settings,
            services.services(),
            log=context.log.info,
        )
    return dg.Output(
        table,
        metadata={
            "dagster/row_count": len(table),
            "dagster/column_schema": column_schema(table, MASKS.descriptions),
            "with_mask": int(table["mask"].notna().sum()),
            "without_mask": int(table["mask"].isna().sum()),
            "segmentation_errors": int(table["segmentation_error"].notna().sum()),
            "grounding_mode": model.grounding.mode if model.kind == "vlm" else model.baseline.model_name,
            "preview": preview(table),
        },
    )
