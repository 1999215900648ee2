"""Stage B detection rules (spec/pipeline.md §4.2–4.5), every expected value worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from vlm_gist_dagster.protocol.detection import (
    DetectorBox,
    ResponseFormatError,
    assemble_detections,
    chunk_prompts,
    chunk_width,
    gdino_request,
    gdino_response,
    instance_for_description,
    missing_and_over_detections,
    nms,
    over_detection_flags,
    parse_gdino_response,
    prompt_text,
    relative_xywh,
    select_detections,
    unique_prompts,
)
from vlm_gist_dagster.protocol.detections import NO_TRACK, Detections
from vlm_gist_dagster.protocol.segmentation import Sam2Track, encode_mask_png

NONE = (NO_TRACK,) * 4  # the mask box of a detection without a mask


def box(
    prompt: str, confidence: float, xyxy: tuple[float, float, float, float] = (0.0, 0.0, 10.0, 10.0)
) -> DetectorBox:
    return DetectorBox(prompt, xyxy, confidence)


def summary(selected: list[DetectorBox]) -> list[tuple[str, float]]:
    return [(d.prompt, d.confidence) for d in selected]


# --- §4.2 step 1: de-duplication -------------------------------------------------------------------------


def test_unique_prompts_keeps_first_occurrence_order_and_counts():
    assert unique_prompts(["b", "a", "b", "c", "b"]) == (["b", "a", "c"], {"b": 3, "a": 1, "c": 1})


# --- §4.2 step 2: chunking ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lengths", "expected_width"),
    [
        # 7 prompts of 300 chars. Feasible: w=1 (7 mod 1 = 0), w=2 (600, 7 mod 2 = 1), w=3 (900, 7 mod 3 = 1);
        # w=4 needs 1200 > 1000. Order by (leftover, −w): (0, w=1), (1, w=3), (1, w=2); w=1 is skipped → 3.
        ([300] * 7, 3),
        # 6 × 10 chars: every w feasible; leftover 0 for w ∈ {1, 2, 3, 6}; the largest, 6, wins.
        ([10] * 6, 6),
        # [600, 100, 100, 600]: w=2 → chunks 700, 700 (leftover 0); w=3 → 800, 600 (leftover 1); w=4 → 1400 ✗.
        ([600, 100, 100, 600], 2),
        # [100, 900, 50]: w=2 → 1000 (≤ 1000 is fine), 50 with leftover 1; w=3 → 1050 ✗. w=1 has leftover 0
        # but is avoided because another width is feasible → 2.
        ([100, 900, 50], 2),
        # Only w=1 feasible: [600, 600] (w=2 needs 1200) → 1.
        ([600, 600], 1),
        # Nothing feasible (a single prompt of 1001 chars) → 1.
        ([1001], 1),
        # Separators are not counted: 500 + 500 = 1000 ≤ 1000 → both in one chunk.
        ([500, 500], 2),
    ],
)
def test_chunk_width(lengths, expected_width):
    assert chunk_width(lengths) == expected_width


def test_chunk_prompts_worked_example_with_duplicates():
    # 7 unique prompts of 300 chars (w = 3, see above) plus a duplicate of the first, removed before chunking.
    prompts = [chr(ord("a") + i) * 300 for i in range(7)]
    chunks = chunk_prompts(prompts + [prompts[0]])
    assert [[p[0] for p in chunk] for chunk in chunks] == [["a", "b", "c"], ["d", "e", "f"], ["g"]]


def test_chunk_prompts_empty():
    assert chunk_prompts([]) == []


def test_prompt_text():
    assert prompt_text(["a red wooden chair", "a cat"]) == "a red wooden chair. a cat."
    assert prompt_text(["a cat"]) == "a cat."


# --- §4.2 steps 3–5: selection ------------------------------------------------------------------------


def test_duplicate_prompts_contribute_count_many_picks():
    # Targets {cat: 2, dog: 1}. Descending walk: cat .9 ✓ (cat→1), cat .7 ✓ (cat→0), cat .6 ✗, dog .5 ✓.
    # desired = ceil(3 × 1.0) = 3 = picked → no padding.
    raw = [box("a cat", 0.6), box("a dog", 0.5), box("a cat", 0.9), box("a cat", 0.7)]
    selected = select_detections(raw, ["a cat", "a dog", "a cat"])
    assert summary(selected) == [("a cat", 0.9), ("a cat", 0.7), ("a dog", 0.5)]


def test_prompt_without_detection_is_padded_with_best_other_box():
    # "a dog" finds nothing: picked = [cat .9]; desired = ceil(2 × 1.0) = 2 → pad with the best unpicked, cat .8.
    raw = [box("a cat", 0.3), box("a cat", 0.9), box("a cat", 0.8)]
    assert summary(select_detections(raw, ["a cat", "a dog"])) == [("a cat", 0.9), ("a cat", 0.8)]


def test_factor_zero_means_no_padding():
    # Same input, factor 0: desired = ceil(2 × 0) = 0 and padding needs factor > 0 → only the pick.
    raw = [box("a cat", 0.3), box("a cat", 0.9), box("a cat", 0.8)]
    assert summary(select_detections(raw, ["a cat", "a dog"], overdetect_factor=0.0)) == [("a cat", 0.9)]


def test_order_is_picked_then_padding():
    # Targets {a, b}. Walk: a .9 ✓, a .85 ✗ (a used up), b .2 ✓ → picked [a .9, b .2].
    # Factor 1.5: desired = ceil(2 × 1.5) = 3 → pad a .85 *after* b .2 although it scores higher.
    raw = [box("a", 0.9), box("a", 0.85), box("b", 0.2)]
    assert summary(select_detections(raw, ["a", "b"], overdetect_factor=1.5)) == [
        ("a", 0.9),
        ("b", 0.2),
        ("a", 0.85),
    ]


def test_padding_stops_when_boxes_run_out():
    # desired = ceil(1 × 3.0) = 3 but only 2 boxes survive → 2.
    raw = [box("a", 0.5), box("b", 0.4)]
    assert summary(select_detections(raw, ["a"], overdetect_factor=3.0)) == [("a", 0.5), ("b", 0.4)]


def test_desired_count_uses_float_ceiling():
    # 50 × 1.1 = 55.00000000000001 in binary floating point (1.1 is stored slightly above 1.1), so the
    # server's ceil gives 56, not 55.
    assert 50 * 1.1 > 55
    raw = [box("p", 0.01 * (i + 1)) for i in range(60)]
    assert len(select_detections(raw, ["p"] * 50, overdetect_factor=1.1)) == 56


def test_min_confidence_is_strictly_greater():
    # 0.3 is not > 0.3 → dropped; 0.31 survives. Targets {a, b}: b is missing, nothing left to pad with.
    raw = [box("a", 0.3), box("b", 0.31)]
    assert summary(select_detections(raw, ["a", "b"], min_confidence=0.3)) == [("b", 0.31)]
    # The default 0.0 drops zero-confidence boxes too.
    assert select_detections([box("a", 0.0)], ["a"]) == []


def test_factor_none_returns_everything_that_passes_the_filters():
    raw = [box("a", 0.1), box("b", 0.9), box("a", 0.0)]
    assert summary(select_detections(raw, ["a"], overdetect_factor=None)) == [("a", 0.1), ("b", 0.9)]


def test_nms_suppresses_across_prompts():
    # Box a: (0,0,10,10), area 100. Box b: (1,0,11,10), area 100. Intersection 9 × 10 = 90,
    # union 100 + 100 − 90 = 110, IoU = 0.818… > 0.5 → b (lower score) is suppressed although its prompt differs.
    raw = [box("a", 0.9, (0, 0, 10, 10)), box("b", 0.8, (1, 0, 11, 10))]
    assert summary(select_detections(raw, ["a", "b"], nms_iou=0.5)) == [("a", 0.9)]
    # Without NMS both prompts get their box.
    assert summary(select_detections(raw, ["a", "b"])) == [("a", 0.9), ("b", 0.8)]


def test_nms_threshold_is_strict_and_runs_after_the_confidence_filter():
    # (0,0,10,10) vs (0,0,10,5): intersection 50, union 100 + 50 − 50 = 100, IoU = 0.5, not > 0.5 → both kept.
    b = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=float)
    assert nms(b, np.array([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(b, np.array([0.9, 0.8]), 0.49).tolist() == [0]
    # A high-scoring box below min_confidence cannot suppress anything: it is filtered first.
    raw = [box("a", 0.05, (0, 0, 10, 10)), box("b", 0.5, (0, 0, 10, 10))]
    assert summary(select_detections(raw, ["b"], min_confidence=0.1, nms_iou=0.5)) == [("b", 0.5)]


def test_nms_returns_descending_score_order():
    # Disjoint boxes: nothing suppressed; result indices sorted by score 0.2 < 0.7 < 0.5 → [1, 2, 0].
    b = np.array([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21]], dtype=float)
    assert nms(b, np.array([0.2, 0.7, 0.5]), 0.5).tolist() == [1, 2, 0]


def test_confidence_ties_pick_the_later_box_first():
    # Both "a" boxes score 0.5; the server reverses an ascending argsort, so index 1 comes before index 0.
    raw = [box("a", 0.5, (0, 0, 1, 1)), box("a", 0.5, (0, 0, 2, 2))]
    assert select_detections(raw, ["a"])[0].box_xyxy == (0.0, 0.0, 2.0, 2.0)


def test_no_prompts_and_no_boxes():
    assert select_detections([], ["a"]) == []
    # No targets: nothing picked, desired = ceil(0 × 1) = 0 → empty.
    assert select_detections([box("a", 0.9)], []) == []


# --- §4.2 step 6: response artifact --------------------------------------------------------------------


def test_gdino_response_truncates_boxes_to_int():
    selected = [
        DetectorBox("a cat", (10.99, 20.5, 30.01, 40.999), 0.4567),
        DetectorBox("a dog", (0.2, 0.9, 5.0, 7.5), 0.1),
    ]
    assert gdino_response(selected) == {
        "artifact": {
            "detections": [
                [
                    {"box_xyxy": [10, 20, 30, 40], "confidence": 0.4567, "prompt": "a cat"},
                    {"box_xyxy": [0, 0, 5, 7], "confidence": 0.1, "prompt": "a dog"},
                ]
            ],
            "model": "mmgroundingdino",
        }
    }


def test_detector_box_rejects_bad_box():
    with pytest.raises(ValueError, match="box_xyxy"):
        DetectorBox("a", (0.0, 1.0, 2.0), 0.5)  # type: ignore[arg-type]


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
    response = gdino_response([DetectorBox("a cat", (1.5, 2.5, 10.9, 20.1), 0.75)])
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
    # segmentation_track=false: no track response → the paper assigns no masks at all (gotcha 13).
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
    # The file: over_detect 1.0, nms_iou_threshold null, conf_threshold 0.0 (spec §4.1).
    assert gdino_request_with_settings("QUJD", ["a cat"], settings)["inference_parameters"] == [
        {"prompts": ["a cat"], "min_confidence": 0.0, "nms_iou": None, "overdetect_factor": 1.0}
    ]
    tracks = [track(0, (1, 1, 3, 3))]
    result = assemble_detections_with_settings(
        PROMPTS, DETECTIONS, settings, image_width=IMAGE_W, image_height=IMAGE_H, track_tracks=tracks
    )
    assert result.boxes.tolist() == [[1, 1, 3, 3], [5, 0, 9, 4], [1, 4, 6, 8]]
    assert result.is_over_detection.tolist() == [False, False, True]
