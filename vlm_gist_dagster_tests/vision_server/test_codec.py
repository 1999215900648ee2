"""Images in and masks out, against hand-made arrays (SAM2's mask_to_box: max inclusive)."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from .conftest import decode_png, needs_vision


def test_decode_image_accepts_any_mode_as_rgb() -> None:
    from vlm_gist_dagster.vision_server._codec import decode_image

    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = decode_image(base64.b64encode(cv2.imencode(".png", gray)[1].tobytes()).decode(), "image")
    assert rgb.shape == (3, 4, 3) and (rgb[..., 0] == gray).all()
    bgra = np.zeros((2, 2, 4), dtype=np.uint8)
    bgra[..., 2] = 200  # red in OpenCV's BGR(A) order
    rgb = decode_image(base64.b64encode(cv2.imencode(".png", bgra)[1].tobytes()).decode(), "image")
    assert rgb.shape == (2, 2, 3) and (rgb[..., 0] == 200).all() and (rgb[..., 2] == 0).all()


def test_mask_crops_by_hand() -> None:
    from vlm_gist_dagster.vision_server._codec import encode_mask_crops

    masks = np.zeros((4, 6, 8), dtype=bool)
    masks[0, 1:4, 2:6] = True  # rows 1-3, columns 2-5
    masks[1, 5, 7] = True  # a single pixel in the corner: widened both ways
    masks[3, 0:6, 3] = True  # one column, full height
    out = encode_mask_crops(masks)
    assert out[0][0] == [2, 1, 5, 3]
    assert (decode_png(out[0][1]) > 0).all() and decode_png(out[0][1]).shape == (2, 3)
    assert (
        out[1][0] == [7, 5, 8, 6]
        and decode_png(out[1][1]).shape == (1, 1)
        and decode_png(out[1][1])[0, 0] == 255
    )
    assert out[2] is None  # empty: dropped
    assert out[3][0] == [3, 0, 4, 5] and decode_png(out[3][1]).shape == (5, 1)


@needs_vision
def test_mask_crops_torch_equals_numpy() -> None:
    import torch

    from vlm_gist_dagster.vision_server._codec import encode_mask_crops

    masks = np.random.default_rng(0).random((5, 30, 40)) > 0.97
    masks[2] = False
    assert encode_mask_crops(torch.from_numpy(masks)) == encode_mask_crops(masks)


@pytest.mark.parametrize("value", ["", "%%%", "data:image/png;base64,AAAA"])
def test_decode_image_errors_name_the_field(value: str) -> None:
    from vlm_gist_dagster.vision_server._codec import InvalidImageError, decode_image

    with pytest.raises(InvalidImageError, match=r"^images\[3\]"):
        decode_image(value, "images[3]")
