"""A permanent server error does not sink a partition (issue 15 item 5).

The real NimbRo servers answer HTTP 500 for requests that fail the same way on every retry (a bad
payload; a one-pixel-wide mask). A stub SAM2 server (not our simulator) does so for any ``/update`` with
a box one pixel wide: that image's detections get no mask, with the reason in their rows, after exactly
the retry budget of calls; every other image is segmented, and the stage finishes. A server that fails
on every image is broken, not the images: then the stage fails.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from vlm_gist_dagster.clients.errors import TransportRetriesExhausted
from vlm_gist_dagster.clients.transport import RetryPolicy
from vlm_gist_dagster.protocol.settings import load_detection_settings, load_model_settings
from vlm_gist_dagster.stages.grounding import DETECTION_COLUMNS, run_masks
from vlm_gist_dagster.stages.services import Services

from ..stubs import StubServer, vision_route

REPO = Path(__file__).resolve().parents[2]
RETRY = RetryPolicy(max_retries=3, backoff_base_s=0.001, backoff_max_s=0.001)


def thin(body) -> bool:
    return any(p["bbox"][2] - p["bbox"][0] <= 1 for p in body["prompts"])


def fails_on_thin_boxes(path: str, body) -> bool:
    return path == "/update" and thin(body)


def detections_for(images: pd.DataFrame, thin_images: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, per_image = [], []
    for image_id in images["image_id"]:
        boxes = [(10, 10, 60, 50), (20, 30, 21 if image_id in thin_images else 90, 80)]
        for index, (x1, y1, x2, y2) in enumerate(boxes):
            prompt = f"thing {index}"
            rows.append(
                {
                    "image_id": image_id,
                    "detection_index": index,
                    "prompt": prompt,
                    "object_name": prompt,
                    "description": prompt,
                    "instance_index": index,
                    "x1": x1,
                    "y1": y1,
                    "x2": x2,
                    "y2": y2,
                    "confidence": 0.9,
                    "is_over_detection": False,
                }
            )
        per_image.append({"image_id": image_id, "prompts": ["thing 0", "thing 1"]})
    return pd.DataFrame(rows, columns=list(DETECTION_COLUMNS)), pd.DataFrame(per_image)


def masks_with(stub: StubServer, images, detections, per_image, data_dir: Path) -> pd.DataFrame:
    services = Services(
        vision_urls={"sam2_realtime": stub.url},
        env={"NIMBRO_VISION_API_KEY": "stub-token"},
        data_dir=data_dir,
        retry=RETRY,
    )
    model = load_model_settings(REPO / "settings" / "models" / "sim_medium.json")
    detection = load_detection_settings(REPO / "settings" / "detection" / "detection.json")
    return run_masks(images, detections, per_image, model, detection, services)


def test_an_image_the_server_always_fails_on_gets_no_masks_and_the_rest_go_on(coco_dataset, tmp_path):
    images = coco_dataset.images.head(3).reset_index(drop=True)
    bad = str(images["image_id"][1])
    detections, per_image = detections_for(images, {bad})
    with StubServer(vision_route("sam2_realtime", fail=fails_on_thin_boxes)) as stub:
        masks = masks_with(stub, images, detections, per_image, tmp_path / "data")
        updates = stub.seen("/update")
        # The failing image cost exactly the retry budget (1 + 3 tries), the others one call each.
        assert sum(thin(r.body) for r in updates) == 1 + RETRY.max_retries
        assert sum(not thin(r.body) for r in updates) == len(images) - 1

        # A re-run answers the good images from the cache and tries the bad one again, once more
        # within the budget (the server may have been fixed meanwhile).
        again = masks_with(stub, images, detections, per_image, tmp_path / "data")
        assert len(stub.seen("/update")) == len(updates) + 1 + RETRY.max_retries
    pd.testing.assert_frame_equal(again, masks)

    assert len(masks) == len(detections)  # every detection keeps its row
    failed = masks[masks["image_id"] == bad]
    assert failed["mask"].isna().all() and failed["track_id"].isna().all()
    assert failed["segmentation_error"].str.contains("HTTP 500").all()
    # Without a mask a detection keeps the detector's box, as one without a track does.
    assert (
        failed[["box_x1", "box_y1", "box_x2", "box_y2"]].to_numpy()
        == failed[["x1", "y1", "x2", "y2"]].to_numpy()
    ).all()
    segmented = masks[masks["image_id"] != bad]
    assert segmented["mask"].notna().all() and segmented["segmentation_error"].isna().all()


def test_a_server_that_fails_on_every_image_fails_the_stage(coco_dataset, tmp_path):
    images = coco_dataset.images.head(2).reset_index(drop=True)
    detections, per_image = detections_for(images, set(images["image_id"]))
    with StubServer(vision_route("sam2_realtime", fail=fails_on_thin_boxes)) as stub:
        with pytest.raises(TransportRetriesExhausted) as info:
            masks_with(stub, images, detections, per_image, tmp_path / "data")
        assert info.value.status == 500
        assert len(stub.seen("/update")) == len(images) * (1 + RETRY.max_retries)
