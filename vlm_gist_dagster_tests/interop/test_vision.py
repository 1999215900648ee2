"""nimbro-api's NimbRo vision clients (MmGroundingDino, Sam2Realtime, Florence2, Kosmos2) against the
simulated vision servers, with their default validation: ``validate_health`` (``/health`` must report
``status: ok`` and ``cuda_available: true``), ``validate_flavor`` / ``validate_status`` (``/status``, then
``/model_flavors`` and ``/load`` when the flavour differs) and their response checks."""

from __future__ import annotations

import base64

import cv2
import nimbro_api
import numpy as np
from nimbro_api.api.nimbro_vision_servers.client.florence2 import Florence2
from nimbro_api.api.nimbro_vision_servers.client.kosmos2 import Kosmos2
from nimbro_api.api.nimbro_vision_servers.client.mmgroundingdino import MmGroundingDino
from nimbro_api.api.nimbro_vision_servers.client.sam2_realtime import Sam2Realtime

from .conftest import VISION_TIMEOUTS, vision_endpoint


def settings(sim, family: str, **extra) -> dict:
    return {"endpoint": vision_endpoint(sim, family), "logger_severity": "warn", **VISION_TIMEOUTS, **extra}


def requests_to(sim, family: str, since: int) -> list[str]:
    return [r.path for r in sim.request_log.snapshot()[since:] if r.server == family]


def test_mmgroundingdino(sim, coco_path):
    before = len(sim.request_log)
    client = MmGroundingDino(settings=settings(sim, "mmgroundingdino"))
    prompts = ["a white chair at the bottom left", "a silver refrigerator on the right", "a person"]
    success, message, detections = client.get_detections(image=coco_path, prompts=prompts)
    assert success, message
    # nimbro-api's defaults: min_confidence 0.0, nms_iou 0.6, overdetect_factor 0.0 (one box per prompt at most)
    assert 1 <= len(detections) <= 3 and {d["prompt"] for d in detections} <= set(prompts)
    assert all(0 <= d["box_xyxy"][0] < d["box_xyxy"][2] <= 352 for d in detections)
    # health, then status (nothing loaded) → flavours → load, then infer
    assert requests_to(sim, "mmgroundingdino", before) == [
        "/health",
        "/status",
        "/model_flavors",
        "/load",
        "/infer",
    ]
    success, message, _ = client.get_detections(image=coco_path, prompts=prompts)  # loaded now: no /load
    assert success and "/load" not in requests_to(sim, "mmgroundingdino", before)[5:]


def test_unhealthy_server_is_refused(sim, coco_path):
    """nimbro_api/api/nimbro_vision_servers/utility.py:167-175: cuda_available false → refused."""
    sim.set_controls("mmgroundingdino", cuda_available=False)
    try:
        nimbro_api.clear_cache()  # its /health answer is cached for validate_health = 60 s
        client = MmGroundingDino(settings=settings(sim, "mmgroundingdino", retry=False))
        success, message, _ = client.get_detections(image=coco_path, prompts=["a chair"])
        assert not success and message == "Model reports that CUDA is unavailable."
    finally:
        sim.set_controls("mmgroundingdino", cuda_available=True)
        nimbro_api.clear_cache()


def test_sam2_update_loads_every_time_and_tracking_is_refused(sim, coco_path):
    """nimbro-api checks ``status.flavor`` and ``status.tracker_initialized`` before every call
    (sam2_realtime_base.py:154-181). The public server never records its flavour: its ``load()`` does not set
    ``self.flavor`` (models/sam2_realtime/sam2_realtime/model.py:50-80) and ``get_status()`` answers None while
    the flavour is None (:44-48), so ``/status`` is always ``null``. The simulator follows the public server:
    nimbro-api loads the model before every update, and refuses to track."""
    before = len(sim.request_log)
    client = Sam2Realtime(settings=settings(sim, "sam2_realtime", retry=False))
    prompts = [{"object_id": 0, "bbox": [300, 60, 352, 220]}, {"object_id": 1, "bbox": [20, 100, 90, 228]}]
    for _ in range(2):
        success, message, tracks = client.get_response(image=coco_path, prompts=prompts)
        assert success, message
        assert sorted(t["track_id"] for t in tracks) == [0, 1]
        for t in tracks:  # a PNG crop of shape (y2 - y1, x2 - x1)
            png = cv2.imdecode(np.frombuffer(base64.b64decode(t["mask"]), np.uint8), cv2.IMREAD_UNCHANGED)
            x1, y1, x2, y2 = t["box_xyxy"]
            assert png.shape == (y2 - y1, x2 - x1)
    assert requests_to(sim, "sam2_realtime", before).count("/load") == 2
    success, message, _ = client.get_response(image=coco_path)
    assert not success and message == "Model is not loaded and loading it would leave it uninitialized."
    assert "/infer" not in requests_to(sim, "sam2_realtime", before)


def test_sam2_update_and_track_when_status_reports_the_flavour(sim, coco_path):
    """With the control that makes /status report ``{flavor, tracker_initialized}`` (what the public
    server's get_status() would return had load() set the flavour, model.py:44-48), nimbro-api's
    update + track works with its defaults, loading once."""
    sim.set_controls("sam2_realtime", status_reports_flavor=True)
    try:
        before = len(sim.request_log)
        client = Sam2Realtime(settings=settings(sim, "sam2_realtime", retry=False))
        prompts = [{"object_id": 3, "bbox": [300, 60, 352, 220]}]
        success, message, updated = client.get_response(image=coco_path, prompts=prompts)
        assert success, message
        success, message, tracked = client.get_response(image=coco_path)
        assert success, message
        assert [t["track_id"] for t in tracked] == [3] and tracked[0]["box_xyxy"] == updated[0]["box_xyxy"]
        assert requests_to(sim, "sam2_realtime", before).count("/load") <= 1
    finally:
        sim.set_controls("sam2_realtime", status_reports_flavor=False)


def test_florence2_and_kosmos2(sim, coco_path):
    success, message, florence = Florence2(settings=settings(sim, "florence2")).get_response(image=coco_path)
    assert success, message
    # nimbro-api's default Florence-2 prompt is <OD>: labelled boxes, no caption
    assert florence["detections"] and "captions" not in florence
    assert all(set(d) == {"box_xyxy", "label"} for d in florence["detections"])
    success, message, kosmos = Kosmos2(settings=settings(sim, "kosmos2")).get_response(image=coco_path)
    assert success, message
    # nimbro-api's default Kosmos-2 prompt is "<grounding> Describe this image in detail:"
    (caption,) = kosmos["captions"]
    assert caption.startswith("Describe this image in detail:")
    assert all(d["label"] in caption for d in kosmos.get("detections", []))
