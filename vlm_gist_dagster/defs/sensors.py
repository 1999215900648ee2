"""Sensors: the benchmark reacts to files.

``model_settings_sensor`` watches ``settings/models/``: a new file adds a ``models`` partition (and
declarative automation computes exactly the new pairs and then the leaderboard); an edited file requests
a refresh of that model's pairs (it keeps a cursor of content hashes, so each change is acted on once).
``settings_sensor`` records each settings file's content hash as the data version of its external asset
(``defs.settings_assets``), so lineage and staleness show which settings every result came from; when a
recorded version changes it re-materialises the settings tables (automation then recomputes the stages
below them) and re-runs the validations of the models whose validation file changed. Its state is the
instance's own record of the versions, not a cursor.

Both stay cheap (no model calls; they hash a few small files), well inside Dagster's 60 s budget.
"""

import json
from pathlib import Path

import dagster as dg

from ..files import file_sha256
from ..model_registry import discover_models
from .partitions import DATASETS, MODEL_PARTITIONS_NAME, model_partitions, pair_key
from .resources import ModelsResource, SettingsResource
from .selections import PAIR_ASSET_KEYS, PAIR_SELECTION, VALIDATION_ASSET_KEYS
from .settings_assets import (
    DATA_VERSION_TAG,
    VALIDATION_OFF,
    detection_settings,
    detection_settings_file,
    label_matching_settings,
    label_matching_settings_file,
    model_settings_file,
    prices_file,
    validation_settings_file,
)


def _load_cursor(cursor: str | None) -> tuple[dict[str, str], dict[str, int]]:
    """``(content hash per file, changes acted on per file)``. The change count goes into run keys:
    Dagster launches at most one run per run key and sensor, so a key made of the content hash alone
    would silently drop a change back to an earlier content (A -> B -> A -> B: the second B)."""
    try:
        value = json.loads(cursor) if cursor else {}
    except json.JSONDecodeError:
        return {}, {}
    if not isinstance(value, dict) or not isinstance(value.get("sha256"), dict):
        return {}, {}
    changes = value.get("changes")
    changes = changes if isinstance(changes, dict) else {}
    return dict(value["sha256"]), {str(k): int(v) for k, v in changes.items()}


def _dump_cursor(hashes: dict[str, str], changes: dict[str, int]) -> str:
    return json.dumps({"sha256": hashes, "changes": changes}, sort_keys=True)


