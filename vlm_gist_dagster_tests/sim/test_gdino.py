"""The MM-Grounding-DINO server's selection rule (:mod:`vlm_gist_dagster.sim.gdino`), every expected value
worked out by hand from the public server's ``filter_detections`` and ``determine_bin_width``
(``models/mmgroundingdino/mmgroundingdino/model.py:200-323`` of AIS-Bonn/nimbro_vision_servers)."""

from __future__ import annotations

import numpy as np
import pytest

from vlm_gist_dagster.sim.gdino import (
    DetectorBox,
    chunk_prompts,
    chunk_width,
    gdino_response,
    nms,
    prompt_text,
    select_detections,
    unique_prompts,
)


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


# --- the server's request checks (model.py:123-195) ----------------------------------------------------


def test_parse_infer_request_defaults_and_wrapping():
    from vlm_gist_dagster.sim.gdino import GdinoParameters, parse_infer_request

    # a single image string, a single parameter dict and a single prompt string are wrapped; min_confidence
    # defaults to 0.05 (model.py:39), nms_iou and overdetect_factor to None (:40-41)
    images, params = parse_infer_request({"images": "QUJD", "inference_parameters": {"prompts": "a cat"}})
    assert images == ["QUJD"]
    assert params == [GdinoParameters(("a cat",), 0.05, None, None)]
    # one image with two parameter sets: the image is used twice (:151-153, :193-194)
    images, params = parse_infer_request(
        {"images": ["A"], "inference_parameters": [{"prompts": []}, {"prompts": ["b"]}]}
    )
    assert images == ["A", "A"] and [p.prompts for p in params] == [(), ("b",)]
    # two images with one parameter set: the parameters are reused (:154-156)
    images, params = parse_infer_request(
        {"images": ["A", "B"], "inference_parameters": [{"prompts": ["c", "c"]}]}
    )
    assert images == ["A", "B"] and [p.prompts for p in params] == [("c", "c"), ("c", "c")]
