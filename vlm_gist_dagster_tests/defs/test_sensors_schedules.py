"""The sensors and the nightly schedule, called directly with Dagster's test contexts
(``build_sensor_context`` / ``build_schedule_context``) on a temp models / settings folder.

* ``model_settings_sensor``: a new file adds its partition (no runs: automation computes it); an edited
  file requests its two pairs with a run key no earlier change used; a bad file name is reported and
  skipped; the paper's 47 description settings files become 47 partitions.
* ``settings_sensor``: every settings file once, then only changed ones, each change with a new run key.
* ``nightly_benchmark_schedule``: missing pairs and pairs whose model file changed since their
  descriptions, one run each, idempotent run keys per night; a skip when everything is up to date.

Dagster launches at most one run per run key and sensor (or schedule): two different changes must never
share one, or the second is silently dropped by the daemon.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

import dagster as dg
import pytest

from vlm_gist_dagster.defs.partitions import model_dataset_partitions, validate_model_key
from vlm_gist_dagster.defs.resources import ModelsResource
from vlm_gist_dagster.defs.schedules import nightly_benchmark_schedule
from vlm_gist_dagster.defs.sensors import settings_sensor
from vlm_gist_dagster.defs.settings_assets import detection_settings, label_matching_settings
from vlm_gist_dagster.model_registry import discover_models
from vlm_gist_dagster.orchestration.metadata import SETTINGS_SHA_KEY

from ..deployment import DATASETS, PAIR_ASSETS, Deployment, pair_keys
from .conftest import apply_partition_requests, tick_model_sensor

NIGHT = datetime(2026, 1, 2, 2, 0, tzinfo=UTC)


def edit(path, **header) -> None:
    """Change a model file's ``model`` header (its content hash changes, the model stays valid)."""
    settings = json.loads(path.read_text())
    settings["model"].update(header)
    path.write_text(json.dumps(settings, indent=4))


# ---------------------------------------------------------------------------------------- model sensor


def test_new_model_file_adds_its_partition_once(deployment: Deployment):
    deployment.add_model("sim_strong")
    with dg.instance_for_test() as instance:
        first = tick_model_sensor(deployment, instance)
        assert [(r.partitions_def_name, r.partition_keys) for r in first.dynamic_partitions_requests] == [
            ("models", ["sim_strong"])
        ]
        assert first.run_requests == []
        apply_partition_requests(instance, first)
        # nothing new: no request, and the cursor is kept
        again = tick_model_sensor(deployment, instance, first.cursor)
        assert again.dynamic_partitions_requests == [] and again.run_requests == []
        assert again.skip_reason is not None
        deployment.add_model("sim_medium")
        third = tick_model_sensor(deployment, instance, again.cursor)
        assert [r.partition_keys for r in third.dynamic_partitions_requests] == [["sim_medium"]]
        apply_partition_requests(instance, third)
        keys = model_dataset_partitions.get_partition_keys(dynamic_partitions_store=instance)
        assert sorted(map(str, keys)) == sorted(pair_keys(["sim_medium", "sim_strong"]))


def test_edited_model_file_requests_its_pairs(deployment: Deployment):
    path = deployment.add_model("sim_strong")
    deployment.add_model("sim_medium")
    with dg.instance_for_test() as instance:
        first = tick_model_sensor(deployment, instance)
        apply_partition_requests(instance, first)
        edit(path, display_name="Sim strong v2 (simulated)")
        result = tick_model_sensor(deployment, instance, first.cursor)
        assert result.dynamic_partitions_requests == []
        assert sorted(r.partition_key for r in result.run_requests) == sorted(pair_keys(["sim_strong"]))
        for request in result.run_requests:
            assert request.asset_selection == [dg.AssetKey(a) for a in PAIR_ASSETS]
            assert request.tags["vlm_gist/model"] == "sim_strong"
        assert len({r.run_key for r in result.run_requests}) == 2
        # acted on once
        assert tick_model_sensor(deployment, instance, result.cursor).run_requests == []


def test_every_edit_of_a_model_file_gets_a_new_run_key(deployment: Deployment):
    """A -> B -> A -> B: three changes, three pairs of run keys. Keys made of the file's hash alone repeat
    for the third change, which the daemon would then drop (the pairs would keep A's results)."""
    path = deployment.add_model("sim_strong")
    original = path.read_text()
    with dg.instance_for_test() as instance:
        tick = tick_model_sensor(deployment, instance)
        apply_partition_requests(instance, tick)
        keys = []
        for content in ("edited", original, "edited"):
            if content == "edited":
                edit(path, display_name="Sim strong v2 (simulated)")
            else:
                path.write_text(content)
            tick = tick_model_sensor(deployment, instance, tick.cursor)
            assert len(tick.run_requests) == 2
            keys.extend(r.run_key for r in tick.run_requests)
        assert len(set(keys)) == 6, keys
        # the same tick evaluated twice (e.g. a retried tick) gives the same keys: still idempotent
        path.write_text(original)
        retried = [tick_model_sensor(deployment, instance, tick.cursor) for _ in range(2)]
        assert [r.run_key for r in retried[0].run_requests] == [r.run_key for r in retried[1].run_requests]


