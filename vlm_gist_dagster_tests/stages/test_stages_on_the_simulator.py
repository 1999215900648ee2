"""Stages A-D for one pair as plain functions (``stages``), against the simulator in this process: no
Dagster instance, no assets. Each test checks a stage's table against its spec (``stages.tables``) and
the rules of the paper that tie its columns together, computed here by hand from the table itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vlm_gist_dagster.clients.chat import endpoint_env_var
from vlm_gist_dagster.protocol.detection import missing_and_over_detections
from vlm_gist_dagster.protocol.detections import Detections
from vlm_gist_dagster.protocol.endpoints import ENDPOINTS
from vlm_gist_dagster.protocol.masks import decode_rle
from vlm_gist_dagster.protocol.settings import (
    COCO_TARGETS,
    load_detection_settings,
    load_label_matching_settings,
    load_model_settings,
    load_validation_settings,
)
from vlm_gist_dagster.sim import SERVER_NAMES, run_simulator
from vlm_gist_dagster.stages.descriptions import run_descriptions
from vlm_gist_dagster.stages.grounding import run_detections, run_masks
from vlm_gist_dagster.stages.label_matching import run_label_matches
from vlm_gist_dagster.stages.services import Services
from vlm_gist_dagster.stages.tables import (
    DESCRIPTIONS,
    DETECTION_IMAGES,
    DETECTIONS,
    LABEL_MATCHES,
    MASKS,
    VALIDATIONS,
)
from vlm_gist_dagster.stages.validation import run_validations

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "settings"
KEY = "stage-test-key"
N_IMAGES = 6


@pytest.fixture(scope="module")
def coco(coco_dataset):
    images = coco_dataset.images.head(N_IMAGES).reset_index(drop=True)
    ground_truth = coco_dataset.ground_truth[coco_dataset.ground_truth["image_id"].isin(images["image_id"])]
    return images, ground_truth.reset_index(drop=True)


@pytest.fixture(scope="module")
def services(coco_dataset, tmp_path_factory):
    with run_simulator({"coco": coco_dataset}, ports={name: 0 for name in SERVER_NAMES}) as sim:
        env = {"VLM_GIST_SIM_API_KEY": KEY, "NIMBRO_VISION_API_KEY": KEY}
        env.update({e.key_env_var: KEY for e in ENDPOINTS.values() if e.key_env_var})
        urls = {e.name: sim.chat_base_url for e in ENDPOINTS.values()}
        urls["VLM-GIST simulator"] = sim.chat_base_url
        assert endpoint_env_var("VLM-GIST simulator")  # the name the model files use
        yield Services(
            endpoint_urls=urls,
            vision_urls=dict(sim.vision_urls),
            env=env,
            data_dir=tmp_path_factory.mktemp("stage_data"),
            concurrency=4,
        )


@pytest.fixture(scope="module")
def vlm_pair(coco, services):
    """sim_strong on the first COCO images through stages A and B."""
    images, _ = coco
    model = load_model_settings(SETTINGS / "models" / "sim_strong.json")
    detection = load_detection_settings(SETTINGS / "detection" / "detection.json")
    descriptions = run_descriptions(images, model, services)
    detections, detection_images = run_detections(images, descriptions, model, detection, services)
    masks = run_masks(images, detections, detection_images, model, detection, services)
    return descriptions, detections, detection_images, masks


def _assert_spec(frame: pd.DataFrame, spec) -> None:
    assert tuple(frame.columns) == spec.names
    for column in spec.columns:
        if column.dtype is not None:
            assert str(frame[column.name].dtype) == column.dtype, column.name


def test_descriptions(vlm_pair):
    descriptions = vlm_pair[0]
    _assert_spec(descriptions, DESCRIPTIONS)
    assert len(descriptions) == N_IMAGES and descriptions["success"].all()
    assert (descriptions["num_described"] == descriptions["objects"].map(len)).all()


def test_detections_follow_the_prompts(vlm_pair):
    descriptions, detections, detection_images, _ = vlm_pair
    _assert_spec(detections, DETECTIONS)
    _assert_spec(detection_images, DETECTION_IMAGES)
    assert len(detections) > N_IMAGES
    objects = dict(zip(descriptions["image_id"], descriptions["objects"]))
    for row in detection_images.itertuples():
        mine = detections[detections["image_id"] == row.image_id]
        # The prompts are the descriptions, in order (docs/protocol/pipeline.md §4.2).
        assert list(row.prompts) == [o["description"] for o in objects[row.image_id]]
        assert row.num_detections == len(mine) and list(mine["detection_index"]) == list(range(len(mine)))
        missing, over = missing_and_over_detections(list(row.prompts), list(mine["prompt"]))
        assert (list(row.missing_prompts), list(row.over_detections)) == (missing, over)
        # Every detection that is not the direct one of a prompt is an over-detection (over_detect 1.0).
        assert int(mine["is_over_detection"].sum()) == len(over)
        # Each detection names the first described object with its prompt as description (§4.4 step 5).
        for det in mine.itertuples():
            first = next(i for i, o in enumerate(objects[row.image_id]) if o["description"] == det.prompt)
            assert det.instance_index == first
            assert det.object_name == objects[row.image_id][first]["object_name"]


def test_masks_and_evaluated_boxes(coco, vlm_pair):
    images, _ = coco
    _, detections, _, masks = vlm_pair
    _assert_spec(masks, MASKS)
    assert len(masks) == len(detections)
    pd.testing.assert_frame_equal(masks[list(DETECTIONS.names)], detections)
    with_mask = masks["track_id"].notna()
    assert with_mask.mean() > 0.8
    assert (masks.loc[with_mask, "track_id"] == masks.loc[with_mask, "detection_index"]).all()  # by track id
    # segmentation_use_bbox: the evaluated box is the mask box where there is a mask, else the detector's.
    for k, side in enumerate(("x1", "y1", "x2", "y2")):
        expected = np.where(with_mask, masks[f"mask_{side}"].fillna(-1), masks[side])
        assert (masks[f"box_{side}"].to_numpy() == expected).all()
    sizes = images.set_index("image_id").loc[masks["image_id"]]
    width, height = sizes["width"].to_numpy(), sizes["height"].to_numpy()
    assert np.array_equal(masks["x"].to_numpy(), masks["box_x1"].to_numpy() / width)
    assert np.array_equal(masks["h"].to_numpy(), (masks["box_y2"] - masks["box_y1"]).to_numpy() / height)
    size = images.set_index("image_id")
    for row in masks[with_mask].head(10).itertuples():
        mask = decode_rle(row.mask)
        assert mask.shape == (size.at[row.image_id, "height"], size.at[row.image_id, "width"])
        ys, xs = np.nonzero(mask)
        # The pasted crop lies inside the mask box, whose last row and column it misses (docs/protocol/pipeline.md gotcha 11).
        assert xs.min() >= row.mask_x1 and xs.max() < row.mask_x2
        assert ys.min() >= row.mask_y1 and ys.max() < row.mask_y2


def test_detections_round_trip_through_the_masks_table(vlm_pair):
    masks = vlm_pair[3]
    for _, group in masks.groupby("image_id", sort=False):
        detections = Detections.from_table(group, label="prompt")
        assert detections.label.tolist() == group["prompt"].tolist()
        columns = detections.table_columns()
        for name in ("x1", "y1", "x2", "y2", "mask_x1", "mask_y2", "track_id"):
            assert pd.Series(columns[name]).equals(group[name].reset_index(drop=True)), name
        assert columns["mask"].tolist() == group["mask"].tolist()


def test_validation_off_passes_everything_through(coco, vlm_pair, services):
    images, _ = coco
    descriptions, _, _, masks = vlm_pair
    validations = run_validations(images, descriptions, masks, None, services)
    _assert_spec(validations, VALIDATIONS)
    assert validations["kept"].all() and set(validations["validation_outcome"]) == {"off"}
    assert (validations["validated_object_name"] == validations["object_name"]).all()


def test_label_matching_names_only_dataset_targets(coco, vlm_pair, services):
    images, ground_truth = coco
    descriptions, _, _, masks = vlm_pair
    validations = run_validations(images, descriptions, masks, None, services)
    settings = load_label_matching_settings(SETTINGS / "label_matching" / "coco.json")
    matches, summary = run_label_matches(
        validations, descriptions, ground_truth, list(images["image_id"]), settings, services
    )
    _assert_spec(matches, LABEL_MATCHES)
    assert len(matches) == len(validations)
    assert set(matches["dataset_match"].dropna()) <= set(COCO_TARGETS)
    assert summary["accepted"] + summary["rejected"] == len(matches)
    # The boxes evaluated are the masks table's, row for row.
    merged = matches.merge(masks, on=["image_id", "detection_index"], suffixes=("", "_mask"))
    assert len(merged) == len(matches)
    for column in ("x", "y", "w", "h", "confidence"):
        assert np.array_equal(merged[column].to_numpy(), merged[f"{column}_mask"].to_numpy())


def test_a_baseline_pair(coco, services):
    images, _ = coco
    model = load_model_settings(SETTINGS / "models" / "sim_florence_od.json")
    detection = load_detection_settings(SETTINGS / "detection" / "detection.json")
    descriptions = run_descriptions(images, model, services)
    _assert_spec(descriptions, DESCRIPTIONS)
    assert (descriptions["kind"] == "baseline").all() and descriptions["duration_s"].isna().all()
    detections, detection_images = run_detections(images, descriptions, model, detection, services)
    _assert_spec(detections, DETECTIONS)
    assert len(detections) > 0 and detections["prompt"].isna().all() and detections["confidence"].isna().all()
    assert (detection_images["num_prompts"] == 1).all()  # every answered baseline image counts for Ins.
    masks = run_masks(images, detections, detection_images, model, detection, services)
    _assert_spec(masks, MASKS)
    assert len(masks) == len(detections) and masks["track_id"].notna().any()


def test_validation_on_decides_per_detection(coco, vlm_pair, services):
    images, _ = coco
    descriptions, _, _, masks = vlm_pair
    settings = load_validation_settings(SETTINGS / "validation" / "validation.json")
    validations = run_validations(images, descriptions, masks, settings, services)
    _assert_spec(validations, VALIDATIONS)
    pd.testing.assert_frame_equal(validations[list(MASKS.names)], masks)
    outcome = validations["validation_outcome"]
    assert set(outcome) <= {"keep", "update", "reject"} and validations["validation_error"].isna().all()
    assert (outcome == "reject").any() and (outcome == "keep").any()
    # kept = keep or update; an update renames the detection, a keep does not (docs/protocol/pipeline.md §5.5).
    assert (validations["kept"] == outcome.isin(["keep", "update"])).all()
    kept = validations[outcome == "keep"]
    assert (kept["validated_object_name"] == kept["object_name"]).all()
    assert validations.loc[outcome == "reject", "validated_object_name"].isna().all()
    names = dict(zip(descriptions["image_id"], descriptions["objects"]))
    for row in validations[validations["kept"]].itertuples():
        assert row.validated_object_name in {o["object_name"] for o in names[row.image_id]}
