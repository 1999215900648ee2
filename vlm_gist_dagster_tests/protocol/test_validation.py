"""Stage C validation (docs/protocol/pipeline.md §5): crops, messages, answer parsing, keep / update / reject.

Every expected action is worked out by hand in the comments, following §5.5 step by step.
"""

from __future__ import annotations

import base64
import random

import cv2
import numpy as np
import pytest

from vlm_gist_dagster.protocol.masks import encode_rle
from vlm_gist_dagster.protocol.settings import load_validation_settings
from vlm_gist_dagster.protocol.validation import (
    assign_actions,
    background_image,
    crop_box,
    crop_file_name,
    encode_crop_png,
    name_groups,
    object_name_for_description,
    parse_validation_response,
    pixel_box_from_relative,
    validation_crop,
    validation_crop_with_settings,
    validation_messages,
    validation_messages_with_settings,
)

# --- §5.4 parsing ---------------------------------------------------------------------------------------

NAMES = ["chair 1", "chair 2", "table"]


def test_exact_answer():
    parsed = parse_validation_response("table", NAMES)
    assert parsed.validation == "table"
    assert parsed.report == ()


def test_identifier_prefix_is_removed():
    # "object_name: chair 2" → ": chair 2" → normalised "chair2" = key("chair 2"), distance 0.
    parsed = parse_validation_response("object_name: chair 2", NAMES)
    assert parsed.validation == "chair 2"
    assert parsed.report == ("Response contains the identifier.", "Matched response to target.")


def test_json_answer_with_the_identifier():
    parsed = parse_validation_response('{"object_name": "chair 1"}', NAMES)
    assert parsed.validation == "chair 1"
    assert parsed.report[0] == "Response is JSON that contains the identifier."
    # A JSON object without the identifier is matched as plain text: key('{"name": "table"}') =
    # "nametable", 4 edits from "table" > 2 → no match.
    assert parse_validation_response('{"name": "table"}', NAMES).validation is None


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # key("No.") = "no"; distances: "chair1" 6, "chair2" 6, "table" 5, "na" 1 → n/a (reject).
        ("No.", "n/a"),
        # key("") = ""; distance to "na" is 2 ≤ 2 → n/a.
        ("", "n/a"),
        # "N/A" → "na", distance 0.
        ("N/A", "n/a"),
        # "chair1" (no space) normalises to key("chair 1") = "chair1": distance 0.
        ("chair1", "chair 1"),
        # "Chair 2." → "chair2": distance 0.
        ("Chair 2.", "chair 2"),
        # "tabel" vs "table": 2 substitutions (e↔l) = 2 ≤ 2 → table.
        ("tabel", "table"),
        # "sofa": to "na" needs 3 edits (delete s, o; f→n), to "table" 4, to "chair1" 6 → no match.
        ("sofa", None),
    ],
)
def test_levenshtein_threshold_two(answer, expected):
    assert parse_validation_response(answer, NAMES).validation == expected


def test_ties_go_to_the_first_candidate_and_none_text():
    # key("chair") is 1 edit from both "chair1" and "chair2": the first name wins.
    assert parse_validation_response("chair", NAMES).validation == "chair 1"
    assert parse_validation_response(None, NAMES).validation is None


# --- §5.5 actions ------------------------------------------------------------------------------------------


def test_name_groups():
    groups, group_of = name_groups(["chair 1", "table", "chair 2", "cup 10", "cup 9", "lamp"])
    assert groups == {"chair": ["chair 1", "chair 2"], "cup": ["cup 10", "cup 9"]}
    assert group_of == {"chair 1": "chair", "chair 2": "chair", "cup 10": "cup", "cup 9": "cup"}


def test_simple_keep():
    # Two unique agreements (step 2) → keep both.
    actions = assign_actions(["chair 1", "table"], ["chair 1", "table"], NAMES, [0.5, 0.6])
    assert (actions.keep, actions.update, actions.reject, actions.error) == ((0, 1), {}, (), ())
    assert actions.actions == (
        "Accept unique validation of detection 'chair 1'.",
        "Accept unique validation of detection 'table'.",
    )


