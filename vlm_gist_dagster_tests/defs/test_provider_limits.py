"""Per-provider limits (``orchestration/policies.py``): the pools of the API steps whose provider the settings fix,
and the run tag ``vlm_gist/provider`` on every pair run the project requests.

Expected pool names and tag values are spelt out here from the settings files' endpoint names, not
computed with the code under test.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import yaml

from vlm_gist_dagster.defs.jobs import pair_provider_tags
from vlm_gist_dagster.defs.label_matches import label_matching_pool
from vlm_gist_dagster.defs.resources import ModelsResource, SettingsResource
from vlm_gist_dagster.defs.sensors import settings_sensor
from vlm_gist_dagster.defs.validations import validation_pool
from vlm_gist_dagster.orchestration.policies import PROVIDER_TAG

from ..deployment import Deployment, pair_keys
from .conftest import apply_partition_requests, tick_model_sensor

REPO = Path(__file__).resolve().parents[2]


def set_description_endpoint(path: Path, endpoint) -> None:
    data = json.loads(path.read_text())
    data["vlm_structured_description"]["api_endpoint"] = endpoint
    path.write_text(json.dumps(data, indent=4))


def set_llm_endpoint(path: Path, block: str, endpoint) -> None:
    data = json.loads(path.read_text())
    data[block]["api_endpoint"] = endpoint
    path.write_text(json.dumps(data, indent=4))


# ------------------------------------------------------------------------------------------ run tags


def test_model_sensor_runs_carry_the_provider_of_the_model_file(deployment: Deployment):
    strong = deployment.add_model("sim_strong")
    set_description_endpoint(strong, "Mistral AI")
    medium = deployment.add_model("sim_medium")  # the simulator's endpoint dict
    with dg.instance_for_test() as instance:
        first = tick_model_sensor(deployment, instance)
        apply_partition_requests(instance, first)
        set_description_endpoint(strong, "OpenRouter")  # an edit: its pairs are requested again
        data = json.loads(medium.read_text())
        data["model"]["display_name"] = "Sim medium v2"
        medium.write_text(json.dumps(data, indent=4))
        result = tick_model_sensor(deployment, instance, first.cursor)
    tags = {r.partition_key: r.tags.get(PROVIDER_TAG) for r in result.run_requests or []}
    assert tags == {
        "coco|sim_strong": "openrouter",
        "vlm_gist|sim_strong": "openrouter",
        "coco|sim_medium": "vlm-gist-simulator",
        "vlm_gist|sim_medium": "vlm-gist-simulator",
    }


def test_nightly_schedule_runs_carry_the_provider(deployment: Deployment):
    from vlm_gist_dagster.defs.schedules import nightly_benchmark_schedule

    set_description_endpoint(deployment.add_model("sim_strong"), "Mistral AI")
    deployment.add_model("sim_florence_od")  # a baseline calls no VLM API: no provider tag
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", ["sim_strong", "sim_florence_od"])
        with dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime(2026, 1, 2, 2, 0, tzinfo=UTC),
            resources={"models": deployment.resources()["models"]},
        ) as context:
            requests = nightly_benchmark_schedule(context)
    assert isinstance(requests, list)
    tags = {r.partition_key: r.tags.get(PROVIDER_TAG) for r in requests}
    assert tags == {
        "coco|sim_strong": "mistral-ai",
        "vlm_gist|sim_strong": "mistral-ai",
        "coco|sim_florence_od": None,
        "vlm_gist|sim_florence_od": None,
    }


def test_validation_sensor_runs_carry_the_provider(deployment: Deployment):
    path = deployment.add_model("sim_strong")
    data = json.loads(path.read_text())
    data["model"]["validation"] = True
    path.write_text(json.dumps(data, indent=4))
    set_description_endpoint(path, "OpenAI")
    resources = {"settings": deployment.resources()["settings"], "models": deployment.resources()["models"]}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", ["sim_strong"])

        def tick():
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                result = settings_sensor(context)
            for event in result.asset_events:
                instance.report_runless_asset_event(event)
            return result

        tick()  # records every file's version
        validation_file = deployment.settings_dir / "validation" / "validation.json"
        settings = json.loads(validation_file.read_text())
        settings["bbox_scale"] = 1.5
        validation_file.write_text(json.dumps(settings, indent=2))
        result = tick()
    validation_runs = [r for r in result.run_requests if r.tags.get("vlm_gist/model") == "sim_strong"]
    assert sorted(r.partition_key for r in validation_runs) == sorted(pair_keys(["sim_strong"]))
    assert {r.tags.get(PROVIDER_TAG) for r in validation_runs} == {"openai"}


def test_pair_job_tags_every_partition_with_its_provider(deployment: Deployment):
    """The pair job's partitioned config: UI launches, job backfills and ``vlm-gist run`` (in process)
    carry the tag; the models folder is the one the environment configures (the deployment's)."""
    from vlm_gist_dagster.definitions import build_definitions

    set_description_endpoint(deployment.add_model("sim_strong"), "OpenAI")
    deployment.add_model("sim_florence_od")
    with deployment.activated():
        assert pair_provider_tags("coco|sim_strong") == {PROVIDER_TAG: "openai"}
        assert pair_provider_tags("coco|sim_florence_od") == {}
        assert pair_provider_tags("coco|no_such_model") == {}  # never fails a launch
        job = build_definitions().resolve_job_def("benchmark_pair_job")
        assert job.get_tags_for_partition_key("vlm_gist|sim_strong", None)[PROVIDER_TAG] == "openai"


def test_a_model_file_that_cannot_be_read_gets_no_tag(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    assert ModelsResource(models_dir=str(tmp_path)).provider_tags("broken") == {}


# --------------------------------------------------------------------------------------------- pools


def test_project_pools_follow_the_settings_files():
    """With the project's settings: label matching calls OpenAI (settings/label_matching/*.json),
    validation OpenRouter (settings/validation/validation.json)."""
    from vlm_gist_dagster.definitions import build_definitions

    for dataset in ("coco", "vlm_gist"):
        llm = json.loads((REPO / "settings" / "label_matching" / f"{dataset}.json").read_text())["llm"]
        assert llm["api_endpoint"] == "OpenAI"
    vlm = json.loads((REPO / "settings" / "validation" / "validation.json").read_text())["vlm"]
    assert vlm["api_endpoint"] == "OpenRouter"
    defs = build_definitions()
    pools = {
        a: defs.resolve_assets_def(a).node_def.pool for a in ("descriptions", "label_matches", "validations")
    }
    assert pools == {
        "descriptions": "vlm_api",
        "label_matches": "vlm_api/openai",
        "validations": "vlm_api/openrouter",
    }


def test_pools_from_other_settings(tmp_path, deployment: Deployment):
    settings = SettingsResource(settings_dir=str(deployment.settings_dir))
    lm = deployment.settings_dir / "label_matching"
    for dataset in ("coco", "vlm_gist"):
        set_llm_endpoint(lm / f"{dataset}.json", "llm", "Mistral AI")
    set_llm_endpoint(deployment.settings_dir / "validation" / "validation.json", "vlm", "vLLM")
    assert label_matching_pool(settings) == "vlm_api/mistral-ai"
    assert validation_pool(settings) == "vlm_api/vllm"
    # the datasets disagree: one step cannot be in two pools, it stays in the shared one
    set_llm_endpoint(lm / "coco.json", "llm", "OpenAI")
    assert label_matching_pool(settings) == "vlm_api"
    # unreadable settings: the shared pool (the step reports the file when it runs)
    (lm / "coco.json").write_text("{")
    (deployment.settings_dir / "validation" / "validation.json").write_text("[]")
    assert label_matching_pool(settings) == "vlm_api"
    assert validation_pool(settings) == "vlm_api"


# ------------------------------------------------------------------------------------------- deploy


def test_every_instance_config_limits_runs_per_provider():
    helm = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    configs = [
        yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text()),
        yaml.safe_load((REPO / "deploy" / "docker" / "dagster.yaml").read_text()),
        helm["additionalInstanceConfig"],
    ]
    for config in configs:
        limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
        provider = [limit for limit in limits if limit["key"] == PROVIDER_TAG]
        assert provider == [{"key": PROVIDER_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 3}]
