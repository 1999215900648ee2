"""Baselines (docs/protocol/pipeline.md §6): request bodies, response parsing, SAM2 association (docs/protocol/pipeline.md gotcha 12)."""

from __future__ import annotations

import numpy as np
import pytest

from vlm_gist_dagster.protocol.baselines import (
    assemble_baseline_detections,
    baseline_request,
    florence2_request,
    kosmos2_request,
    parse_baseline_response,
)
from vlm_gist_dagster.protocol.detections import NO_TRACK, Detections
from vlm_gist_dagster.protocol.masks import decode_rle
from vlm_gist_dagster.protocol.segmentation import ResponseFormatError, Sam2Track, encode_mask_png
from vlm_gist_dagster.protocol.settings import load_baseline_settings

PARAMS = {"num_beams": 3, "max_new_tokens": 1024, "max_batch_size": 6}


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        (
            "baseline_settings_florence_od.json",
            {
                "images": ["QUJD"],
                "prompts": [{"task_prompt": "<OD>", "prompt_args": None}],
                "inference_parameters": PARAMS,
            },
        ),
        (
            "baseline_settings_florence_drc.json",
            {
                "images": ["QUJD"],
                "prompts": [{"task_prompt": "<DENSE_REGION_CAPTION>", "prompt_args": None}],
                "inference_parameters": PARAMS,
            },
        ),
        (
            "baseline_settings_kosmos.json",
            {
                "images": ["QUJD"],
                "prompts": ["<grounding> Describe this image in detail:"],
                "inference_parameters": PARAMS,
            },
        ),
    ],
)
def test_request_bodies_from_the_paper_settings(reference_settings_dir, file_name, expected):
    settings = load_baseline_settings(reference_settings_dir / "baseline" / file_name)
    assert baseline_request("QUJD", settings) == expected


def test_request_helpers_defaults():
    assert florence2_request("QUJD") == {
        "images": ["QUJD"],
        "prompts": [{"task_prompt": "<OD>", "prompt_args": None}],
        "inference_parameters": PARAMS,
    }
    assert kosmos2_request("QUJD", prompt="<grounding> An image of", max_new_tokens=64)[
        "inference_parameters"
    ] == {
        "num_beams": 3,
        "max_new_tokens": 64,
        "max_batch_size": 6,
    }


def test_parse_florence_and_kosmos_responses():
    florence = {
        "artifact": {
            "detections": [
                [{"box_xyxy": [1, 2, 30, 40], "label": "car"}, {"box_xyxy": [5, 5, 9, 9], "label": "wheel"}]
            ],
            "captions": [None],
            "model": "florence2",
        }
    }
    parsed = parse_baseline_response(florence, model="florence2")
    assert (parsed.model, parsed.caption) == ("florence2", None)
    assert parsed.detections.label.tolist() == ["car", "wheel"]
    assert parsed.detections.xyxy.tolist() == [[1, 2, 30, 40], [5, 5, 9, 9]]
    assert np.isnan(parsed.detections.confidence).all()  # baselines give no score
    kosmos = {
        "artifact": {
            "detections": [[{"box_xyxy": [0, 0, 10, 10], "label": "a snowman"}]],
            "captions": ["An image of a snowman warming himself by a fire."],
            "model": "kosmos2",
        }
    }
    parsed = parse_baseline_response(kosmos, model="kosmos2")
    assert parsed.caption == "An image of a snowman warming himself by a fire."
    assert parsed.detections.label.tolist() == ["a snowman"]
    assert parsed.detections.xyxy.tolist() == [[0, 0, 10, 10]]


@pytest.mark.parametrize(
    ("artifact", "field"),
    [
        ({"detections": [[]], "captions": [None]}, "artifact.model"),
        ({"detections": [[]], "captions": [None], "model": "kosmos2"}, "expected 'florence2'"),
        ({"detections": [], "captions": [None], "model": "florence2"}, "artifact.detections"),
        ({"detections": [[{"box_xyxy": [0, 0, 1, 1.5], "label": "a"}]], "model": "florence2"}, "box_xyxy"),
        ({"detections": [[{"box_xyxy": [0, 0, 1, 1]}]], "model": "florence2"}, "label"),
        ({"detections": [[]], "captions": [], "model": "florence2"}, "artifact.captions"),
        ({"detections": [[]], "captions": [3], "model": "florence2"}, r"artifact.captions\[0\]"),
    ],
)
def test_parse_rejects_malformed(artifact, field):
    with pytest.raises(ResponseFormatError, match=field):
        parse_baseline_response({"artifact": artifact}, model="florence2")