def test_reject_invalid_and_error_on_none():
    # Step 1: None → error, "n/a" → reject; detection 2 agrees → keep.
    actions = assign_actions([None, "n/a", "table"], ["chair 1", "chair 2", "table"], NAMES, [0.9, 0.9, 0.9])
    assert (actions.keep, actions.update, actions.reject, actions.error) == ((2,), {}, (1,), (0,))
    assert actions.labels_validated(["chair 1", "chair 2", "table"]) == [None, None, "table"]
    assert actions.actions[0] == "Reject detection 'chair 1' after completion error."
    assert actions.actions[1] == "Reject invalidated detection 'chair 2'."
    assert actions.outcomes == ("error", "reject", "keep")  # the decision as a field, not prose


def test_agreement_duplicates_resolved_by_confidence():
    names = ["cup 1", "cup 2", "plate"]
    labels = ["cup 1", "cup 1", "plate"]
    responses = ["cup 1", "cup 1", "plate"]
    # Step 2: detections 0 and 1 both agree on "cup 1" → duplicates; 2 agrees alone → keep, used = [plate].
    # Step 3, by confidence 0.8 (j=1) then 0.3 (j=0): j=1 "cup 1" unused → keep; j=0 "cup 1" used, group
    # "cup" = [cup 1, cup 2]; first member unused and in no response: "cup 2" → update j=0 → "cup 2".
    actions = assign_actions(responses, labels, names, [0.3, 0.8, 0.5])
    assert actions.keep == (2, 1)
    assert actions.update == {0: "cup 2"}
    assert actions.reject == () and actions.error == ()
    assert actions.labels_validated(labels) == ["cup 2", "cup 1", "plate"]
    assert actions.surviving(labels) == [(0, "cup 2"), (1, "cup 1"), (2, "plate")]
    assert actions.outcomes == ("update", "keep", "keep")
    assert actions.actions[1] == "Accept best duplicate validation of detection 'cup 1'."
    assert actions.actions[0] == (
        "Update duplicate validation of detection 'cup 1' to unassigned group member 'cup 2' "
        "not featured in all validation responses."
    )


def test_duplicate_prefers_a_group_member_in_no_response():
    names = ["cup 1", "cup 2", "cup 3"]
    labels = ["cup 1", "cup 1", "cup 3"]
    responses = ["cup 1", "cup 1", "cup 2"]
    # Step 2: j=0, j=1 agree on "cup 1" (2 agreements) → duplicates; j=2 disagrees (cup 2 ≠ cup 3).
    # Step 3 by confidence 0.9 (j=0), 0.5 (j=1): j=0 keep "cup 1". j=1: members unused = cup 2, cup 3;
    # "cup 2" appears in the responses, so the first unused member in no response is "cup 3".
    # Step 4: j=2 answers "cup 2", unused → update to "cup 2".
    actions = assign_actions(responses, labels, names, [0.9, 0.5, 0.7])
    assert actions.keep == (0,)
    assert actions.update == {1: "cup 3", 2: "cup 2"}


def test_duplicate_without_group_is_rejected():
    # "plate" has no group; the 0.9 duplicate is kept, the 0.2 one rejected.
    actions = assign_actions(["plate", "plate"], ["plate", "plate"], ["plate", "cup"], [0.2, 0.9])
    assert (actions.keep, actions.reject) == ((1,), (0,))
    assert (
        actions.actions[0]
        == "Reject duplicate validation of detection 'plate' that cannot be associated to a group."
    )


