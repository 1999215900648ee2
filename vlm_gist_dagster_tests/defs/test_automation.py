"""Declarative automation of the benchmark graph (Dagster's documentation §1.3), evaluated the way the automation
sensor evaluates it: ``dg.evaluate_automation_conditions(defs=..., instance=..., cursor=...)`` tick after
tick, with the model and settings sensors' requests applied to the instance as the daemon would.

No stage runs here: the runs a tick would launch are stood in for by materialisation events of exactly
the requested partitions (``report_runless_asset_event``), so every test is about *what* is requested.

Expected request sets are written out by hand from the graph (docs/protocol/pipeline.md stages A-E):
descriptions <- dataset_images; detections + detection_images <- descriptions, detection_settings;
masks <- detections, detection_images; validations <- descriptions, masks; label_matches <- validations,
ground_truth, label_matching_settings; metrics <- label_matches, detection_images; leaderboard <- every
metrics partition.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import dagster as dg
import pytest

from vlm_gist_dagster.definitions import build_definitions
from vlm_gist_dagster.defs.metrics import leaderboard
from vlm_gist_dagster.defs.settings_assets import detection_settings, label_matching_settings

from ..deployment import DATASETS, PAIR_ASSETS, Deployment, pair_keys
from .conftest import apply_partition_requests, tick_model_sensor

ALL_ASSETS = (
    "dataset_images",
    "ground_truth",
    "detection_settings",
    "label_matching_settings",
    *PAIR_ASSETS,
    "leaderboard",
)
MODELS = ("sim_strong", "sim_medium")


def requested(result) -> dict[str, set[str | None]]:
    """``asset -> requested partition keys`` (``{None}`` for an unpartitioned asset) of one tick."""
    out = {a: set(result.get_requested_partitions(dg.AssetKey(a))) for a in ALL_ASSETS}
    out = {a: keys for a, keys in out.items() if keys}
    # nothing outside ALL_ASSETS was requested (asset checks, unknown assets)
    assert result.total_requested == sum(len(keys) for keys in out.values())
    return out


def materialise(
    instance: dg.DagsterInstance, assets: Iterable[str], partitions: Iterable[str | None]
) -> None:
    """What a successful run of ``assets`` x ``partitions`` leaves in the instance."""
    partitions = list(partitions)
    for asset in assets:
        for partition in partitions:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=partition))


def materialise_inputs(instance: dg.DagsterInstance) -> None:
    materialise(instance, ["dataset_images", "ground_truth", "label_matching_settings"], DATASETS)
    materialise(instance, ["detection_settings"], [None])


def evaluate(defs: dg.Definitions, instance: dg.DagsterInstance, previous=None):
    return dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=previous.cursor if previous is not None else None
    )


def every_pair(models, assets=PAIR_ASSETS, datasets=DATASETS) -> dict[str, set[str]]:
    return {asset: set(pair_keys(models, datasets)) for asset in assets}


def test_a_new_model_file_requests_exactly_its_pairs_then_the_leaderboard(deployment: Deployment):
    for model in MODELS:
        deployment.add_model(model)
    defs = deployment.definitions()
    with dg.instance_for_test() as instance:
        first = tick_model_sensor(deployment, instance)
        assert [r.partition_keys for r in first.dynamic_partitions_requests] == [["sim_medium", "sim_strong"]]
        assert first.run_requests == []
        apply_partition_requests(instance, first)
        materialise_inputs(instance)
        materialise(instance, PAIR_ASSETS, pair_keys(MODELS))
        materialise(instance, ["leaderboard"], [None])

        tick1 = evaluate(defs, instance)
        assert requested(tick1) == {}  # everything is materialised

        deployment.add_model("sim_weak")
        second = tick_model_sensor(deployment, instance, first.cursor)
        assert [r.partition_keys for r in second.dynamic_partitions_requests] == [["sim_weak"]]
        assert second.run_requests == []  # the runs are automation's business
        apply_partition_requests(instance, second)
        assert set(instance.get_dynamic_partitions("models")) == {"sim_strong", "sim_medium", "sim_weak"}

        # the new model's 2 datasets x 7 per-pair assets, in one tick, and nothing else
        tick2 = evaluate(defs, instance, tick1)
        assert requested(tick2) == every_pair(["sim_weak"])
        assert tick2.total_requested == 2 * len(PAIR_ASSETS)

        # The leaderboard cannot run in the same run as partitioned metrics (Dagster's will_be_requested
        # only counts parents executable in the same run), so it follows on the tick after they landed.
        materialise(instance, PAIR_ASSETS, pair_keys(["sim_weak"]))
        tick3 = evaluate(defs, instance, tick2)
        assert requested(tick3) == {"leaderboard": {None}}

        materialise(instance, ["leaderboard"], [None])
        assert requested(evaluate(defs, instance, tick3)) == {}


@pytest.mark.parametrize("state", ["everything", "inputs only", "nothing"])
def test_first_evaluation_with_two_registered_models(deployment: Deployment, state: str):
    """The automation sensor's first tick on an instance where the two models' partitions already exist
    (the model sensor ticked first). Partitions missing at that first evaluation count as newly missing
    (``defs.automation.MISSING_CONDITION``), so they are requested once, as a partition added later is:

    * everything materialised: nothing to do;
    * dataset tables and settings materialised, no pair yet: the 4 pairs' descriptions; the stages below
      follow on later ticks (``eager()`` does not fire on its own first evaluation);
    * nothing materialised: the dataset tables (both partitions); descriptions wait for them.
    """
    defs = deployment.definitions()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", list(MODELS))
        if state != "nothing":
            materialise_inputs(instance)
        if state == "everything":
            materialise(instance, PAIR_ASSETS, pair_keys(MODELS))
            materialise(instance, ["leaderboard"], [None])
        tick1 = evaluate(defs, instance)
        expected = {
            "everything": {},
            "inputs only": {"descriptions": set(pair_keys(MODELS))},
            "nothing": {"dataset_images": set(DATASETS), "ground_truth": set(DATASETS)},
        }[state]
        assert requested(tick1) == expected
        # requested once: nothing is requested again while those runs are going (or after they failed)
        tick2 = evaluate(defs, instance, tick1)
        assert requested(tick2) == {}
        if state == "inputs only":
            # the descriptions landed: the stages below follow, pair by pair, down to the metrics
            materialise(instance, ["descriptions"], pair_keys(MODELS))
            tick3 = evaluate(defs, instance, tick2)
            assert requested(tick3) == every_pair(MODELS, PAIR_ASSETS[1:])
        if state == "nothing":
            # the dataset tables landed (and the settings sensor's runs): every pair, in one tick
            materialise_inputs(instance)
            tick3 = evaluate(defs, instance, tick2)
            assert requested(tick3) == every_pair(MODELS)


def _leaderboard_after_one_pair_failed(defs: dg.Definitions) -> dict:
    """Two models, every pair materialised except coco|sim_medium's metrics (its run failed); then one
    pair is refreshed. What does the next tick request?"""
    failed = "coco|sim_medium"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", list(MODELS))
        materialise_inputs(instance)
        materialise(instance, PAIR_ASSETS[:-1], pair_keys(MODELS))
        materialise(instance, ["metrics"], [k for k in pair_keys(MODELS) if k != failed])
        materialise(instance, ["leaderboard"], [None])
        tick1 = evaluate(defs, instance)
        assert requested(tick1) == {}
        materialise(instance, ["metrics"], ["vlm_gist|sim_strong"])
        return requested(evaluate(defs, instance, tick1))


def test_a_failed_pair_does_not_block_the_leaderboard(deployment: Deployment):
    assert _leaderboard_after_one_pair_failed(deployment.definitions()) == {"leaderboard": {None}}


def test_with_plain_eager_the_failed_pair_would_block_the_leaderboard(deployment: Deployment):
    """The control for the test above: ``eager()`` waits for every metrics partition, which is why the
    leaderboard's condition drops ``~any_deps_missing()``."""
    eager = leaderboard.map_asset_specs(
        lambda spec: spec.replace_attributes(automation_condition=dg.AutomationCondition.eager())
    )
    assets = [eager if a is leaderboard else a for a in build_definitions().assets]
    defs = dg.Definitions(assets=assets, resources=deployment.definitions().resources)
    assert _leaderboard_after_one_pair_failed(defs) == {}


