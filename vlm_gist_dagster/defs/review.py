"""``review_dataset`` (per dataset): the FiftyOne review dataset that ``vlm-gist review --no-launch`` builds,
as one click in the Dagster UI.

It reads what the pipeline stored (``<assets>/<asset>/<dataset>[/<model>].parquet``, the IO manager's base
path) exactly as the command does, so the command and the asset share one incremental state: a model
whose stored outputs did not change is not rebuilt by either. Nothing automates it (building a FiftyOne
dataset is for people who look at results); launch it from the asset page or with
``dg launch --assets review_dataset --partition coco``.
"""

import dagster as dg

from ..review.app import DEFAULT_PORT, app_url
from ..review.builder import PAIR_ASSETS
from .partitions import dataset_partitions


def assets_base(io_manager) -> str | None:
    """Where the Parquet IO manager stores the assets (None: ``$VLM_GIST_ASSETS_DIR`` / the default)."""
    base = getattr(io_manager, "base_path", None)
    return str(base) if base is not None else None


@dg.asset(
    partitions_def=dataset_partitions,
    deps=[
        dg.AssetDep("dataset_images"),
        dg.AssetDep("ground_truth"),
        # every model's partitions of the dataset: Dagster infers the mapping by the shared "dataset"
        # dimension (stating MultiToSingleDimensionPartitionMapping explicitly warns: beta)
        *(dg.AssetDep(asset) for asset in PAIR_ASSETS),
    ],
    required_resource_keys={"io_manager"},
    group_name="review",
    kinds={"fiftyone"},
    description="The FiftyOne review dataset `vlm-gist-<dataset>` (what `vlm-gist review --no-launch` builds): "
    "the ground truth and, per model with stored outputs, its grounded boxes, SAM2 masks, label matches and "
    "FiftyOne's `evaluate_detections` (one eval key per model). Models with unchanged outputs are not rebuilt. "
    "Open it with `vlm-gist review --dataset <dataset>`. Not automated: launch it when you want to look.",
)
def review_dataset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    from ..review import ReviewError, build_review_dataset, dataset_input, model_inputs

    dataset = context.partition_key
    base = assets_base(context.resources.io_manager)
    try:
        summary = build_review_dataset(
            dataset, dataset_input(dataset, base), model_inputs(dataset, None, base), log=context.log.info
        )
    except ReviewError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    for model in summary.models:
        if model.differences():
            context.log.warning(
                f"{model.key}: FiftyOne's evaluation differs from the stored metrics (stale metrics?): "
                + "; ".join(model.differences())
            )
    plain = summary.metadata()
    return dg.MaterializeResult(
        metadata={
            "fiftyone_dataset": plain["fiftyone_dataset"],
            "samples": plain["samples"],
            "ground_truth_objects": plain["ground_truth_objects"],
            "models": dg.MetadataValue.json(sorted(m.key for m in summary.models if m.status != "removed")),
            "models_built": dg.MetadataValue.json(plain["models_built"]),
            "models_unchanged": dg.MetadataValue.json(plain["models_unchanged"]),
            "models_removed": dg.MetadataValue.json(plain["models_removed"]),
            "evaluation": _evaluation_table(summary),
            "disagreements": dg.MetadataValue.json(plain["disagreements"]),
            "open_with": dg.MetadataValue.md(
                f"`vlm-gist review --dataset {dataset}` (serves {app_url(summary.name, DEFAULT_PORT)})"
            ),
            "seconds": plain["seconds"],
        }
    )


def _evaluation_table(summary) -> dg.MetadataValue:
    """One row per model: its status and FiftyOne's evaluation next to the stored metrics' F1."""
    columns = [
        dg.TableColumn("model", "string"),
        dg.TableColumn("status", "string", description="built now, unchanged, or removed"),
        dg.TableColumn("eval_key", "string", description="FiftyOne evaluation key (Model Evaluation panel)"),
        *(dg.TableColumn(c, "int") for c in ("tp", "fp", "fn")),
        *(dg.TableColumn(c, "float") for c in ("precision", "recall", "fscore")),
        dg.TableColumn("agrees_with_metrics", "bool", description="TP/FP/FN, P, R, F1, mAP as in `metrics`"),
    ]
    records = []
    for m in summary.models:
        e = dict(m.evaluation or {})
        records.append(
            dg.TableRecord(
                {
                    "model": m.key,
                    "status": m.status,
                    "eval_key": m.eval_key,
                    **{c: (int(e[c]) if e.get(c) is not None else None) for c in ("tp", "fp", "fn")},
                    **{
                        c: (float(e[c]) if e.get(c) is not None else None)
                        for c in ("precision", "recall", "fscore")
                    },
                    "agrees_with_metrics": (not m.differences()) if (e and m.metrics) else None,
                }
            )
        )
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


__all__ = ["review_dataset"]
