"""Stage B detection rules (docs/protocol/pipeline.md §4.2–4.5), every expected value worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from vlm_gist_dagster.protocol.detection import (
    ResponseFormatError,
    assemble_detections,
    gdino_request,
    instance_for_description,
    missing_and_over_detections,
    over_detection_flags,
    parse_gdino_response,
    relative_xywh,
)
from vlm_gist_dagster.protocol.detections import NO_TRACK, Detections
from vlm_gist_dagster.protocol.segmentation import Sam2Track, encode_mask_png

NONE = (NO_TRACK,) * 4  # the mask box of a detection without a mask


# --- client side: request and response (§4.2) ------------------------------------------------------------


def test_gdino_request_body():
    assert gdino_request("QUJD", ["a red chair", "a cat", "a red chair"], min_confidence=0, nms_iou=0.5) == {
        "images": ["QUJD"],
        "inference_parameters": [
            {
                "prompts": ["a red chair", "a cat", "a red chair"],
                "min_confidence": 0.0,
                "nms_iou": 0.5,
                "overdetect_factor": 1.0,
            }
        ],
    }
    # The server type-checks floats: ints are converted, None stays None.
    body = gdino_request("QUJD", ["a"], min_confidence=0, overdetect_factor=None)["inference_parameters"][0]
    assert type(body["min_confidence"]) is float and body["overdetect_factor"] is None


def test_gdino_request_rejects_empty_prompts():
    with pytest.raises(ValueError, match="no prompts"):
        gdino_request("QUJD", [])
    with pytest.raises(ValueError, match="prompt 1"):
        gdino_request("QUJD", ["a", ""])


def test_parse_gdino_response_round_trip():
    # The body the real server returns (docs/nimbro_vision_api.md, "mmgroundingdino"): int boxes.
    response = {
        "artifact": {
            "detections": [[{"box_xyxy": [1, 2, 10, 20], "confidence": 0.75, "prompt": "a cat"}]],
            "model": "mmgroundingdino",
        }
    }
    parsed = parse_gdino_response(response, prompts=["a cat"])
    assert parsed.label.tolist() == ["a cat"]
    assert parsed.xyxy.tolist() == [[1, 2, 10, 20]] and parsed.confidence.tolist() == [0.75]


@pytest.mark.parametrize(
    ("response", "field"),
    [
        ("nope", "JSON object"),
        ({"detections": []}, "artifact"),
        ({"artifact": {"detections": []}}, "artifact.detections"),
        ({"artifact": {"detections": [None]}}, r"artifact.detections\[0\]"),
        (
            {"artifact": {"detections": [[{"box_xyxy": [0, 0, 1], "confidence": 0.5, "prompt": "a"}]]}},
            "box_xyxy",
        ),
        (
            {"artifact": {"detections": [[{"box_xyxy": [0, 0, 1, 1.0], "confidence": 0.5, "prompt": "a"}]]}},
            "box_xyxy",
        ),
        (
            {"artifact": {"detections": [[{"box_xyxy": [0, 0, 1, 1], "confidence": "0.5", "prompt": "a"}]]}},
            "confidence",
        ),
        ({"artifact": {"detections": [[{"box_xyxy": [0, 0, 1, 1], "confidence": 0.5}]]}}, "prompt"),
        (
            {
                "artifact": {
                    "detections": [[{"box_xyxy": [0, 0, 1, 1], "confidence": 0.5, "prompt": "zebra"}]]
                }
            },
            "not requested",
        ),
    ],
)
def test_parse_gdino_response_rejects_malformed(response, field):
    with pytest.raises(ResponseFormatError, match=field):
        parse_gdino_response(response, prompts=["a"])


# --- §4.4 step 4: direct / over-detection flags, missing prompts -------------------------------------


def test_over_detection_flags_duplicates_and_threshold():
    # Prompts a, b, a. Labels/conf: 0 a .5, 1 a .9, 2 b .4, 3 a .2, 4 b .1.
    # a → best unassigned "a" = 1 (.9); b → 2 (.4); a → 0 (.5). Direct {0, 1, 2}; over {3, 4}.
    labels = ["a", "a", "b", "a", "b"]
    confidences = [0.5, 0.9, 0.4, 0.2, 0.1]
    assert over_detection_flags(["a", "b", "a"], labels, confidences, over_detect=1.0) == [
        False,
        False,
        False,
        True,
        True,
    ]
    # conf_threshold 0.4 is strict: b's .4 does not qualify, its .1 neither → both b detections are over.
    assert over_detection_flags(
        ["a", "b", "a"], labels, confidences, over_detect=1.0, conf_threshold=0.4
    ) == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_over_detection_flags_ties_take_the_first_and_factor_zero_flags_all():
    assert over_detection_flags(["a"], ["a", "a"], [0.5, 0.5], over_detect=1.0) == [False, True]
    assert over_detection_flags(["a"], ["a"], [0.9], over_detect=0.0) == [True]
    assert over_detection_flags(["a"], ["a"], [0.9], over_detect=None) == [True]


def test_missing_and_over_detections_are_multiset_differences():
    # Prompts a, a, b, c vs labels a, b, b, d: a ✓ a ✗(missing) b ✓ c ✗(missing); left over: b, d.
    assert missing_and_over_detections(["a", "a", "b", "c"], ["a", "b", "b", "d"]) == (["a", "c"], ["b", "d"])


# --- §4.3–4.4: association with SAM2 tracks -------------------------------------------------------------


IMAGE_W, IMAGE_H = 10, 8


def track(track_id: int, box: tuple[int, int, int, int]) -> Sam2Track:
    """A track whose cropped mask is all foreground, of the server's shape (y2 − y1) × (x2 − x1)."""
    x1, y1, x2, y2 = box
    return Sam2Track(track_id, box, encode_mask_png(np.ones((y2 - y1, x2 - x1), dtype=bool)))


