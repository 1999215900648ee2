"""Stage D asset: ``label_matches``, one row per kept detection, per (dataset, model)."""

import dagster as dg
import pandas as pd

from ..orchestration.failures import api_errors
from ..orchestration.metadata import column_schema, preview
from ..orchestration.policies import API_RETRY, one_provider_pool
from ..protocol.settings import LabelMatchingSettings
from ..stages.label_matching import run_label_matches
from ..stages.tables import LABEL_MATCHES
from .automation import STAGE_CONDITION
from .partitions import DATASETS, model_dataset_partitions, pair
from .resources import ServicesResource, SettingsResource, resources_from_environment
from .settings_assets import settings_from_table


def label_matching_pool(settings: SettingsResource) -> str:
    """The pool of ``label_matches``: ``vlm_api/<provider>`` of the label-matching LLM that every
    dataset's settings file names, else the shared ``vlm_api`` (orchestration/policies.py)."""
    from ..protocol.endpoints import resolve_endpoint
    from ..protocol.settings import load_label_matching_settings

    def endpoint(dataset: str) -> str | None:
        try:
            llm = load_label_matching_settings(settings.label_matching_file(dataset)).llm
            return resolve_endpoint(llm.api_endpoint).name  # type: ignore[arg-type]
        except Exception:  # the step reports a bad settings file when it runs
            return None

    return one_provider_pool(endpoint(d) for d in DATASETS)


#: Read from the settings the resources are configured with, when the definitions load.
LABEL_MATCHING_POOL = label_matching_pool(resources_from_environment()["settings"])  # type: ignore[arg-type]


@dg.asset(
    partitions_def=model_dataset_partitions,
    group_name="benchmark",
    kinds={"parquet", "llm"},
    pool=LABEL_MATCHING_POOL,  # vlm_api/<provider> of the label-matching LLM (label_matching_pool)
    retry_policy=API_RETRY,
    automation_condition=STAGE_CONDITION,
    code_version="1",
    check_specs=[dg.AssetCheckSpec("matches_are_dataset_targets", asset="label_matches")],
    description="Stage D: each detection's label matched to a dataset class (COCO: 80 classes + 277 "
    "distractors, mapping rules) or to its image's GT descriptions (VLM-GIST), by LLM definitions and text "
    "embeddings; unmatched detections are dropped before evaluation, not counted as false positives.",
)
def label_matches(
    context: dg.AssetExecutionContext,
    dataset_images: pd.DataFrame,
    ground_truth: pd.DataFrame,
    descriptions: pd.DataFrame,
    validations: pd.DataFrame,
    label_matching_settings: pd.DataFrame,
    services: ServicesResource,
):
    dataset, _ = pair(context)
    settings = settings_from_table(label_matching_settings, LabelMatchingSettings)
    with api_errors():
        table, summary = run_label_matches(
            validations,
            descriptions,
            ground_truth,
            list(dataset_images["image_id"]),
            settings,
            services.services(),
            log=context.log.info,
        )
    matched = table["dataset_match"].dropna()
    if settings.use_per_set_targets:
        allowed = ground_truth.groupby("image_id")["label"].apply(set).to_dict()
        bad = [
            (i, m)
            for i, m, s in zip(table["image_id"], table["dataset_match"], table["skipped"])
            if m is not None and not s and m not in allowed.get(i, set())
        ]
    else:
        bad = [(None, m) for m in matched.unique() if m not in set(settings.dataset_targets)]
    yield dg.Output(
        table,
        metadata={
            "dagster/row_count": len(table),
            "dagster/column_schema": column_schema(table, LABEL_MATCHES.descriptions),
            **{k: v for k, v in summary.items() if k != "per_image"},
            "mat_ratio": float(len(matched) / len(table)) if len(table) else 0.0,
            "top_matches": dg.MetadataValue.json(matched.value_counts().head(15).to_dict()),
            "preview": preview(table.drop(columns=["mask"])),
        },
    )
    yield dg.AssetCheckResult(
        check_name="matches_are_dataset_targets",
        passed=not bad,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "non_target_matches": len(bad),
            "examples": dg.MetadataValue.json([str(b) for b in bad[:5]]),
        },
    )
