"""Stage A asset: ``descriptions``, one row per image, per (dataset, model)."""

import dagster as dg
import pandas as pd

from ..orchestration.failures import api_errors, check_model_mode
from ..orchestration.metadata import SETTINGS_SHA_KEY, column_schema, finite, preview
from ..orchestration.policies import API_RETRY, VLM_POOL
from ..stages.descriptions import run_descriptions
from ..stages.tables import DESCRIPTIONS
from .automation import DESCRIPTIONS_CONDITION
from .partitions import model_dataset_partitions, pair
from .resources import ModelsResource, ServicesResource
from .settings_assets import model_settings_file, prices_file

#: Warn when more than this fraction of images has no valid description after all attempts.
MAX_FAILURE_RATE = 0.2


@dg.asset(
    partitions_def=model_dataset_partitions,
    group_name="benchmark",
    kinds={"parquet", "vlm"},
    # The provider varies by model partition and a pool cannot: runs carry vlm_gist/provider instead
    # (ModelsResource.provider_tags), limited per provider in deploy/dagster.yaml.
    pool=VLM_POOL,
    retry_policy=API_RETRY,
    automation_condition=DESCRIPTIONS_CONDITION,
    code_version="1",
    deps=[model_settings_file, prices_file],
    check_specs=[dg.AssetCheckSpec("description_failure_rate", asset="descriptions")],
    description=(
        "Stage A: the VLM's structured description of every image (the paper's prompt, up to 1 + retry "
        "attempts, every attempt's raw output kept), with tokens, cost and the successful attempt's time."
    ),
)
def descriptions(
    context: dg.AssetExecutionContext,
    dataset_images: pd.DataFrame,
    models: ModelsResource,
    services: ServicesResource,
):
    dataset, key = pair(context)
    model_file, model = models.load(key)
    check_model_mode(model, services.simulator)
    with api_errors():
        table = run_descriptions(dataset_images, model, services.services(), log=context.log.info)
    n = len(table)
    failed = int((~table["success"].astype(bool)).sum())
    rate = failed / n if n else 0.0
    yield dg.Output(
        table,
        metadata={
            "dagster/row_count": n,
            "dagster/column_schema": column_schema(table, DESCRIPTIONS.descriptions),
            "model": model.display_name,
            "kind": model.kind,
            "simulated": model.simulated,
            SETTINGS_SHA_KEY: model_file.sha256,
            "images": n,
            "succeeded": n - failed,
            "failed": failed,
            "failed_attempts": int(table["failed_attempts"].sum()),
            "http_retries": int(table["http_retries"].fillna(0).sum()),
            "from_cache": int(table["from_cache"].fillna(False).astype(bool).sum()),
            "median_time_s": finite(table["duration_s"].median()),
            "objects_per_image": finite(table["num_described"].astype("float64").mean()),
            "tokens_in": int(table["tokens_in"].fillna(0).sum()),
            "tokens_out": int(table["tokens_out"].fillna(0).sum()),
            "cost_usd": finite(table["cost_usd"].sum(min_count=1)),
            "errors": dg.MetadataValue.json(table["error"].dropna().value_counts().to_dict()),
            "preview": preview(table.drop(columns=["attempt_log_json"])),
        },
    )
    yield dg.AssetCheckResult(
        check_name="description_failure_rate",
        passed=rate <= MAX_FAILURE_RATE,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"failure_rate": rate, "threshold": MAX_FAILURE_RATE, "failed_images": failed},
    )