# --- SAM2 association --------------------------------------------------------------------------------------

W, H = 10, 8
DETECTIONS = Detections.from_boxes(["cup", "cup", "plate"], [(0, 0, 4, 4), (5, 0, 9, 4), (1, 4, 6, 8)])


def track(track_id: int, box: tuple[int, int, int, int]) -> Sam2Track:
    x1, y1, x2, y2 = box
    return Sam2Track(track_id, box, encode_mask_png(np.ones((y2 - y1, x2 - x1), dtype=bool)))


def test_position_association_bug_is_reproduced_when_a_track_was_dropped():
    # SAM2 dropped track 1 (empty mask): the response lists track ids 0 and 2.
    segmentation = [track(0, (1, 1, 3, 3)), track(2, (2, 5, 5, 7))]
    paper = assemble_baseline_detections(DETECTIONS, image_width=W, image_height=H, segmentation=segmentation)
    # Detection 1 gets list entry 1, which is track 2 (the plate's mask); detection 2 runs off the list.
    assert paper.detections.track_id.tolist() == [0, 2, NO_TRACK]
    assert paper.boxes.tolist() == [[1, 1, 3, 3], [2, 5, 5, 7], [1, 4, 6, 8]]
    assert paper.segmentation_misaligned
    fixed = assemble_baseline_detections(
        DETECTIONS, image_width=W, image_height=H, segmentation=segmentation, associate_by_track_id=True
    )
    assert fixed.detections.track_id.tolist() == [0, NO_TRACK, 2]
    assert fixed.boxes.tolist() == [[1, 1, 3, 3], [5, 0, 9, 4], [2, 5, 5, 7]]
    assert not fixed.segmentation_misaligned


def test_position_and_track_id_association_agree_without_drops():
    segmentation = [track(0, (1, 1, 3, 3)), track(1, (6, 1, 8, 3)), track(2, (2, 5, 5, 7))]
    paper = assemble_baseline_detections(DETECTIONS, image_width=W, image_height=H, segmentation=segmentation)
    fixed = assemble_baseline_detections(
        DETECTIONS, image_width=W, image_height=H, segmentation=segmentation, associate_by_track_id=True
    )
    assert paper.detections.equals(fixed.detections)
    assert not paper.segmentation_misaligned
    assert np.isnan(paper.detections.confidence).all() and paper.is_over_detection is None


def test_without_segmentation_boxes_are_the_model_boxes():
    result = assemble_baseline_detections(DETECTIONS, image_width=W, image_height=H, segmentation=None)
    assert result.boxes.tolist() == [[0, 0, 4, 4], [5, 0, 9, 4], [1, 4, 6, 8]]
    assert not result.detections.has_mask.any()
    assert result.detections.label.tolist() == ["cup", "cup", "plate"]
    assert result.prompts == () and result.missing_prompts == () and result.over_detections == ()


def test_masks_of_every_track_with_position_association():
    segmentation = [track(0, (1, 1, 3, 3)), track(1, (6, 1, 8, 3)), track(2, (2, 5, 5, 7))]
    result = assemble_baseline_detections(
        DETECTIONS, image_width=W, image_height=H, segmentation=segmentation
    )
    assert result.detections.mask_xyxy.tolist() == [[1, 1, 3, 3], [6, 1, 8, 3], [2, 5, 5, 7]]
    assert result.boxes.tolist() == result.detections.mask_xyxy.tolist()
    assert result.detections.track_id.tolist() == [0, 1, 2]
    # Each mask is the all-foreground crop pasted at its box: (y2 - y1) * (x2 - x1) pixels.
    assert [int(np.asarray(decode_rle(m)).sum()) for m in result.detections.mask] == [4, 4, 6]
