"""Stage B's grounding modes (``model.grounding``) on the simulator, two COCO images each, as plain stage
functions: every mode gives well-formed tables whose numbers follow from the responses, checked here by
hand (boxes converted from ``box_2d`` by arithmetic, SAM 3's masks decoded and compared with its boxes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vlm_gist_dagster.protocol.endpoints import ENDPOINTS
from vlm_gist_dagster.protocol.masks import decode_rle
from vlm_gist_dagster.protocol.settings import COCO_TARGETS, load_detection_settings, load_model_settings
from vlm_gist_dagster.sim import SERVER_NAMES, run_simulator
from vlm_gist_dagster.stages.descriptions import run_descriptions
from vlm_gist_dagster.stages.grounding import run_detections, run_masks
from vlm_gist_dagster.stages.services import Services
from vlm_gist_dagster.stages.tables import DETECTION_IMAGES, DETECTIONS, MASKS

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "settings"
KEY = "grounding-modes-key"
N_IMAGES = 2


@pytest.fixture(scope="module")
def images(coco_dataset):
    return coco_dataset.images.head(N_IMAGES).reset_index(drop=True)


@pytest.fixture(scope="module")
def sim_and_services(coco_dataset, tmp_path_factory):
    with run_simulator({"coco": coco_dataset}, ports={name: 0 for name in SERVER_NAMES}) as sim:
        env = {"VLM_GIST_SIM_API_KEY": KEY, "NIMBRO_VISION_API_KEY": KEY}
        env.update({e.key_env_var: KEY for e in ENDPOINTS.values() if e.key_env_var})
        urls = {e.name: sim.chat_base_url for e in ENDPOINTS.values()}
        urls["VLM-GIST simulator"] = sim.chat_base_url
        yield (
            sim,
            Services(
                endpoint_urls=urls,
                vision_urls=dict(sim.vision_urls),
                env=env,
                data_dir=tmp_path_factory.mktemp("grounding_modes"),
                concurrency=4,
            ),
        )


def _run(images, services, model_file: str, class_names=None):
    model = load_model_settings(SETTINGS / "models" / f"{model_file}.json")
    detection = load_detection_settings(SETTINGS / "detection" / "detection.json")
    descriptions = run_descriptions(images, model, services)
    detections, detection_images = run_detections(
        images, descriptions, model, detection, services, class_names=class_names
    )
    masks = run_masks(images, detections, detection_images, model, detection, services)
    for frame, spec in ((detections, DETECTIONS), (detection_images, DETECTION_IMAGES), (masks, MASKS)):
        assert tuple(frame.columns) == spec.names
    return descriptions, detections, detection_images, masks


def _families(sim) -> set[str]:
    return {entry.server for entry in sim.request_log.snapshot() if entry.path in ("/infer", "/update")}


def test_vlm_boxes_are_the_vlms_own_boxes(images, sim_and_services):
    sim, services = sim_and_services
    sim.request_log.clear()
    descriptions, detections, detection_images, masks = _run(images, services, "sim_strong_boxes")
    assert _families(sim) == set()  # no vision server is asked
    sizes = images.set_index("image_id")
    assert len(detections) > 0
    for row in descriptions.itertuples():
        objects = list(row.objects)
        # stage A stored nimbro-api's 'label' as object_name, and the box as four floats
        assert all(set(o) == {"object_name", "description", "box_2d"} for o in objects)
        mine = detections[detections["image_id"] == row.image_id]
        assert list(mine["instance_index"]) == list(range(len(objects)))
        width, height = int(sizes.at[row.image_id, "width"]), int(sizes.at[row.image_id, "height"])
        for det, obj in zip(mine.itertuples(), objects):
            y1, x1, y2, x2 = obj["box_2d"]
            expected = [
                round(x1 * width / 1000),
                round(y1 * height / 1000),
                round(x2 * width / 1000),
                round(y2 * height / 1000),
            ]
            assert [det.x1, det.y1, det.x2, det.y2] == expected
            assert det.object_name == obj["object_name"] and det.prompt == obj["description"]
            assert np.isnan(det.confidence) and not det.is_over_detection
    assert (detection_images["missing_prompts"].map(len) == 0).all()
    assert masks["mask"].isna().all() and (masks["track_id"] == -1).all()
    assert (
        masks[["box_x1", "box_y1", "box_x2", "box_y2"]].to_numpy()
        == masks[["x1", "y1", "x2", "y2"]].to_numpy()
    ).all()


def test_vlm_boxes_sam2_segments_the_same_boxes(images, sim_and_services):
    sim, services = sim_and_services
    _, plain, _, _ = _run(images, services, "sim_strong_boxes")
    sim.request_log.clear()
    _, detections, _, masks = _run(images, services, "sim_strong_boxes_sam2")
    assert _families(sim) == {"sam2_realtime"}
    pd.testing.assert_frame_equal(detections, plain)  # same stage A answer (cached), same boxes
    assert masks["mask"].notna().mean() > 0.9
    for row in masks[masks["mask"].notna()].itertuples():
        full = decode_rle(row.mask)
        ys, xs = np.nonzero(full)
        assert (row.mask_x1, row.mask_y1) == (
            xs.min(),
            ys.min(),
        )  # the mask box is the mask's (max inclusive)


def test_sam3_grounds_object_names(images, sim_and_services):
    sim, services = sim_and_services
    sim.request_log.clear()
    descriptions, detections, detection_images, masks = _run(images, services, "sim_strong_sam3")
    assert _families(sim) == {"sam3"}
    infers = [e for e in sim.request_log.snapshot() if e.server == "sam3" and e.path == "/infer"]
    assert len(infers) == N_IMAGES  # one call per image; the masks stage reads the cached response
    assert len(detections) > 0
    for row in descriptions.itertuples():
        objects = list(row.objects)
        mine = detections[detections["image_id"] == row.image_id]
        info = detection_images.set_index("image_id").loc[row.image_id]
        assert len(info["prompts"]) == len(objects)
        for det in mine.itertuples():
            obj = objects[det.instance_index]
            # the prompt is the object's name without the number that tells duplicates apart
            assert obj["object_name"] == det.prompt or obj["object_name"].startswith(det.prompt + " ")
            assert 0.5 < det.confidence <= 1.0
        # each prompt keeps at most as many instances as objects send it, each object at most one
        counts = pd.Series(list(info["prompts"])).value_counts()
        assert (mine["prompt"].value_counts() <= counts.reindex(mine["prompt"].value_counts().index)).all()
        assert mine["instance_index"].is_unique and not mine["is_over_detection"].any()
    with_mask = masks[masks["mask"].notna()]
    assert len(with_mask) == len(masks) > 0
    for row in with_mask.itertuples():
        ys, xs = np.nonzero(decode_rle(row.mask))
        # the SAM 3 mask lies inside SAM 3's box (the simulator cuts the GT mask to the box)
        assert xs.min() >= row.x1 - 1 and ys.min() >= row.y1 - 1 and xs.max() <= row.x2 and ys.max() <= row.y2


def test_sam3_classes_baseline_prompts_the_dataset_classes(images, sim_and_services, coco_dataset):
    sim, services = sim_and_services
    sim.request_log.clear()
    _, detections, detection_images, masks = _run(
        images, services, "sim_sam3_classes", class_names=COCO_TARGETS
    )
    assert _families(sim) == {"sam3"}
    assert len([e for e in sim.request_log.snapshot() if e.path == "/infer"]) == N_IMAGES  # masks: cached
    assert all(list(p) == list(COCO_TARGETS) for p in detection_images["prompts"])
    assert (
        detection_images["num_prompts"] == 1
    ).all()  # a baseline image counts once (Ins., docs/protocol/pipeline.md §6)
    assert detections["object_name"].isin(COCO_TARGETS).all() and (detections["confidence"] > 0.5).all()
    assert detections["prompt"].isna().all() and detections["is_over_detection"].isna().all()
    # the simulated SAM 3 finds (recall 0.9) the GT classes of each image and no absent one
    gt = coco_dataset.ground_truth
    for image_id, found in detections.groupby("image_id"):
        present = set(gt.loc[gt["image_id"] == image_id, "label"])
        assert set(found["object_name"]) <= present and len(set(found["object_name"])) >= len(present) // 2
    assert masks["mask"].notna().all() and len(masks) == len(detections)
