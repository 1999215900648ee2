"""Dataset assets: ``dataset_images`` and ``ground_truth``, one partition per dataset.

Both come from one load of the dataset directory (a ``multi_asset``), so masks are decoded once.
"""

import dataclasses
from collections.abc import Iterator

import dagster as dg

from ..datasets.provenance import heading, read_provenance
from ..orchestration.metadata import column_schema, counts_table, preview
from .automation import MISSING_CONDITION
from .partitions import dataset_partitions
from .resources import DatasetsResource

IMAGE_COLUMN_DOCS = {
    "image_id": "file stem; the paper keys everything by image basename",
    "path": "absolute path of the image file",
    "sha256": "content hash of the image file",
}
GROUND_TRUTH_COLUMN_DOCS = {
    "x": "left edge, relative to the image width",
    "y": "top edge, relative to the image height",
    "w": "width, relative to the image width",
    "h": "height, relative to the image height",
    "mask": "COCO RLE over the full image (pycocotools), or null",
    "label": "class name (COCO) or the instance's description sentence (VLM-GIST)",
}


@dg.multi_asset(
    outs={
        "dataset_images": dg.AssetOut(
            description="One row per image of the dataset: id, file, size, content hash.",
            kinds={"parquet", "pandas"},
            group_name="datasets",
            automation_condition=MISSING_CONDITION,
        ),
        "ground_truth": dg.AssetOut(
            description="One row per ground-truth instance: label, relative xywh box, COCO RLE mask, iscrowd.",
            kinds={"parquet", "pandas"},
            group_name="datasets",
            automation_condition=MISSING_CONDITION,
        ),
    },
    partitions_def=dataset_partitions,
    can_subset=False,
)
def dataset_tables(context: dg.AssetExecutionContext, datasets: DatasetsResource) -> Iterator[dg.Output]:
    name = context.partition_key
    dataset = datasets.load(name, progress=context.log.info)
    for warning in dataset.warnings:
        context.log.warning(warning)
    images, gt = dataset.images, dataset.ground_truth
    context.log.info(
        f"{name}: {len(images)} images, {len(gt)} instances from {dataset.root} ({dataset.format})"
    )

    provenance = read_provenance(dataset.root)
    sizes = images.groupby(["width", "height"]).size().sort_values(ascending=False)
    per_image = gt.groupby("image_id").size().reindex(images["image_id"], fill_value=0)
    yield dg.Output(
        images,
        output_name="dataset_images",
        metadata={
            "dagster/row_count": len(images),
            "dagster/column_schema": column_schema(images, IMAGE_COLUMN_DOCS),
            "source": dg.MetadataValue.path(str(dataset.root)),
            "format": dataset.format,
            # Which data this is (the paper's download or a local copy), for the leaderboard's headings.
            "heading": heading(name, images=len(images), root=dataset.root, provenance=provenance),
            **({"provenance": dg.MetadataValue.json(dataclasses.asdict(provenance))} if provenance else {}),
            "images_per_size": counts_table(
                {f"{w}×{h}": int(n) for (w, h), n in sizes.items()}, "size", "images"
            ),
            "preview": preview(images, drop=["path"]),
        },
    )
    yield dg.Output(
        gt,
        output_name="ground_truth",
        metadata={
            "dagster/row_count": len(gt),
            "dagster/column_schema": column_schema(gt, GROUND_TRUTH_COLUMN_DOCS),
            "instances": len(gt),
            "distinct_labels": int(gt["label"].nunique()),
            "with_mask": int(gt["mask"].notna().sum()),
            "crowd": int(gt["iscrowd"].sum()),
            "instances_per_image_mean": float(per_image.mean()) if len(per_image) else float("nan"),
            "instances_per_image_min": int(per_image.min()) if len(per_image) else 0,
            "instances_per_image_max": int(per_image.max()) if len(per_image) else 0,
            "warnings": len(dataset.warnings),
            "preview": preview(gt),
        },
    )