def test_duplicate_with_all_group_members_used_is_rejected():
    # Group "cup" = [cup 1, cup 2]; detections 0–2 all agree on "cup 1" (3 duplicates) and detection 3
    # agrees on "cup 2" alone (keep, used = [cup 2]). By confidence 0.9 (j=1), 0.8 (j=0), 0.1 (j=2):
    # j=1 keep "cup 1"; j=0: cup 2 is used, no member left in no response, no unused member → reject;
    # j=2 likewise → reject.
    labels = ["cup 1", "cup 1", "cup 1", "cup 2"]
    actions = assign_actions(labels, labels, ["cup 1", "cup 2"], [0.8, 0.9, 0.1, 0.5])
    assert actions.keep == (3, 1)
    assert actions.reject == (0, 2)


def test_update_within_a_group_keeps_an_unused_original_label():
    # j=0 agrees alone on "chair 1" → keep (used = [chair 1]). j=1 (label chair 2) answers "chair 1":
    # step 4: "chair 1" is used → no update; step 5: "chair 1" is in group "chair" and the label
    # "chair 2" is an unused member → keep with the original label.
    actions = assign_actions(["chair 1", "chair 1"], ["chair 1", "chair 2"], NAMES, [0.4, 0.6])
    assert actions.keep == (0, 1)
    assert actions.update == {}
    assert actions.actions[1] == (
        "Accept detection label 'chair 2' which is an unassigned group member of group 'chair' "
        "for validation response 'chair 1'."
    )


def test_update_within_a_group_to_the_first_unused_member():
    # As above but j=1 is labelled "table" (not in the group): step 5 updates to the first unused
    # member of group "chair", which is "chair 2".
    actions = assign_actions(["chair 1", "chair 1"], ["chair 1", "table"], NAMES, [0.4, 0.6])
    assert actions.keep == (0,)
    assert actions.update == {1: "chair 2"}


def test_group_exhausted_is_rejected():
    # j=0, j=1 keep chair 1 / chair 2 (unique agreements); j=2 (table) answers "chair 1": used; step 5:
    # group "chair" has no unused member → reject.
    actions = assign_actions(
        ["chair 1", "chair 2", "chair 1"], ["chair 1", "chair 2", "table"], NAMES, [0.5, 0.5, 0.9]
    )
    assert (actions.keep, actions.update, actions.reject) == ((0, 1), {}, (2,))


def test_corrections_go_by_descending_confidence():
    names = ["cup", "table", "plate"]
    # Both disagree and answer "cup". Step 4 by confidence: j=1 (0.7) → update "cup"; j=0 (0.3): "cup"
    # used → step 5: "cup" has no group → reject. "cup" occurs twice among the responses → "best".
    actions = assign_actions(["cup", "cup"], ["table", "plate"], names, [0.3, 0.7])
    assert (actions.keep, actions.update, actions.reject) == ((), {1: "cup"}, (0,))
    assert actions.actions[1] == "Update detection 'plate' to best correction 'cup'."
    # Without confidences the order is the detection order: j=0 gets "cup".
    actions = assign_actions(["cup", "cup"], ["table", "plate"], names, None)
    assert (actions.update, actions.reject) == ({0: "cup"}, (1,))
    # A single correction is not "best": the reference leaves a double space.
    single = assign_actions(["cup"], ["table"], names, [0.5])
    assert single.actions == ("Update detection 'table' to  correction 'cup'.",)


def test_confidence_ties_take_the_later_detection_first():
    # Equal confidences: the reversed ascending argsort puts j=1 first → keep j=1, reject j=0.
    actions = assign_actions(["cup", "cup"], ["cup", "cup"], ["cup"], [0.5, 0.5])
    assert (actions.keep, actions.reject) == ((1,), (0,))


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="labels"):
        assign_actions(["a"], ["a", "b"], ["a", "b"])


# --- §5.2 crops ----------------------------------------------------------------------------------------------


