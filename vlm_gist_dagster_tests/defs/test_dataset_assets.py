"""Materialising the dataset assets through Dagster writes Parquet files that reload equal."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd

from vlm_gist_dagster.defs.datasets import dataset_tables
from vlm_gist_dagster.defs.io_manager import ParquetIOManagerFactory, read_parquet
from vlm_gist_dagster.defs.resources import DatasetsResource

REPO = Path(__file__).resolve().parents[2]


def test_definitions_load_and_validate():
    from vlm_gist_dagster.definitions import defs

    loaded = defs()  # the @dg.definitions entry point, as dg and dagster dev call it
    dg.Definitions.validate_loadable(loaded)
    assert loaded.resolve_job_def("datasets_job") is not None


def test_one_entry_point_for_dg_dagster_dev_and_the_workspace():
    """``dg`` ([tool.dg.project]), ``dagster dev`` ([tool.dagster]) and workspace.yaml name the same module,
    and that module's definitions are everything under defs/ (found by load_from_defs_folder, with no
    list to keep in sync): every asset, job, sensor and schedule the benchmark has."""
    import tomllib

    import yaml

    from vlm_gist_dagster.definitions import build_definitions

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    assert pyproject["tool"]["dg"]["project"]["code_location_target_module"] == "vlm_gist_dagster.definitions"
    assert pyproject["tool"]["dagster"]["module_name"] == "vlm_gist_dagster.definitions"
    assert [entry["python_module"]["module_name"] for entry in workspace["load_from"]] == [
        "vlm_gist_dagster.definitions"
    ]
    loaded = build_definitions()
    assert sorted(k.to_user_string() for k in loaded.resolve_all_asset_keys()) == [
        "dataset_images",
        "descriptions",
        "detection_images",
        "detection_settings",
        "detection_settings_file",
        "detections",
        "ground_truth",
        "label_matches",
        "label_matching_settings",
        "label_matching_settings_file",
        "leaderboard",
        "masks",
        "metrics",
        "model_settings_file",
        "prices_file",
        "review_dataset",
        "validation_settings_file",
        "validations",
    ]
    assert sorted(s.name for s in loaded.sensors) == [
        "benchmark_automation_sensor",
        "model_settings_sensor",
        "settings_sensor",
    ]
    assert [s.name for s in loaded.schedules] == ["nightly_benchmark_schedule"]
    assert sorted(j.name for j in loaded.jobs) == [
        "benchmark_pair_job",
        "datasets_job",
        "leaderboard_job",
        "settings_job",
    ]
    assert sorted(loaded.resources) == ["datasets", "io_manager", "models", "services", "settings"]


def test_pair_selection_is_the_per_pair_stages():
    """The one exported selection of the per-(dataset, model) stages is what the pair job, the model
    sensor and the nightly schedule target: every asset on the (dataset, model) partitions, in graph order."""
    from vlm_gist_dagster.definitions import build_definitions
    from vlm_gist_dagster.defs.partitions import model_dataset_partitions
    from vlm_gist_dagster.defs.selections import PAIR_ASSET_KEYS, PAIR_SELECTION

    loaded = build_definitions()
    graph = loaded.resolve_asset_graph()
    pair_partitioned = {
        key for key in graph.get_all_asset_keys() if graph.get(key).partitions_def == model_dataset_partitions
    }
    assert PAIR_SELECTION.resolve(graph) == pair_partitioned == set(PAIR_ASSET_KEYS)
    assert [k.to_user_string() for k in PAIR_ASSET_KEYS] == [
        "descriptions",
        "detections",
        "detection_images",
        "masks",
        "validations",
        "label_matches",
        "metrics",
    ]
    schedule_job = loaded.resolve_schedule_def("nightly_benchmark_schedule").job_name
    for job in ("benchmark_pair_job", schedule_job):
        assert set(loaded.resolve_job_def(job).asset_layer.selected_asset_keys) == pair_partitioned
    sensor = loaded.resolve_sensor_def("model_settings_sensor")
    assert sensor.asset_selection.resolve(graph) == pair_partitioned


def test_dg_check_defs_passes():
    dg_bin = Path(sys.executable).with_name("dg")
    result = subprocess.run(
        [str(dg_bin), "check", "defs"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_materialise_both_dataset_partitions(tmp_path, vlm_gist_dataset, coco_dataset):
    resources = {
        "io_manager": ParquetIOManagerFactory(base_path=str(tmp_path)),
        "datasets": DatasetsResource(),
    }
    with dg.instance_for_test() as instance:
        for name, expected in (("vlm_gist", vlm_gist_dataset), ("coco", coco_dataset)):
            result = dg.materialize(
                [dataset_tables], partition_key=name, instance=instance, resources=resources
            )
            assert result.success
            images = read_parquet(tmp_path / "dataset_images" / f"{name}.parquet")
            gt = read_parquet(tmp_path / "ground_truth" / f"{name}.parquet")
            pd.testing.assert_frame_equal(images, expected.images, check_dtype=False)
            pd.testing.assert_frame_equal(gt, expected.ground_truth, check_dtype=False)
            assert gt["mask"].tolist() == expected.ground_truth["mask"].tolist()
            events = {
                mat.asset_key.to_user_string(): mat.metadata
                for mat in result.asset_materializations_for_node("dataset_tables")
            }
            assert events["dataset_images"]["dagster/row_count"].value == len(expected.images)
            assert events["ground_truth"]["dagster/row_count"].value == len(expected.ground_truth)
        meta = events["ground_truth"]  # coco
        assert meta["instances_per_image_min"].value >= 0
        assert meta["crowd"].value == 0
