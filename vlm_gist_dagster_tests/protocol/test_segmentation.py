"""SAM2 mask/box rules and message shapes (docs/protocol/pipeline.md §4.3, gotchas 11–12), worked by hand."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from vlm_gist_dagster.protocol.segmentation import (
    DegenerateMaskError,
    ResponseFormatError,
    Sam2Track,
    decode_mask_png,
    decode_sam2_track,
    encode_mask_png,
    encode_sam2_mask,
    mask_to_box,
    parse_sam2_response,
    sam2_response,
    sam2_track_request,
    sam2_update_request,
    tracks_by_id,
)


def block_mask(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((height, width), dtype=bool)
    m[rows, cols] = True
    return m


def test_requests():
    assert sam2_update_request("QUJD", [(10, 20, 30, 40), (0, 0, 5, 5)]) == {
        "image": "QUJD",
        "prompts": [{"object_id": 0, "bbox": [10, 20, 30, 40]}, {"object_id": 1, "bbox": [0, 0, 5, 5]}],
    }
    assert sam2_track_request(["QUJD", "REVG"]) == {"images": ["QUJD", "REVG"]}
    assert sam2_track_request("QUJD") == {"images": ["QUJD"]}


def test_mask_to_box_max_is_inclusive():
    # A 3 × 4 block: rows 1, 2, 3 and columns 2, 3, 4, 5 → (min x, min y, max x, max y) = (2, 1, 5, 3).
    assert mask_to_box(block_mask(6, 8, slice(1, 4), slice(2, 6))) == (2, 1, 5, 3)
    assert mask_to_box(np.zeros((6, 8), dtype=bool)) is None


def test_encoded_crop_is_one_row_and_column_short():
    full = block_mask(6, 8, slice(1, 4), slice(2, 6))
    box, png_b64 = encode_sam2_mask(full)
    assert box == (2, 1, 5, 3)
    # Decode with PIL (independent of our cv2 path): a single-channel 8-bit PNG of mask[1:3, 2:5],
    # i.e. (3 − 1) × (5 − 2) = 2 × 3 pixels, all foreground = 255.
    image = Image.open(io.BytesIO(base64.b64decode(png_b64)))
    assert image.mode == "L"
    assert image.size == (3, 2)  # PIL size is (width, height)
    assert np.array(image).tolist() == [[255, 255, 255], [255, 255, 255]]


def test_png_holds_0_and_255():
    crop = np.array([[True, False], [False, True]])
    image = Image.open(io.BytesIO(base64.b64decode(encode_mask_png(crop))))
    assert np.array(image).tolist() == [[255, 0], [0, 255]]
    assert decode_mask_png(encode_mask_png(crop)).tolist() == crop.tolist()


def test_decode_track_pastes_the_short_crop_into_the_full_image():
    full = block_mask(6, 8, slice(1, 4), slice(2, 6))
    box, png_b64 = encode_sam2_mask(full)
    track = Sam2Track(track_id=4, box_xyxy=box, mask_png_b64=png_b64)
    rle = decode_sam2_track(track, image_width=8, image_height=6)
    assert track.box_xyxy == (2, 1, 5, 3)  # the mask box is the track's
    # Expected by hand: rows 1–2, columns 2–4 (the last row 3 and column 5 are lost): 2 × 3 = 6 pixels.
    expected = block_mask(6, 8, slice(1, 3), slice(2, 5))
    assert rle["size"] == [6, 8]
    as_coco = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    assert coco_mask.decode(as_coco).astype(bool).tolist() == expected.tolist()
    assert int(coco_mask.area(as_coco)) == 6


def test_empty_and_degenerate_masks():
    assert encode_sam2_mask(np.zeros((4, 4), dtype=bool)) is None
    # One column wide: box (1, 0, 1, 2) → crop mask[0:2, 1:1] has width 0 → the real server cannot encode it.
    with pytest.raises(DegenerateMaskError):
        encode_sam2_mask(block_mask(4, 4, slice(0, 3), slice(1, 2)))


def test_response_drops_empty_masks_and_keeps_track_ids():
    frame = [
        (0, block_mask(6, 8, slice(0, 3), slice(0, 3))),
        (1, np.zeros((6, 8), dtype=bool)),  # empty → discarded by the server
        (2, block_mask(6, 8, slice(3, 6), slice(4, 8))),
    ]
    response = sam2_response([frame])
    artifact = response["artifact"]
    assert artifact["model"] == "sam2_realtime"
    assert artifact["metadata"] == [{"image_width": 8, "image_height": 6}]
    assert [t["track_id"] for t in artifact["tracks"][0]] == [0, 2]
    # Track 2: rows 3–5, columns 4–7 → box (4, 3, 7, 5).
    assert artifact["tracks"][0][1]["box_xyxy"] == [4, 3, 7, 5]
    tracks = parse_sam2_response(response)
    assert [t.track_id for t in tracks] == [0, 2]
    assert sorted(tracks_by_id(tracks)) == [0, 2]


def test_response_without_tracks_has_null_metadata():
    assert sam2_response([[]])["artifact"] == {"tracks": [[]], "model": "sam2_realtime", "metadata": [None]}


@pytest.mark.parametrize(
    ("response", "field"),
    [
        ([], "JSON object"),
        ({}, "artifact"),
        ({"artifact": {"tracks": None}}, "artifact.tracks"),
        ({"artifact": {"tracks": []}}, "never initialised"),
        ({"artifact": {"tracks": [[{"track_id": "0", "box_xyxy": [0, 0, 1, 1], "mask": ""}]]}}, "track_id"),
        ({"artifact": {"tracks": [[{"track_id": 0, "box_xyxy": [0, 0, 1], "mask": ""}]]}}, "box_xyxy"),
        ({"artifact": {"tracks": [[{"track_id": 0, "box_xyxy": [0, 0, 1.5, 1], "mask": ""}]]}}, "box_xyxy"),
        ({"artifact": {"tracks": [[{"track_id": 0, "box_xyxy": [0, 0, 1, 1], "mask": None}]]}}, "mask"),
        (
            {
                "artifact": {
                    "tracks": [
                        [
                            {"track_id": 3, "box_xyxy": [0, 0, 1, 1], "mask": ""},
                            {"track_id": 3, "box_xyxy": [0, 0, 1, 1], "mask": ""},
                        ]
                    ]
                }
            },
            "repeats",
        ),
    ],
)
def test_malformed_responses_name_the_field(response, field):
    with pytest.raises(ResponseFormatError, match=field):
        parse_sam2_response(response)


def test_bad_mask_payloads():
    with pytest.raises(ResponseFormatError, match="base64"):
        decode_mask_png("not base64!!")
    with pytest.raises(ResponseFormatError, match="PNG"):
        decode_mask_png(base64.b64encode(b"hello").decode())
    # A crop whose shape does not match the box is rejected: box (0, 0, 3, 3) needs a 3 × 3 crop.
    png = encode_mask_png(np.ones((2, 2), dtype=bool))
    with pytest.raises(ResponseFormatError, match="expected"):
        decode_sam2_track(Sam2Track(0, (0, 0, 3, 3), png), image_width=5, image_height=5)