def test_crop_box_scaling_clipping_and_rounding():
    assert crop_box((2, 3, 7, 9), 10, 10) == (2, 3, 7, 9)
    # Centre (4, 3), size 4 × 2 → ×2 → 8 × 4 → (0, 1, 8, 5).
    assert crop_box((2, 2, 6, 4), 10, 10, bbox_scale=2.0) == (0, 1, 8, 5)
    # Centre (2, 2), size 4 → ×3 → 12 → (−4, −4, 8, 8) → clipped (0, 0, 8, 8).
    assert crop_box((0, 0, 4, 4), 10, 10, bbox_scale=3.0) == (0, 0, 8, 8)
    # Centre 1.5, size 6 → (−1.5, −1.5, 4.5, 4.5) → clipped (0, 0, 4.5, 4.5) → 4.5 rounds half to even → 4.
    assert crop_box((0, 0, 3, 3), 10, 10, bbox_scale=2.0) == (0, 0, 4, 4)
    # Clipping to the image size: 20 → 10, 12 → 8.
    assert crop_box((5, 5, 20, 12), 10, 8) == (5, 5, 10, 8)


def random_image(height: int = 12, width: int = 16, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_crop_without_mask_is_the_image_region():
    image = random_image()
    crop = validation_crop(image, (3, 2, 9, 7))
    assert crop.shape == (5, 6, 3)
    assert np.array_equal(crop, image[2:7, 3:9])


def test_background_desaturated_and_darkened_by_hand():
    # Pure red in BGR, (0, 0, 200): HSV = (0, 255, 200). Saturation × 0 → S = 0, so HSV→BGR gives the
    # gray (V, V, V) = (200, 200, 200); brightness × 0.5 → (100, 100, 100).
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    image[:, :, 2] = 200
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    crop = validation_crop(
        image, (0, 0, 4, 4), mask=mask, background_saturation=0.0, background_brightness=0.5
    )
    assert crop[1, 1].tolist() == [0, 0, 200]  # inside the mask: unchanged
    assert crop[0, 0].tolist() == [100, 100, 100]  # outside: background
    assert crop[3, 3].tolist() == [100, 100, 100]


def test_shipped_factors_still_do_the_hsv_round_trip():
    # With 1.0 / 1.0 the background is OpenCV's BGR→HSV→BGR round trip (computed here by cv2 directly),
    # which is lossy: pixels outside the mask can change, pixels inside never do.
    image = random_image()
    round_trip = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2HSV), cv2.COLOR_HSV2BGR)
    assert not np.array_equal(round_trip, image)
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[3:8, 4:10] = True
    crop = validation_crop(image, (2, 2, 12, 10), mask=mask)
    region_mask = mask[2:10, 2:12]
    assert np.array_equal(crop[region_mask], image[2:10, 2:12][region_mask])
    assert np.array_equal(crop[~region_mask], round_trip[2:10, 2:12][~region_mask])
    assert np.array_equal(background_image(image), round_trip)


def test_mask_cropped_to_its_box_and_rle_masks_are_accepted():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    image[:, :, 2] = 200
    box = (1, 1, 3, 4)  # a 3 × 2 (h × w) box-relative mask
    box_mask = np.array([[True, False], [True, True], [False, False]])
    full = np.zeros((4, 4), dtype=bool)
    full[1:4, 1:3] = box_mask
    kwargs = {"background_saturation": 0.0, "background_brightness": 0.5}
    from_box = validation_crop(image, box, mask=box_mask, **kwargs)
    from_full = validation_crop(image, box, mask=full, **kwargs)
    from_rle = validation_crop(image, box, mask=encode_rle(full), **kwargs)
    assert np.array_equal(from_box, from_full) and np.array_equal(from_box, from_rle)
    # Row 0 of the crop: mask [True, False] → [red, gray 100].
    assert from_box[0].tolist() == [[0, 0, 200], [100, 100, 100]]
    with pytest.raises(ValueError, match="fits neither"):
        validation_crop(image, box, mask=np.ones((2, 2), dtype=bool))