def test_bad_model_file_name_is_reported_not_fatal(deployment: Deployment, capfd):
    deployment.add_model("sim_strong")
    deployment.add_model("sim_medium", as_name="Sim Medium")  # upper case and a space: not a valid key
    with dg.instance_for_test() as instance:
        result = tick_model_sensor(deployment, instance)
    assert [r.partition_keys for r in result.dynamic_partitions_requests] == [["sim_strong"]]
    logged = capfd.readouterr().err  # the sensor's log (shown on its tick in the UI)
    assert "WARNING" in logged and "Sim Medium.json" in logged and "rename the file" in logged


def test_the_paper_s_47_description_settings_files_become_47_partitions(
    deployment: Deployment, reference_settings_dir
):
    files = sorted((reference_settings_dir / "description").glob("*.json"))
    assert len(files) == 47
    for path in files:
        shutil.copyfile(path, deployment.models_dir / path.name)
    # by hand: the file stem without the paper's prefix, lower-cased
    expected = sorted(p.stem.removeprefix("description_settings_").lower() for p in files)
    assert "qwen_3_vl_235b_a22b_none" in expected and "grok_4" in expected
    with dg.instance_for_test() as instance:
        result = tick_model_sensor(deployment, instance)
        assert [sorted(r.partition_keys) for r in result.dynamic_partitions_requests] == [expected]
        apply_partition_requests(instance, result)
        assert sorted(instance.get_dynamic_partitions("models")) == expected
        keys = model_dataset_partitions.get_partition_keys(dynamic_partitions_store=instance)
        assert len(keys) == 47 * len(DATASETS)
    models = ModelsResource(models_dir=str(deployment.models_dir))
    for key in expected:
        validate_model_key(key)
        model_file, settings = models.load(key)  # every file resolves and parses as a model
        assert model_file.key == key and settings.kind == "vlm" and not settings.simulated


# ------------------------------------------------------------------------------------- settings sensor


def settings_tick(deployment: Deployment, instance) -> dg.SensorResult:
    """One tick of ``settings_sensor``, its settings-file versions recorded in ``instance`` as the daemon
    records a sensor's asset events (the sensor keeps no cursor: the instance is its memory)."""
    resources = {k: deployment.resources()[k] for k in ("settings", "models")}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = settings_sensor(context)
    assert isinstance(result, dg.SensorResult), result
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def requests_of(result: dg.SensorResult) -> list[tuple[str, str | None]]:
    return sorted((r.asset_selection[0].to_user_string(), r.partition_key) for r in result.run_requests)


def test_settings_sensor_requests_each_changed_settings_file_once(deployment: Deployment):
    with dg.instance_for_test() as instance:
        first = settings_tick(deployment, instance)
        assert requests_of(first) == [
            ("detection_settings", None),
            ("label_matching_settings", "coco"),
            ("label_matching_settings", "vlm_gist"),
        ]
        assert settings_tick(deployment, instance).run_requests == []
        coco = deployment.settings_dir / "label_matching" / "coco.json"
        settings = json.loads(coco.read_text())
        settings["levenshtein_threshold"] = 1
        coco.write_text(json.dumps(settings, indent=2))
        second = settings_tick(deployment, instance)
        assert requests_of(second) == [("label_matching_settings", "coco")]
        assert settings_tick(deployment, instance).run_requests == []


def test_settings_sensor_skips_files_whose_content_is_already_materialised(deployment: Deployment):
    """The first tick on an instance where ``vlm-gist run`` already materialised the settings (e.g.
    ``vlm-gist dev`` started afterwards) requests only what is missing or different: re-materialising an
    unchanged settings file would make automation recompute six stages of every pair."""
    io_manager = {k: deployment.resources()[k] for k in ("io_manager", "settings")}
    with dg.instance_for_test() as instance:
        assert dg.materialize([detection_settings], instance=instance, resources=io_manager).success
        result = dg.materialize(
            [label_matching_settings], partition_key="coco", instance=instance, resources=io_manager
        )
        assert result.success
        first = settings_tick(deployment, instance)
        assert requests_of(first) == [("label_matching_settings", "vlm_gist")]
        # a later change is still acted on
        path = deployment.settings_dir / "detection" / "detection.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "conf_threshold": 0.25}, indent=2))
        assert requests_of(settings_tick(deployment, instance)) == [("detection_settings", None)]


def test_settings_sensor_run_keys_differ_for_every_change(deployment: Deployment):
    """detection.json A -> B -> A -> B: every change is a new run key (see the module docstring)."""
    path = deployment.settings_dir / "detection" / "detection.json"
    original = json.loads(path.read_text())
    with dg.instance_for_test() as instance:
        tick = settings_tick(deployment, instance)
        detection = dg.AssetKey("detection_settings")
        keys = [r.run_key for r in tick.run_requests if r.asset_selection == [detection]]
        for threshold in (0.25, original["conf_threshold"], 0.25):
            path.write_text(json.dumps({**original, "conf_threshold": threshold}, indent=2))
            tick = settings_tick(deployment, instance)
            assert requests_of(tick) == [("detection_settings", None)]
            keys.append(tick.run_requests[0].run_key)
        assert len(set(keys)) == 4, keys


