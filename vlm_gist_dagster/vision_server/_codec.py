"""Images in, masks out: base64 image decoding and SAM-style mask crops, as the NimbRo servers do them.

* Images arrive as base64 of the raw file bytes with **no** ``data:`` prefix (the real servers run
  ``base64.b64decode`` on the string, so a data URI decodes to garbage there; here it is refused with a
  message that says so). Any image PIL or OpenCV reads is accepted and converted to 8-bit RGB (the real
  servers fail on grayscale, RGBA and 16-bit input inside ``cv2.cvtColor``); EXIF orientation is ignored,
  as PIL ignores it on the real servers.
* Masks leave as the real SAM2 server writes them: ``box_xyxy`` is SAM2's ``mask_to_box`` (min/max
  foreground pixel, **max inclusive**) and ``mask`` is the base64 PNG (0/255, one channel) of
  ``mask[y1:y2, x1:x2]``. Empty masks are dropped. One deliberate difference: a mask one pixel wide or
  tall, whose crop would be empty and makes the real server fail with HTTP 500, gets ``x2 = x1 + 1``
  (``y2 = y1 + 1``) so that its crop holds that pixel line.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import cv2
import numpy as np

from ..protocol.segmentation import encode_mask_png

__all__ = ["InvalidImageError", "decode_image", "decode_images", "encode_mask_crops"]


class InvalidImageError(ValueError):
    """A request image that is not base64 of an image file; the message names the field."""


def decode_image(value: Any, field: str) -> np.ndarray:
    """Base64 image → ``(H, W, 3)`` uint8 RGB array; :class:`InvalidImageError` names ``field``.

    >>> import cv2, base64
    >>> png = cv2.imencode(".png", np.zeros((2, 3), dtype=np.uint8))[1].tobytes()
    >>> decode_image(base64.b64encode(png).decode(), "images[0]").shape
    (2, 3, 3)
    >>> decode_image("bm90IGFuIGltYWdl", "images[0]")
    Traceback (most recent call last):
    ...
    vlm_gist_dagster.vision_server._codec.InvalidImageError: images[0] is not an image file (12 bytes of base64-decoded data that neither OpenCV nor PIL can read)
    """
    if not isinstance(value, str):
        raise InvalidImageError(f"{field} must be a base64 string, got {type(value).__name__}")
    if value.startswith("data:"):
        raise InvalidImageError(
            f"{field} is a data URI ({value[:30]}...): send the raw base64 of the image file without a "
            "'data:...;base64,' prefix, as the NimbRo vision servers expect"
        )
    try:
        data = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError(f"{field} is not valid base64 ({exc})") from None
    if not data:
        raise InvalidImageError(f"{field} is empty")
    buffer = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is not None:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    try:  # formats OpenCV lacks (GIF, some TIFFs, ...)
        from PIL import Image, UnidentifiedImageError

        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidImageError(
            f"{field} is not an image file ({len(data)} bytes of base64-decoded data that neither "
            "OpenCV nor PIL can read)"
        ) from None


def decode_images(values: list[Any]) -> list[np.ndarray]:
    """:func:`decode_image` of each of a request's ``images``, errors naming ``images[i]``."""
    return [decode_image(value, f"images[{i}]") for i, value in enumerate(values)]


def encode_mask_crops(masks: Any) -> list[tuple[list[int], str] | None]:
    """For each mask of ``masks`` (a ``(N, H, W)`` bool torch tensor or numpy array): ``(box, png)`` or None.

    ``box`` is ``[x1, y1, x2, y2]`` with the inclusive max (SAM2's ``mask_to_box``), ``png`` the base64
    PNG of ``mask[y1:y2, x1:x2]``; None for an empty mask. Boxes are found on the masks' device, and only
    the crops travel to the CPU.

    >>> m = np.zeros((1, 6, 8), dtype=bool); m[0, 1:4, 2:6] = True
    >>> [(box, len(png) > 0) for box, png in encode_mask_crops(m)]
    [([2, 1, 5, 3], True)]
    >>> m = np.zeros((1, 6, 8), dtype=bool); m[0, 1:4, 2] = True     # one pixel wide: widened by one
    >>> encode_mask_crops(m)[0][0]
    [2, 1, 3, 3]
    """
    if isinstance(masks, np.ndarray):
        arr = masks.astype(bool, copy=False)
        # np.asarray: numpy's stubs type any(axis=) as "bool or array"; with an axis it is always an array.
        rows, cols = np.asarray(arr.any(axis=2)), np.asarray(arr.any(axis=1))
        boxes = _boxes_from_projections(rows, cols)
        crops = [arr[i, b[1] : b[3], b[0] : b[2]] if b is not None else None for i, b in enumerate(boxes)]
    else:
        import torch

        t = masks.bool()
        rows, cols = t.any(dim=2), t.any(dim=1)
        boxes = _boxes_from_projections(rows.cpu().numpy(), cols.cpu().numpy())
        crops = [
            t[i, b[1] : b[3], b[0] : b[2]].to("cpu", torch.uint8).numpy().astype(bool)
            if b is not None
            else None
            for i, b in enumerate(boxes)
        ]
    out: list[tuple[list[int], str] | None] = []
    for box, crop in zip(boxes, crops, strict=True):
        out.append(None if box is None or crop is None else (box, encode_mask_png(crop)))  # None together
    return out


def _boxes_from_projections(rows: np.ndarray, cols: np.ndarray) -> list[list[int] | None]:
    boxes: list[list[int] | None] = []
    height, width = rows.shape[1], cols.shape[1]
    for r, c in zip(rows, cols, strict=True):
        if not r.any():
            boxes.append(None)
            continue
        y1 = int(np.argmax(r))
        y2 = int(height - 1 - np.argmax(r[::-1]))
        x1 = int(np.argmax(c))
        x2 = int(width - 1 - np.argmax(c[::-1]))
        # a one-pixel line crops to nothing with the inclusive max (HTTP 500 on the real server)
        x2 = x1 + 1 if x2 == x1 else x2
        y2 = y1 + 1 if y2 == y1 else y2
        boxes.append([x1, y1, x2, y2])
    return boxes