@dg.sensor(
    name="model_settings_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=PAIR_SELECTION,
    description="Adds a models partition for every new settings/models/*.json and refreshes edited models.",
)
def model_settings_sensor(
    context: dg.SensorEvaluationContext, models: ModelsResource
) -> dg.SensorResult | dg.SkipReason:
    seen, changes = _load_cursor(context.cursor)
    found, problems = discover_models(models.directory())
    for problem in problems:
        context.log.warning(problem)

    existing = set(context.instance.get_dynamic_partitions(MODEL_PARTITIONS_NAME))
    new_keys = [m.key for m in found if m.key not in existing]
    changed = [m for m in found if m.key in existing and m.key in seen and seen[m.key] != m.sha256]
    for m in changed:
        changes[m.key] = changes.get(m.key, 0) + 1
    run_requests = [
        dg.RunRequest(
            run_key=f"{m.key}:{changes[m.key]}:{m.sha256[:16]}:{dataset}",
            partition_key=pair_key(dataset, m.key),
            asset_selection=list(PAIR_ASSET_KEYS),
            tags={
                "vlm_gist/trigger": "model_settings_changed",
                "vlm_gist/model": m.key,
                **models.provider_tags(m.key),
            },
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


def _recorded_version(instance: dg.DagsterInstance, spec: dg.AssetSpec, partition: str | None) -> str | None:
    """The data version last recorded for a settings file (partition), None if none was."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=spec.key, asset_partitions=[partition] if partition is not None else None
        ),
        limit=1,
    ).records
    event = records[0].event_log_entry.asset_materialization if records else None
    return (event.tags or {}).get(DATA_VERSION_TAG) if event else None


def settings_file_versions(
    settings: SettingsResource, models: ModelsResource, model_keys: set[str]
) -> tuple[list[tuple[dg.AssetSpec, str | None, Path, str]], list[str]]:
    """``(spec, partition, path, data version)`` of every settings file the benchmark reads now, and the
    problems (missing or unreadable files) to report. Model files count for registered models only."""
    from ..model_registry import validation_settings_path
    from ..protocol.settings import SettingsError, load_model_settings

    out: list[tuple[dg.AssetSpec, str | None, Path, str]] = []
    problems: list[str] = []

    def add(spec: dg.AssetSpec, partition: str | None, path: Path) -> None:
        if not path.is_file():
            problems.append(f"{path}: settings file is missing")
            return
        out.append((spec, partition, path, file_sha256(path)))

    add(detection_settings_file, None, settings.detection_file())
    for dataset in DATASETS:
        add(label_matching_settings_file, dataset, settings.label_matching_file(dataset))
    prices = settings.prices_file()
    if prices.is_file():  # optional: no price table, no cost column
        add(prices_file, None, prices)
    found, _ = discover_models(models.directory())
    for model in found:
        if model.key not in model_keys:
            continue
        out.append((model_settings_file, model.key, model.path, model.sha256))
        try:
            header = load_model_settings(model.path)
        except SettingsError as exc:
            problems.append(str(exc))
            continue
        path = validation_settings_path(header.validation, model.path, settings.validation_file())
        if path is None or header.kind != "vlm":
            out.append((validation_settings_file, model.key, model.path, VALIDATION_OFF))
        else:
            add(validation_settings_file, model.key, path)
    return out, problems


@dg.sensor(
    name="settings_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=dg.AssetSelection.assets(
        detection_settings, label_matching_settings, *VALIDATION_ASSET_KEYS
    ),
    description="Records the content hash of every settings file as its asset's data version; on a change "
    "re-materialises the settings tables, or re-runs the validations of the models that use the file.",
)
def settings_sensor(
    context: dg.SensorEvaluationContext, settings: SettingsResource, models: ModelsResource
) -> dg.SensorResult:
    model_keys = set(context.instance.get_dynamic_partitions(MODEL_PARTITIONS_NAME))
    versions, problems = settings_file_versions(settings, models, model_keys)
    for problem in problems:
        context.log.warning(problem)
    events: list[dg.AssetMaterialization] = []
    run_requests: list[dg.RunRequest] = []
    for spec, partition, path, version in versions:
        recorded = _recorded_version(context.instance, spec, partition)
        if recorded == version:
            continue
        events.append(
            dg.AssetMaterialization(
                asset_key=spec.key,
                partition=partition,
                tags={DATA_VERSION_TAG: version},
                metadata={"path": dg.MetadataValue.path(str(path)), "sha256": version},
            )
        )
        # The run key names the version it replaces, so A -> B -> A -> B launches every change.
        run_key = f"{spec.key.to_user_string()}:{partition}:{recorded}->{version}"
        if spec is detection_settings_file:
            if recorded is None and (
                _materialized_sha256(context.instance, detection_settings.key, None) == version
            ):
                continue  # first record of a file the table was already made from (e.g. by `vlm-gist run`)
            run_requests.append(dg.RunRequest(run_key=run_key, asset_selection=[detection_settings.key]))
        elif spec is label_matching_settings_file:
            if recorded is None and (
                _materialized_sha256(context.instance, label_matching_settings.key, partition) == version
            ):
                continue
            run_requests.append(
                dg.RunRequest(
                    run_key=run_key,
                    partition_key=partition,
                    asset_selection=[label_matching_settings.key],
                )
            )
        elif spec is validation_settings_file and recorded is not None:
            assert partition is not None, "validation settings files are recorded per model"
            run_requests.extend(
                dg.RunRequest(
                    run_key=f"{run_key}:{dataset}",
                    partition_key=pair_key(dataset, partition),
                    asset_selection=list(VALIDATION_ASSET_KEYS),
                    tags={
                        "vlm_gist/trigger": "validation_settings_changed",
                        "vlm_gist/model": partition,
                        **models.provider_tags(partition),
                    },
                )
                for dataset in DATASETS
            )
    return dg.SensorResult(asset_events=events, run_requests=run_requests)


def _materialized_sha256(
    instance: dg.DagsterInstance, asset: dg.AssetKey, partition: str | None
) -> str | None:
    """The ``sha256`` metadata of the latest materialisation of a settings table (partition)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=asset, asset_partitions=[partition] if partition is not None else None
        ),
        limit=1,
    ).records
    materialization = records[0].asset_materialization if records else None
    value = materialization.metadata.get("sha256") if materialization else None
    sha256 = value.value if value is not None else None
    return sha256 if isinstance(sha256, str) else None