DETECTIONS = Detections.from_boxes(
    ["a red cup", "a blue cup", "a red cup"], [(0, 0, 4, 4), (5, 0, 9, 4), (1, 4, 6, 8)], [0.9, 0.8, 0.3]
)
PROMPTS = ["a red cup", "a blue cup", "a green cup"]


def test_tracks_are_associated_by_track_id_when_a_middle_track_is_missing():
    # SAM2 dropped track 1 (empty mask): the track response holds ids 0 and 2 only.
    tracks = [track(0, (1, 1, 3, 3)), track(2, (2, 5, 5, 7))]
    result = assemble_detections(
        PROMPTS,
        DETECTIONS,
        image_width=IMAGE_W,
        image_height=IMAGE_H,
        update_tracks=tracks,
        track_tracks=tracks,
    )
    dets = result.detections
    assert dets.track_id.tolist() == [0, NO_TRACK, 2]
    assert dets.mask_xyxy.tolist() == [[1, 1, 3, 3], list(NONE), [2, 5, 5, 7]]
    # Preferred boxes: mask box where there is a mask, else the detector box.
    assert result.boxes.tolist() == [[1, 1, 3, 3], [5, 0, 9, 4], [2, 5, 5, 7]]
    # Detection 2's mask: crop of (7 − 5) × (5 − 2) = 2 × 3 pasted at x = 2, y = 5 → rows 5–6, columns 2–4.
    expected = np.zeros((IMAGE_H, IMAGE_W), dtype=bool)
    expected[5:7, 2:5] = True
    rle = dets.mask[2]
    assert (
        coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool).tolist()
        == expected.tolist()
    )
    assert dets.mask[1] is None and not dets.has_mask[1]
    # Flags (over_detect 1.0): red → det 0 (.9), blue → det 1, green → nothing; det 2 is an over-detection.
    assert result.is_over_detection.tolist() == [False, False, True]
    assert result.missing_prompts == ("a green cup",)
    assert result.over_detections == ("a red cup",)
    # Relative xywh of det 2's preferred box (2, 5, 5, 7) on 10 × 8: (2/10, 5/8, 3/10, 2/8).
    assert result.relative_xywh(IMAGE_W, IMAGE_H)[2].tolist() == [0.2, 0.625, 0.3, 0.25]


