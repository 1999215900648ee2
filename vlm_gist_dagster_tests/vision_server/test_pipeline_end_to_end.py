"""One pair end to end through the pipeline's stages with ``vlm-gist vision-serve`` processes (tiny
random-weight models on the CPU) in place of the simulator's vision servers; the simulator answers only
the chat API (stage A). The numbers are meaningless, the plumbing is real: the requests the stages build,
the servers' responses, and the tables built from them, in every grounding mode that calls a server."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from vlm_gist_dagster.protocol.endpoints import ENDPOINTS
from vlm_gist_dagster.protocol.masks import decode_rle
from vlm_gist_dagster.protocol.settings import load_detection_settings, load_model_settings
from vlm_gist_dagster.sim import run_simulator
from vlm_gist_dagster.stages.descriptions import run_descriptions
from vlm_gist_dagster.stages.grounding import run_detections, run_masks
from vlm_gist_dagster.stages.services import Services
from vlm_gist_dagster.stages.tables import DETECTION_IMAGES, DETECTIONS, MASKS

from .conftest import needs_vision, vision_serve

pytestmark = needs_vision

REPO = Path(__file__).resolve().parents[2]
TOKEN = "vision-serve-pipeline-token"
FAMILIES = ("mmgroundingdino", "sam2_realtime", "sam3")


@pytest.fixture(scope="module")
def services(coco_dataset, tmp_path_factory):
    with ExitStack() as stack:
        sim = stack.enter_context(run_simulator({"coco": coco_dataset}, ports={"chat": 0}, servers=["chat"]))
        urls = {
            f: stack.enter_context(vision_serve(f, env={"NIMBRO_VISION_SERVER_TOKEN": TOKEN}))
            for f in FAMILIES
        }
        env = {"VLM_GIST_SIM_API_KEY": "k", "NIMBRO_VISION_API_KEY": TOKEN}
        env.update({e.key_env_var: "k" for e in ENDPOINTS.values() if e.key_env_var})
        endpoints = {e.name: sim.chat_base_url for e in ENDPOINTS.values()}
        endpoints["VLM-GIST simulator"] = sim.chat_base_url
        yield Services(
            endpoint_urls=endpoints,
            vision_urls=urls,
            env=env,
            data_dir=tmp_path_factory.mktemp("vision_serve_pipeline"),
            concurrency=2,
        )


@pytest.fixture(scope="module")
def image(coco_dataset):
    return coco_dataset.images.head(1).reset_index(drop=True)


def _model(name: str, tmp_path: Path, **grounding):
    path = REPO / "settings" / "models" / f"{name}.json"
    if grounding:
        data = json.loads(path.read_text())
        data["model"]["grounding"] = {**data["model"]["grounding"], **grounding}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
    return load_model_settings(path)


def _pair(image, services, model):
    detection = load_detection_settings(REPO / "settings" / "detection" / "detection.json")
    descriptions = run_descriptions(image, model, services)
    assert descriptions["success"].all()
    detections, detection_images = run_detections(image, descriptions, model, detection, services)
    masks = run_masks(image, detections, detection_images, model, detection, services)
    for frame, spec in ((detections, DETECTIONS), (detection_images, DETECTION_IMAGES), (masks, MASKS)):
        assert tuple(frame.columns) == spec.names
    assert detection_images["error"].isna().all(), detection_images["error"].tolist()
    assert masks["segmentation_error"].isna().all(), masks["segmentation_error"].tolist()
    width, height = int(image.at[0, "width"]), int(image.at[0, "height"])
    boxes = detections[["x1", "y1", "x2", "y2"]].to_numpy()
    assert ((boxes >= 0) & (boxes <= [width, height, width, height])).all()
    for row in masks[masks["mask"].notna()].itertuples():
        assert decode_rle(row.mask).shape == (height, width)
    return descriptions, detections, detection_images, masks


def test_papers_mode_mmgdino_and_sam2(image, services):
    descriptions, detections, detection_images, masks = _pair(image, services, _model("sim_strong", None))
    prompts = list(detection_images.at[0, "prompts"])
    assert prompts == [o["description"] for o in descriptions.at[0, "objects"]]
    # over_detect 1.0 and min_confidence 0.0: the server pads to one box per prompt at least
    assert len(detections) >= len(prompts) > 0
    assert set(detections["prompt"]) <= set(prompts)
    assert len(masks) == len(detections)
    tracked = masks[masks["track_id"] >= 0]
    assert set(tracked["track_id"]) <= set(range(len(detections)))  # SAM2's object ids = detection index


def test_sam3_mode(image, services, tmp_path):
    # random weights score low: take every query so that each described object gets an instance
    model = _model("sim_strong_sam3", tmp_path, sam3_min_confidence=0.0)
    descriptions, detections, detection_images, masks = _pair(image, services, model)
    objects = list(descriptions.at[0, "objects"])
    assert len(detection_images.at[0, "prompts"]) == len(objects)
    assert len(detections) == len(objects) and detections["instance_index"].is_unique
    assert (detections["confidence"] > 0).all() and not detections["is_over_detection"].any()
    # masks straight from SAM 3 (no SAM2 call), boxes unchanged
    assert (
        masks[["x1", "y1", "x2", "y2"]].to_numpy() == detections[["x1", "y1", "x2", "y2"]].to_numpy()
    ).all()
    with_mask = masks[masks["mask"].notna()]
    assert (with_mask[["mask_x1", "mask_y1"]].to_numpy() >= 0).all()


def test_vlm_boxes_sam2_mode(image, services):
    descriptions, detections, _, masks = _pair(image, services, _model("sim_strong_boxes_sam2", None))
    objects = list(descriptions.at[0, "objects"])
    assert len(detections) == len(objects) > 0
    assert np.isnan(detections["confidence"]).all()
    assert len(masks) == len(detections)
