"""The class names a ``sam3_classes`` baseline prompts SAM 3 with, read through the settings resource.

``dataset_class_names`` once called the ``label_matching_settings_file`` asset spec as if it were the old
path function (found by mypy: "AssetSpec" not callable), so every ``sim_sam3_classes`` detections run failed.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd

from vlm_gist_dagster.defs.grounding import dataset_class_names
from vlm_gist_dagster.defs.resources import SettingsResource
from vlm_gist_dagster.protocol.settings import load_model_settings

from ..conftest import COCO_DIR, REPO

MODELS = REPO / "settings" / "models"


def _no_datasets(name: str):
    raise AssertionError(f"dataset {name!r} should not be loaded")


def test_coco_prompts_the_80_coco_categories():
    model = load_model_settings(MODELS / "sim_sam3_classes.json")
    settings = SettingsResource(settings_dir=str(REPO / "settings"))
    categories = json.loads((COCO_DIR / "labels.json").read_text())["categories"]
    expected = {c["name"] for c in categories}
    assert len(expected) == 80
    names = dataset_class_names("coco", model, SimpleNamespace(load=_no_datasets), settings)
    assert names is not None and len(names) == 80  # in the label-matching settings' order, each once
    assert set(names) == expected


def test_a_per_image_dataset_prompts_its_ground_truth_vocabulary(tmp_path):
    (tmp_path / "label_matching").mkdir()
    (tmp_path / "label_matching" / "mine.json").write_text(
        json.dumps({"use_per_set_targets": True, "dataset_targets": [], "augmented_targets": []})
    )
    model = load_model_settings(MODELS / "sim_sam3_classes.json")
    dataset = SimpleNamespace(ground_truth=pd.DataFrame({"label": ["red mug", "apple", "red mug"]}))
    datasets = SimpleNamespace(load=lambda name: dataset)
    names = dataset_class_names("mine", model, datasets, SettingsResource(settings_dir=str(tmp_path)))
    assert names == ["apple", "red mug"]


def test_other_models_prompt_no_classes():
    settings = SettingsResource(settings_dir=str(REPO / "settings"))
    model = load_model_settings(MODELS / "sim_strong.json")
    assert dataset_class_names("coco", model, SimpleNamespace(load=_no_datasets), settings) is None