def test_settings_sensor_reports_a_missing_file_and_goes_on(deployment: Deployment, capfd):
    (deployment.settings_dir / "label_matching" / "coco.json").unlink()
    with dg.instance_for_test() as instance:
        result = settings_tick(deployment, instance)
    assert requests_of(result) == [("detection_settings", None), ("label_matching_settings", "vlm_gist")]
    assert "coco.json: settings file is missing" in capfd.readouterr().err


# ---------------------------------------------------------------------------------------------- schedule


def materialise_pair(instance, key: str, settings_sha: str) -> None:
    """A finished pair: its descriptions record the model file's hash (as ``descriptions`` does)."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization("descriptions", partition=key, metadata={SETTINGS_SHA_KEY: settings_sha})
    )
    for asset in PAIR_ASSETS[1:]:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=key))


def nightly(deployment: Deployment, instance, when: datetime = NIGHT):
    # As a context manager: a schedule context with resources opens its own instance from the given
    # one's ref, and only closes it (and Dagster's current defs-state storage) on exit.
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=when,
        resources={"models": deployment.resources()["models"]},
    ) as context:
        return nightly_benchmark_schedule(context)


def test_nightly_schedule_requests_missing_and_stale_pairs(deployment: Deployment):
    strong = deployment.add_model("sim_strong")
    deployment.add_model("sim_medium")
    sha = {m.key: m.sha256 for m in discover_models(deployment.models_dir)[0]}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", ["sim_strong", "sim_medium"])
        for key in pair_keys(["sim_strong", "sim_medium"]):
            if key != "coco|sim_medium":  # that pair failed last time: no metrics
                materialise_pair(instance, key, sha[key.split("|")[1]])
        edit(strong, display_name="Sim strong v2 (simulated)")  # changed after its pairs were made

        requests = nightly(deployment, instance)
        by_key = {r.partition_key: r for r in requests}
        assert sorted(by_key) == sorted(["coco|sim_medium", "coco|sim_strong", "vlm_gist|sim_strong"])
        assert by_key["coco|sim_medium"].tags["vlm_gist/reason"] == "missing"
        assert by_key["coco|sim_strong"].tags["vlm_gist/reason"] == "settings changed"
        assert by_key["vlm_gist|sim_strong"].tags["vlm_gist/reason"] == "settings changed"
        assert {r.run_key for r in requests} == {f"nightly:2026-01-02:{k}" for k in by_key}
        # idempotent: the same night gives the same run keys; the next night new ones
        assert [r.run_key for r in nightly(deployment, instance)] == [r.run_key for r in requests]
        tomorrow = nightly(deployment, instance, datetime(2026, 1, 3, 2, 0, tzinfo=UTC))
        assert {r.run_key for r in tomorrow} == {f"nightly:2026-01-03:{k}" for k in by_key}

        # the runs went through: the pairs record the new hash, nothing is left to do
        new_sha = {m.key: m.sha256 for m in discover_models(deployment.models_dir)[0]}
        for key in by_key:
            materialise_pair(instance, key, new_sha[key.split("|")[1]])
        skip = nightly(deployment, instance)
        assert isinstance(skip, dg.SkipReason)


def test_nightly_schedule_leaves_retired_models_alone(deployment: Deployment):
    """A model whose settings file was removed keeps its partitions and history but is not re-run."""
    deployment.add_model("sim_strong")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", ["sim_strong", "retired_model"])
        for key in pair_keys(["sim_strong"]):
            materialise_pair(instance, key, discover_models(deployment.models_dir)[0][0].sha256)
        assert isinstance(nightly(deployment, instance), dg.SkipReason)


@pytest.mark.parametrize("target", ["sensor", "schedule"])
def test_sensor_and_schedule_read_the_models_resource_folder(deployment: Deployment, tmp_path, target: str):
    """Configured with ``ModelsResource(models_dir=...)``, the sensor and the schedule read that folder,
    like the assets, not ``$VLM_GIST_MODELS_DIR`` (here pointing at an empty folder)."""
    other = tmp_path / "configured_models"
    other.mkdir()
    shutil.copyfile(deployment.add_model("sim_strong"), other / "sim_strong.json")
    for path in deployment.models_dir.iterdir():
        path.unlink()
    resources = {"models": ModelsResource(models_dir=str(other))}
    # $VLM_GIST_MODELS_DIR points at the deployment's (empty) models folder
    with deployment.activated(), dg.instance_for_test() as instance:
        if target == "sensor":
            from vlm_gist_dagster.defs.sensors import model_settings_sensor

            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                result = model_settings_sensor(context)
            assert [r.partition_keys for r in result.dynamic_partitions_requests] == [["sim_strong"]]
        else:
            instance.add_dynamic_partitions("models", ["sim_strong"])
            with dg.build_schedule_context(
                instance=instance, scheduled_execution_time=NIGHT, resources=resources
            ) as context:
                requests = nightly_benchmark_schedule(context)
            assert sorted(r.partition_key for r in requests) == sorted(pair_keys(["sim_strong"]))
