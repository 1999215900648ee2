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

    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("datasets_job") is not None


def test_dg_check_defs_passes():
    dg_bin = Path(sys.executable).with_name("dg")
    result = subprocess.run([str(dg_bin), "check", "defs"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_materialise_both_dataset_partitions(tmp_path, vlm_gist_dataset, coco_dataset):
    resources = {"io_manager": ParquetIOManagerFactory(base_path=str(tmp_path)), "datasets": DatasetsResource()}
    with dg.instance_for_test() as instance:
        for name, expected in (("vlm_gist", vlm_gist_dataset), ("coco", coco_dataset)):
            result = dg.materialize([dataset_tables], partition_key=name, instance=instance, resources=resources)
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
