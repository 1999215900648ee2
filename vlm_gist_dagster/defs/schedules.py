"""The nightly benchmark refresh.

Every night it requests the (dataset, model) pairs whose ``metrics`` are missing (new, or failed last
time) or stale (the model's settings file changed since its descriptions were made), one run per pair
with an idempotent ``run_key``; declarative automation then refreshes the leaderboard. Thanks to the
response cache a refresh never repeats a successful paid call.

(``build_schedule_from_partitioned_job`` rejects dynamic partitions, so the schedule lists the keys
itself; Dagster's documentation §1.12.)
"""

from pathlib import Path

import dagster as dg

from ..model_registry import discover_models
from ..orchestration.metadata import SETTINGS_SHA_KEY
from .descriptions import descriptions
from .metrics import metrics
from .partitions import model_dataset_partitions, split_pair_key
from .resources import ModelsResource
from .selections import PAIR_SELECTION


def _latest_metadata(instance: dg.DagsterInstance, asset: dg.AssetKey, partition: str) -> dict | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    materialization = records[0].asset_materialization
    return dict(materialization.metadata) if materialization else None


def pairs_to_refresh(instance: dg.DagsterInstance, directory: Path) -> list[tuple[str, str]]:
    """``(partition key, reason)`` for every pair whose metrics are missing or whose settings changed;
    model files from ``directory`` (the ``models`` resource's folder)."""
    current = {m.key: m.sha256 for m in discover_models(directory)[0]}
    materialized = instance.get_materialized_partitions(metrics.key)
    out: list[tuple[str, str]] = []
    for key in model_dataset_partitions.get_partition_keys(dynamic_partitions_store=instance):
        model = key.keys_by_dimension["model"]
        if model not in current:
            continue  # settings file removed: the model is retired, keep its history
        if str(key) not in materialized:
            out.append((str(key), "missing"))
            continue
        metadata = _latest_metadata(instance, descriptions.key, str(key)) or {}
        recorded = metadata.get(SETTINGS_SHA_KEY)
        recorded = getattr(recorded, "value", recorded)
        if recorded != current[model]:
            out.append((str(key), "settings changed"))
    return out


@dg.schedule(
    name="nightly_benchmark_schedule",
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    target=PAIR_SELECTION,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly refresh: missing and stale (dataset, model) pairs, then (by automation) the leaderboard.",
)
def nightly_benchmark_schedule(
    context: dg.ScheduleEvaluationContext, models: ModelsResource
) -> dg.SkipReason | list[dg.RunRequest]:
    date = context.scheduled_execution_time.strftime("%Y-%m-%d")
    todo = pairs_to_refresh(context.instance, models.directory())
    if not todo:
        return dg.SkipReason("every (dataset, model) pair is up to date")
    return [
        dg.RunRequest(
            run_key=f"nightly:{date}:{key}",
            partition_key=key,
            tags={
                "vlm_gist/trigger": "nightly",
                "vlm_gist/reason": reason,
                **models.provider_tags(split_pair_key(key)[1]),
            },
        )
        for key, reason in todo
    ]
