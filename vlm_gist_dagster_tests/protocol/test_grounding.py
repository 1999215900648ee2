"""Grounding modes in ``protocol``: the ``grounding`` header, the ``box_2d`` item of a structured
description, SAM 3's request and response, and the per-object selection. Expected values are worked out
by hand in the comments."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vlm_gist_dagster.protocol.grounding import (
    box_2d_to_xyxy,
    parse_box_2d,
    parse_sam3_response,
    sam3_prompts,
    sam3_request,
    select_sam3,
)
from vlm_gist_dagster.protocol.masks import decode_rle
from vlm_gist_dagster.protocol.responses import ResponseFormatError
from vlm_gist_dagster.protocol.settings import DescriptionSettings, SettingsError, load_model_settings
from vlm_gist_dagster.protocol.structured_description import parse

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "settings" / "models"


# ------------------------------------------------------------------------------------------ box_2d


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 2, 3], "list of 4 numbers"),
        ("0 0 10 10", "list of 4 numbers"),
        ([0, 0, True, 10], "4 finite numbers"),
        ([0, 0, float("nan"), 10], "4 finite numbers"),
        ([0, 0, 1001, 10], "not normalised to 0-1000"),
        ([-1, 0, 10, 10], "not normalised to 0-1000"),
        ([10, 0, 10, 10], "y_min >= y_max"),
        ([0, 20, 10, 5], "x_min >= x_max"),
    ],
)
def test_bad_box_2d_is_refused(value, message):
    with pytest.raises(ValueError, match=message):
        parse_box_2d(value)


def test_box_2d_to_pixels():
    # 1000 x 500 image: x scales by 1.0, y by 0.5; [y1, x1, y2, x2] = [100, 250, 900, 750]
    assert box_2d_to_xyxy(parse_box_2d([100, 250, 900, 750]), width=1000, height=500) == (250, 50, 750, 450)
    # 640 x 427: x1 = 333.3 * 0.64 = 213.3 -> 213, y2 = 999.9 * 0.427 = 426.96 -> 427 (the image's edge)
    assert box_2d_to_xyxy((0.0, 333.3, 999.9, 1000.0), width=640, height=427) == (213, 0, 640, 427)
    # a box thinner than a pixel keeps one pixel, inside the image
    assert box_2d_to_xyxy((999.5, 999.5, 1000.0, 1000.0), width=10, height=10) == (9, 9, 10, 10)


def test_box_2d_dict_item_in_stage_a():
    settings = load_model_settings(MODELS / "sim_strong_boxes.json").description
    text = json.dumps(
        [
            {"label": "cup", "description": "A white cup.", "box_2d": [10, 20, 30.5, 40]},
            {"label": "cat", "description": "A cat.", "box_2d": [50, 20, 30, 40]},  # y_min > y_max: dropped
            {"label": "dog", "description": "A dog."},  # box_2d missing: dropped (required)
        ]
    )
    # names and descriptions normalised as the paper does (lower case, no punctuation), the box kept
    assert parse(text, settings) == [
        {"label": "cup", "description": "a white cup", "box_2d": [10.0, 20.0, 30.5, 40.0]}
    ]


# ------------------------------------------------------------------------------------------ header


def _write(tmp_path, header, **changes) -> Path:
    data = json.loads((MODELS / "sim_strong.json").read_text())
    data["model"] = header
    data.update(changes)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    return path


def test_default_mode_is_the_papers_and_changes_nothing(tmp_path):
    plain = load_model_settings(MODELS / "sim_strong.json")
    explicit = load_model_settings(
        _write(
            tmp_path, {"display_name": "Sim strong (simulated)", "simulated": True, "grounding": "mmgd_sam2"}
        )
    )
    assert plain.grounding.mode == explicit.grounding.mode == "mmgd_sam2"
    assert plain.display_name == explicit.display_name == "Sim strong (simulated)"
    assert plain.settings == explicit.settings


def test_modes_label_the_display_name(tmp_path):
    model = load_model_settings(
        _write(
            tmp_path, {"display_name": "Gemini", "grounding": {"mode": "sam3", "sam3_prompt": "description"}}
        )
    )
    assert model.display_name == "Gemini + SAM 3" and model.grounding.sam3_prompt == "description"
    assert (
        load_model_settings(MODELS / "sim_strong_sam3.json").display_name == "Sim strong + SAM 3 (simulated)"
    )


@pytest.mark.parametrize(
    ("header", "field", "message"),
    [
        ({"grounding": "sam4"}, "model.grounding.mode", "sam3"),
        (
            {"grounding": {"mode": "sam3", "sam3_min_confidence": 1.5}},
            "model.grounding.sam3_min_confidence",
            "",
        ),
        ({"grounding": "vlm_boxes"}, "dict_items", "box_2d"),
    ],
)
def test_bad_grounding_headers_name_the_field(tmp_path, header, field, message):
    with pytest.raises(SettingsError) as info:
        load_model_settings(_write(tmp_path, header))
    assert field in str(info.value) and message in str(info.value) and "m.json" in str(info.value)


def test_a_baseline_has_no_grounding_mode(tmp_path):
    data = json.loads((MODELS / "sim_florence_od.json").read_text())
    data["model"]["grounding"] = "sam3"
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SettingsError, match="model.grounding"):
        load_model_settings(path)


# ------------------------------------------------------------------------------------------ SAM 3


def test_sam3_prompts_and_request():
    objects = [
        {"object_name": "chair 1", "description": "a red chair"},
        {"object_name": "chair 2", "description": "a blue chair"},
        {"object_name": "table 2", "description": "a table"},  # alone: its number is part of the name
        {"object_name": "", "description": ""},
    ]
    assert sam3_prompts(objects) == ["chair", "chair", "table 2", ""]
    assert sam3_prompts(objects, "description") == ["a red chair", "a blue chair", "a table", ""]
    body = sam3_request("QUJD", sam3_prompts(objects), min_confidence=0.4, mask_threshold=0.6)
    assert body == {
        "images": ["QUJD"],
        "inference_parameters": {
            "prompts": ["chair", "table 2"],
            "min_confidence": 0.4,
            "mask_threshold": 0.6,
        },
    }


def _png(crop: np.ndarray) -> str:
    return base64.b64encode(cv2.imencode(".png", crop.astype(np.uint8) * 255)[1].tobytes()).decode()


def test_parse_sam3_response_decodes_masks():
    crop = np.zeros((3, 4), dtype=bool)
    crop[1:, 1:3] = True  # 2 x 2 foreground at crop (1..2, 1..2) -> image x 3..4, y 2..3
    response = {
        "artifact": {
            "detections": [
                [
                    {
                        "prompt": "cup",
                        "confidence": 0.9,
                        "box_xyxy": [2, 1, 7, 5],
                        "mask_box_xyxy": [2, 1, 6, 4],
                        "mask": _png(crop),
                    },
                    {
                        "prompt": "cup",
                        "confidence": 0.6,
                        "box_xyxy": [0, 0, 2, 2],
                        "mask_box_xyxy": None,
                        "mask": None,
                    },
                ]
            ],
            "model": "sam3",
        }
    }
    found = parse_sam3_response(response, prompts=["cup"], image_size=(8, 6))
    assert found.label.tolist() == ["cup", "cup"] and found.confidence.tolist() == [0.9, 0.6]
    assert found.xyxy.tolist() == [[2, 1, 7, 5], [0, 0, 2, 2]]
    assert found.has_mask.tolist() == [True, False] and found.mask_xyxy[0].tolist() == [2, 1, 6, 4]
    ys, xs = np.nonzero(decode_rle(found.mask[0]))
    assert sorted(set(xs.tolist())) == [3, 4] and sorted(set(ys.tolist())) == [2, 3]
    assert len(parse_sam3_response(response)) == 2  # without a size: boxes only
    with pytest.raises(
        ResponseFormatError, match="'artifact.detections\\[0\\]\\[0\\].prompt' is 'cup', which was not"
    ):
        parse_sam3_response(response, prompts=["tea"])
    bad = json.loads(json.dumps(response))
    bad["artifact"]["detections"][0][0]["confidence"] = "high"
    with pytest.raises(ResponseFormatError, match="confidence' must be a number"):
        parse_sam3_response(bad)
    bad["artifact"]["detections"][0][0].update(confidence=0.9, mask_box_xyxy=[1, 2])
    with pytest.raises(ResponseFormatError, match="mask.box_xyxy' must be a list of 4 ints"):
        parse_sam3_response(bad, image_size=(8, 6))


def test_select_sam3_keeps_one_instance_per_object():
    from vlm_gist_dagster.protocol.detections import Detections

    # chair x3 (0.5, 0.8, 0.7), table x1 (0.9); two objects say "chair", one "table", one "lamp"
    found = Detections.from_boxes(
        ["chair", "chair", "table", "chair"], [(0, 0, 1, 1)] * 4, [0.5, 0.8, 0.9, 0.7]
    )
    kept, over = select_sam3(found, ["chair", "table", "chair", "lamp"])
    # the two best chairs (0.8, 0.7) and the table, in server order; no over-detections kept
    assert kept.confidence.tolist() == [0.8, 0.9, 0.7] and not over.any()
    everything, flags = select_sam3(found, ["chair", "table", "chair", "lamp"], keep_all=True)
    assert len(everything) == 4 and flags.tolist() == [True, False, False, False]


def test_description_settings_accept_the_box_item():
    items = [
        {"key": "label", "type": "str", "required": True},
        {"key": "description", "type": "str", "required": True},
        {"key": "box_2d", "type": "box_2d", "required": True},
    ]
    assert DescriptionSettings(dict_items=items).dict_items[2].type == "box_2d"


def test_sam3_baseline_settings():
    from vlm_gist_dagster.protocol.grounding import sam3_classes_request
    from vlm_gist_dagster.protocol.settings import BaselineSettings

    model = load_model_settings(MODELS / "sim_sam3_classes.json")
    assert model.kind == "baseline" and model.baseline.model_name == "sam3"
    body = sam3_classes_request("QUJD", model.baseline, ["person", "cup", "person"])
    assert body["inference_parameters"]["prompts"] == ["person", "cup"]
    own = BaselineSettings.model_validate(
        {"model_name": "sam3", "model_flavor": "sam3", "segmentation_name": None, "model_classes": ["cat"]}
    )
    assert sam3_classes_request("QUJD", own, ["person"])["inference_parameters"]["prompts"] == ["cat"]
    with pytest.raises(ValueError, match="needs class names"):
        sam3_classes_request("QUJD", model.baseline, [])
    for bad, message in (
        ({"model_name": "sam3", "model_flavor": "sam3"}, "segmentation_name to null"),
        ({"model_name": "sam3", "segmentation_name": None, "model_prompt": "x"}, "model_classes"),
        ({"model_name": "florence2", "model_classes": ["cat"]}, "for sam3 baselines"),
    ):
        with pytest.raises(ValueError, match=message):
            BaselineSettings.model_validate(bad)


def test_suppress_duplicates_keeps_the_best_class_per_instance():
    from vlm_gist_dagster.protocol.detections import Detections
    from vlm_gist_dagster.protocol.grounding import suppress_duplicates

    # IoU(0, 1) = 90 / 110 = 0.82; IoU(0, 2) = 50 / 150 = 0.33; IoU(1, 2) = 60 / 140 = 0.43
    boxes = [(0, 0, 10, 10), (1, 0, 11, 10), (5, 0, 15, 10)]
    found = Detections.from_boxes(["chair", "armchair", "stool"], boxes, [0.6, 0.8, 0.7])
    assert suppress_duplicates(found).label.tolist() == ["armchair", "stool"]
    assert suppress_duplicates(found, 0.3).label.tolist() == ["armchair"]  # 0.33 > 0.3 suppresses chair
    assert len(suppress_duplicates(found, None)) == 3
