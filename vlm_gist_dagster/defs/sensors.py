"""Sensors: the benchmark reacts to files.

``model_settings_sensor`` watches ``settings/models/``: a new file adds a ``models`` partition (and
declarative automation computes exactly the new pairs and then the leaderboard); an edited file requests
a refresh of that model's pairs. ``settings_sensor`` watches the stage settings files and re-materialises
the settings assets when their content changes, which makes the stages below them recompute.

Both keep a cursor of content hashes, so each change is acted on once, and both stay cheap (no model
calls; they hash a few small files), well inside Dagster's 60 s sensor budget.
"""

import json

import dagster as dg

from ..model_registry import discover_models

from .partitions import DATASETS, model_partitions, pair_key
from .resources import ModelsResource
from ..files import file_sha256
from .settings_assets import detection_settings_file, label_matching_settings_file

#: Per-pair assets refreshed when a model's settings file changes.
PAIR_ASSETS = (
    "descriptions",
    "detections",
    "detection_images",
    "masks",
    "validations",
    "label_matches",
    "metrics",
)


def _load_cursor(cursor: str | None) -> tuple[dict[str, str], dict[str, int]]:
    """``(content hash per file, changes acted on per file)``. The change count goes into run keys:
    Dagster launches at most one run per run key and sensor, so a key made of the content hash alone
    would silently drop a change back to an earlier content (A -> B -> A -> B: the second B). Cursors of
    the first version (the hash map alone) are still read."""
    try:
        value = json.loads(cursor) if cursor else {}
    except json.JSONDecodeError:
        return {}, {}
    if not isinstance(value, dict):
        return {}, {}
    if isinstance(value.get("sha256"), dict):
        changes = value.get("changes")
        changes = changes if isinstance(changes, dict) else {}
        return dict(value["sha256"]), {str(k): int(v) for k, v in changes.items()}
    return value, {}


def _dump_cursor(hashes: dict[str, str], changes: dict[str, int]) -> str:
    return json.dumps({"sha256": hashes, "changes": changes}, sort_keys=True)


@dg.sensor(
    name="model_settings_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=dg.AssetSelection.assets(*PAIR_ASSETS),
    description="Adds a models partition for every new settings/models/*.json and refreshes edited models.",
)
def model_settings_sensor(
    context: dg.SensorEvaluationContext, models: ModelsResource
) -> dg.SensorResult | dg.SkipReason:
    seen, changes = _load_cursor(context.cursor)
    found, problems = discover_models(models.directory())
    for problem in problems:
        context.log.warning(problem)

    existing = set(context.instance.get_dynamic_partitions(model_partitions.name))
    new_keys = [m.key for m in found if m.key not in existing]
    changed = [m for m in found if m.key in existing and m.key in seen and seen[m.key] != m.sha256]
    for m in changed:
        changes[m.key] = changes.get(m.key, 0) + 1
    run_requests = [
        dg.RunRequest(
            run_key=f"{m.key}:{changes[m.key]}:{m.sha256[:16]}:{dataset}",
            partition_key=pair_key(dataset, m.key),
            asset_selection=[dg.AssetKey(a) for a in PAIR_ASSETS],
            tags={"vlm_gist/trigger": "model_settings_changed", "vlm_gist/model": m.key},
        )
        for m in changed
        for dataset in DATASETS
    ]
    cursor = _dump_cursor({m.key: m.sha256 for m in found}, changes)
    if not new_keys and not run_requests:
        return dg.SensorResult(cursor=cursor, skip_reason=dg.SkipReason(f"{len(found)} models, no change"))
    if new_keys:
        context.log.info(f"New model partitions: {', '.join(new_keys)}")
    return dg.SensorResult(
        dynamic_partitions_requests=[model_partitions.build_add_request(new_keys)] if new_keys else [],
        run_requests=run_requests,
        cursor=cursor,
    )


def _materialized_sha256(instance: dg.DagsterInstance, asset: str, partition: str | None) -> str | None:
    """The ``sha256`` metadata of the latest materialisation of a settings asset (partition)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition is not None else None
        ),
        limit=1,
    ).records
    materialization = records[0].asset_materialization if records else None
    value = materialization.metadata.get("sha256") if materialization else None
    return getattr(value, "value", value)


@dg.sensor(
    name="settings_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=dg.AssetSelection.assets("detection_settings", "label_matching_settings"),
    description="Re-materialises the detection / label-matching settings assets when their files change.",
)
def settings_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    seen, changes = _load_cursor(context.cursor)
    current: dict[str, str] = {}
    run_requests: list[dg.RunRequest] = []
    files = {"detection": detection_settings_file()}
    files.update({f"label_matching:{d}": label_matching_settings_file(d) for d in DATASETS})
    for name, path in files.items():
        if not path.is_file():
            context.log.warning(f"{path}: settings file is missing")
            continue
        digest = file_sha256(path)
        current[name] = digest
        if seen.get(name) == digest:
            continue
        asset, partition = (
            ("detection_settings", None)
            if name == "detection"
            else ("label_matching_settings", name.split(":", 1)[1])
        )
        if _materialized_sha256(context.instance, asset, partition) == digest:
            # Already materialised from this content (e.g. by `vlm-gist run` before the daemon's first
            # tick): a re-materialisation would make automation recompute every pair's stages B-E.
            continue
        changes[name] = changes.get(name, 0) + 1
        if name == "detection":
            run_requests.append(
                dg.RunRequest(
                    run_key=f"detection:{changes[name]}:{digest[:16]}",
                    asset_selection=[dg.AssetKey("detection_settings")],
                )
            )
        else:
            dataset = name.split(":", 1)[1]
            run_requests.append(
                dg.RunRequest(
                    run_key=f"{name}:{changes[name]}:{digest[:16]}",
                    partition_key=dataset,
                    asset_selection=[dg.AssetKey("label_matching_settings")],
                )
            )
    return dg.SensorResult(run_requests=run_requests, cursor=_dump_cursor(current, changes))