def test_crop_with_the_paper_settings(reference_settings_dir):
    settings = load_validation_settings(
        reference_settings_dir / "validation" / "validation_settings_gemini_2_5_flash.json"
    )
    image = random_image()
    assert np.array_equal(validation_crop_with_settings(image, (3, 2, 9, 7), settings), image[2:7, 3:9])


def test_crop_png_and_file_name():
    crop = random_image(5, 6)
    assert np.array_equal(
        cv2.imdecode(np.frombuffer(encode_crop_png(crop), np.uint8), cv2.IMREAD_COLOR), crop
    )
    with pytest.raises(ValueError, match="empty crop"):
        encode_crop_png(crop[0:0])
    assert crop_file_name("000000000139.jpg", 0) == "000000000139_crop_0.png"
    assert crop_file_name("00012.jpeg", 2) == "00012._crop_2.png"


def test_pixel_box_from_relative_rounds_half_to_even():
    # x1 = round(0.25·10) = round(2.5) = 2; y1 = round(0.35·10) = round(3.5) = 4;
    # x2 = round(2 + 0.5·10) = 7; y2 = round(4 + 0.45·10) = round(8.5) = 8.
    assert pixel_box_from_relative((0.25, 0.35, 0.5, 0.45), 10, 10) == (2, 4, 7, 8)


# --- §5.3 messages -------------------------------------------------------------------------------------------

SYSTEM = (
    "You are a robot's visual perception system that identifies and analyzes objects in an image. "
    "Be concise and factual."
)
VALIDATION_PROMPT = (
    "Is this cropped image taken from the full image above a tight bounding box around any one of the "
    "objects mentioned in the description? If yes, your answer must only contain the one corresponding "
    "object_name. Otherwise, respond with 'n/a'."
)


def test_messages_on_the_wire():
    full = "data:image/jpeg;base64," + base64.b64encode(b"full").decode()
    crop_b64 = base64.b64encode(b"crop").decode()
    description = [{"object_name": "cup", "description": "a red cup"}]
    assert validation_messages(full, crop_b64, description) == [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"detail": "high", "url": full}},
                {
                    "type": "text",
                    "text": "Provide a JSON description of all object instances in the image above.",
                },
            ],
        },
        {
            "role": "assistant",
            "content": '[\n    {\n        "object_name": "cup",\n        "description": "a red cup"\n    }\n]',
        },
        {
            "role": "user",
            "content": [
                # Bare base64 gets nimbro_api's JPEG data-URI prefix (docs/protocol/pipeline.md gotcha 5).
                {
                    "type": "image_url",
                    "image_url": {"detail": "high", "url": "data:image/jpeg;base64," + crop_b64},
                },
                {"type": "text", "text": VALIDATION_PROMPT},
            ],
        },
    ]


@pytest.mark.parametrize(
    "file_name", ["validation_settings_gemini_2_5_flash.json", "validation_settings_gpt_5_mini_none.json"]
)
def test_messages_from_the_paper_settings_match_the_defaults(reference_settings_dir, file_name):
    settings = load_validation_settings(reference_settings_dir / "validation" / file_name)
    description = [{"object_name": "cup", "description": "a red cup"}]
    assert validation_messages_with_settings("QUJD", "REVG", description, settings) == validation_messages(
        "QUJD", "REVG", description
    )


# --- §5.1 inputs --------------------------------------------------------------------------------------------


def test_object_name_for_description():
    sd = [
        {"object_name": "cup 1", "description": "a cup"},
        {"object_name": "plate", "description": "a plate"},
        {"object_name": "cup 2", "description": "a cup"},
    ]
    assert object_name_for_description(sd, "a cup") == "cup 1"
    assert object_name_for_description(sd, "a plate") == "plate"
    # With an rng, the reference's random.randrange over the candidates, in description order.
    expected = ["cup 1", "cup 2"][random.Random(3).randrange(2)]
    assert object_name_for_description(sd, "a cup", rng=random.Random(3)) == expected
    with pytest.raises(LookupError):
        object_name_for_description(sd, "a fork")