def test_track_fallback_bug_is_reproduced_by_default():
    update = [track(0, (1, 1, 3, 3)), track(1, (6, 1, 8, 3)), track(2, (2, 5, 5, 7))]
    # segmentation_track=false: no track response → the paper assigns no masks at all (docs/protocol/pipeline.md gotcha 13).
    paper = assemble_detections(
        PROMPTS, DETECTIONS, image_width=IMAGE_W, image_height=IMAGE_H, update_tracks=update
    )
    assert not paper.detections.has_mask.any()
    assert paper.boxes.tolist() == DETECTIONS.xyxy.tolist()
    fixed = assemble_detections(
        PROMPTS,
        DETECTIONS,
        image_width=IMAGE_W,
        image_height=IMAGE_H,
        update_tracks=update,
        reproduce_track_fallback_bug=False,
    )
    assert fixed.detections.track_id.tolist() == [0, 1, 2]
    # The tracker dropped id 1 that the update segmented: only the fix falls back to the update mask.
    tracked = [update[0], update[2]]
    paper = assemble_detections(
        PROMPTS,
        DETECTIONS,
        image_width=IMAGE_W,
        image_height=IMAGE_H,
        update_tracks=update,
        track_tracks=tracked,
    )
    assert paper.detections.track_id.tolist() == [0, NO_TRACK, 2]
    fixed = assemble_detections(
        PROMPTS,
        DETECTIONS,
        image_width=IMAGE_W,
        image_height=IMAGE_H,
        update_tracks=update,
        track_tracks=tracked,
        reproduce_track_fallback_bug=False,
    )
    assert fixed.detections.mask_xyxy.tolist() == [[1, 1, 3, 3], [6, 1, 8, 3], [2, 5, 5, 7]]


def test_use_bbox_false_keeps_detector_boxes():
    tracks = [track(0, (1, 1, 3, 3))]
    result = assemble_detections(
        PROMPTS,
        DETECTIONS,
        image_width=IMAGE_W,
        image_height=IMAGE_H,
        track_tracks=tracks,
        segmentation_use_bbox=False,
    )
    assert result.boxes[0].tolist() == [0, 0, 4, 4]
    assert result.detections.mask_xyxy[0].tolist() == [1, 1, 3, 3]


def test_factor_zero_flags_every_detection_as_over():
    result = assemble_detections(
        PROMPTS, DETECTIONS, image_width=IMAGE_W, image_height=IMAGE_H, over_detect=0.0
    )
    assert result.is_over_detection.tolist() == [True, True, True]


def test_relative_xywh():
    # (10, 20, 30, 60) on 100 × 200 → (10/100, 20/200, 20/100, 40/200).
    assert relative_xywh((10, 20, 30, 60), 100, 200) == (0.1, 0.1, 0.2, 0.2)


def test_instance_for_description_takes_the_first_match():
    sd = [
        {"object_name": "cup 1", "description": "a cup"},
        {"object_name": "plate", "description": "a plate"},
        {"object_name": "cup 2", "description": "a cup"},
    ]
    assert instance_for_description(sd, "a cup") is sd[0]
    assert instance_for_description(sd, "a plate") is sd[1]
    with pytest.raises(LookupError):
        instance_for_description(sd, "a fork")


def test_instance_for_description_random_rule_of_vlm_gist_py():
    import random

    sd = [
        {"object_name": "cup 1", "description": "a cup"},
        {"object_name": "plate", "description": "a plate"},
        {"object_name": "cup 2", "description": "a cup"},
    ]
    # Several candidates: one randrange over [cup 1, cup 2], exactly as the reference draws it.
    expected = [sd[0], sd[2]][random.Random(5).randrange(2)]
    assert instance_for_description(sd, "a cup", rng=random.Random(5)) is expected
    # A single candidate draws nothing: the generator's state is untouched.
    rng = random.Random(5)
    assert instance_for_description(sd, "a plate", rng=rng) is sd[1]
    assert rng.random() == random.Random(5).random()


# --- the paper's benchmark detection settings file -----------------------------------------------------


def test_request_and_assembly_from_the_benchmark_settings(reference_settings_dir):
    from vlm_gist_dagster.protocol.detection import (
        assemble_detections_with_settings,
        gdino_request_with_settings,
    )
    from vlm_gist_dagster.protocol.settings import load_detection_settings

    settings = load_detection_settings(
        reference_settings_dir / "detection" / "detection_settings_mmgd_large.json"
    )
    # The file: over_detect 1.0, nms_iou_threshold null, conf_threshold 0.0 (docs/protocol/pipeline.md §4.1).
    assert gdino_request_with_settings("QUJD", ["a cat"], settings)["inference_parameters"] == [
        {"prompts": ["a cat"], "min_confidence": 0.0, "nms_iou": None, "overdetect_factor": 1.0}
    ]
    tracks = [track(0, (1, 1, 3, 3))]
    result = assemble_detections_with_settings(
        PROMPTS, DETECTIONS, settings, image_width=IMAGE_W, image_height=IMAGE_H, track_tracks=tracks
    )
    assert result.boxes.tolist() == [[1, 1, 3, 3], [5, 0, 9, 4], [1, 4, 6, 8]]
    assert result.is_over_detection.tolist() == [False, False, True]
