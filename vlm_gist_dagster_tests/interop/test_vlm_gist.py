"""nimbro-api's VLM-GIST pipeline client (``VlmGist.run``) against the simulator: in settings like the
paper's (object_name/description, MM-Grounding-DINO on the descriptions, over-detection 1.0, SAM2 on) and
in its own defaults (label/description/box_2d, boxes taken from the description). Validation as by
default: strict keys and types of the structured description, complete detection (every description
found), complete segmentation (every detection segmented)."""

from __future__ import annotations

from nimbro_api.api.misc.client.vlm_gist import VlmGist

from .conftest import CHAT_TIMEOUTS, MODEL, PAPER_DICT_PROMPT, VISION_TIMEOUTS, chat_endpoint, vision_endpoint


def chat_settings(sim) -> dict:
    return {
        "endpoint": chat_endpoint(sim, "openrouter"),
        "model": MODEL,
        "logger_severity": "warn",
        **CHAT_TIMEOUTS,
    }


def test_paper_like_settings(sim, coco_path):
    client = VlmGist(
        settings={
            "logger_severity": "warn",
            "structured_description.chat_completions": chat_settings(sim),
            "structured_description.description_prompt": PAPER_DICT_PROMPT,
            "structured_description.keys_required": ["object_name", "description"],
            "structured_description.keys_required_types": ["str", "str"],
            "detection.extract_from_description": False,
            "detection.prompt_key": "description",
            "detection.mmgroundingdino": {
                "endpoint": vision_endpoint(sim, "mmgroundingdino"),
                "logger_severity": "warn",
                "nms_iou": None,
                "overdetect_factor": 1.0,
                **VISION_TIMEOUTS,
            },
            "segmentation.skip": False,
            "segmentation.sam2_realtime": {
                "endpoint": vision_endpoint(sim, "sam2_realtime"),
                "logger_severity": "warn",
                **VISION_TIMEOUTS,
            },
        }
    )
    before = len(sim.request_log)
    success, message, result = client.run(coco_path)
    assert success, message
    described = result["structured_description"]["data"]
    assert described and all(set(o) == {"object_name", "description"} for o in described)
    detections = result["detection"]["data"]
    # over-detection 1.0 with duplicates allowed: one box per description, each for a requested prompt
    assert sorted(d["prompt"] for d in detections) == sorted(o["description"] for o in described)
    segments = result["segmentation"]["data"]
    assert sorted(s["track_id"] for s in segments) == list(range(len(detections)))
    paths = [
        (r.server, r.path)
        for r in sim.request_log.snapshot()[before:]
        if r.path not in ("/health", "/status", "/model_flavors", "/load")
    ]
    assert paths == [
        ("chat", "/api/v1/models"),
        ("chat", "/api/v1/chat/completions"),
        ("mmgroundingdino", "/infer"),
        ("sam2_realtime", "/update"),
    ]


def test_its_own_defaults(sim, coco_path, coco_dataset):
    """nimbro-api's default prompt asks for label, description and box_2d ([y_min, x_min, y_max, x_max]
    normalised to 0-1000) and takes the detections from those boxes: no detector call."""
    client = VlmGist(
        settings={"logger_severity": "warn", "structured_description.chat_completions": chat_settings(sim)}
    )
    before = len(sim.request_log)
    success, message, result = client.run(coco_path)
    assert success, message
    described = result["structured_description"]["data"]
    assert described and all(set(o) == {"label", "description", "box_2d"} for o in described)
    assert all(o["description"].count(". ") >= 9 for o in described)  # ten sentences, as the prompt asks
    width, height = result["image"]["width"], result["image"]["height"]
    assert (width, height) == (352, 230)
    for detection in result["detection"]["data"]:
        x1, y1, x2, y2 = detection["box_xyxy"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    # the described boxes are the GT instances' (jittered): most overlap a GT box of their label well
    gt = coco_dataset.ground_truth[coco_dataset.ground_truth["image_id"] == "000000037777"]
    matched = 0
    for detection in result["detection"]["data"]:
        x1, y1, x2, y2 = detection["box_xyxy"]
        for g in gt.itertuples():
            gx1, gy1, gx2, gy2 = g.x * width, g.y * height, (g.x + g.w) * width, (g.y + g.h) * height
            iw, ih = min(x2, gx2) - max(x1, gx1), min(y2, gy2) - max(y1, gy1)
            if (
                iw > 0
                and ih > 0
                and iw * ih / ((x2 - x1) * (y2 - y1) + (gx2 - gx1) * (gy2 - gy1) - iw * ih) > 0.5
            ):
                matched += detection["prompt"] == g.label
                break
    assert matched >= len(result["detection"]["data"]) // 2
    servers = {r.server for r in sim.request_log.snapshot()[before:]}
    assert servers == {"chat"}