def test_changed_detection_settings_recompute_detections_and_below_not_descriptions(deployment: Deployment):
    """settings_sensor sees the edited detection.json and requests ``detection_settings``; once that run
    materialised it, automation requests the six stages below the descriptions for every pair (not the
    VLM calls of the descriptions), then the leaderboard."""
    from vlm_gist_dagster.defs.sensors import settings_sensor

    for model in MODELS:
        deployment.add_model(model)
    defs = deployment.definitions()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", list(MODELS))
        materialise_inputs(instance)
        materialise(instance, PAIR_ASSETS, pair_keys(MODELS))
        materialise(instance, ["leaderboard"], [None])
        tick1 = evaluate(defs, instance)
        assert requested(tick1) == {}
        resources = {k: deployment.resources()[k] for k in ("settings", "models")}
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            first = settings_sensor(context)
        for event in first.asset_events:  # as the daemon records them
            instance.report_runless_asset_event(event)

        path = deployment.settings_dir / "detection" / "detection.json"
        settings = json.loads(path.read_text())
        settings["conf_threshold"] = 0.25
        path.write_text(json.dumps(settings, indent=2))
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = settings_sensor(context)
        assert [(r.asset_selection, r.partition_key) for r in result.run_requests] == [
            ([dg.AssetKey("detection_settings")], None)
        ]
        assert dg.materialize(
            [detection_settings], instance=instance, resources=deployment.resources()
        ).success

        tick2 = evaluate(defs, instance, tick1)
        assert requested(tick2) == every_pair(MODELS, PAIR_ASSETS[1:])  # 6 assets x 4 pairs, no descriptions
        materialise(instance, PAIR_ASSETS[1:], pair_keys(MODELS))
        assert requested(evaluate(defs, instance, tick2)) == {"leaderboard": {None}}


def test_changed_label_matching_settings_recompute_that_dataset_s_matches_and_metrics(deployment: Deployment):
    """A new ``label_matching/coco.json`` re-materialises ``label_matching_settings[coco]``: automation then
    requests label_matches and metrics of the COCO pairs only (the per-dataset settings map to the pairs
    of that dataset)."""
    defs = deployment.definitions()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", list(MODELS))
        materialise_inputs(instance)
        materialise(instance, PAIR_ASSETS, pair_keys(MODELS))
        tick1 = evaluate(defs, instance)
        assert requested(tick1) == {}
        result = dg.materialize(
            [label_matching_settings],
            partition_key="coco",
            instance=instance,
            resources=deployment.resources(),
        )
        assert result.success
        tick2 = evaluate(defs, instance, tick1)
        assert requested(tick2) == every_pair(MODELS, ("label_matches", "metrics"), ["coco"])
