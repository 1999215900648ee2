"""The simulated validation VLM (docs/protocol/pipeline.md §5): is this crop a tight box around a described object?

A validation conversation carries the full image, the structured description (as the assistant's turn)
and a crop cut from the full image, then asks for the one ``object_name`` the crop shows, or the invalid
token. The simulator finds where the crop was cut (template matching, coarse on down-scaled copies, then
exact in a small window at full resolution), takes the ground-truth instance that box overlaps best and
answers the ``object_name`` whose description it wrote for that instance. A box that is not tight around
any instance (IoU below :data:`TIGHT_IOU`), or around an instance no object of the description names,
gets the invalid token: a hallucinated object's detection is rejected, as a good validator would.

>>> validation_invalid_token([DEFAULT_VALIDATION_PROMPT.format(invalid="n/a")])
'n/a'
>>> validation_invalid_token(["Provide a JSON description of all object instances."]) is None
True
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import cv2
import numpy as np

from ..protocol.settings import DEFAULT_VALIDATION_PROMPT
from .controls import ModelControls
from .faults import rng
from .geometry import box_iou
from .world import Identified, decode_image

#: The start of the paper's validation prompt, which identifies a validation request.
VALIDATION_PROMPT_START = DEFAULT_VALIDATION_PROMPT.split("?")[0]
_INVALID_TOKEN = re.compile(r"respond with '([^']*)'")
#: IoU between the crop and a GT box above which the crop counts as "a tight bounding box around" it.
TIGHT_IOU = 0.5
#: Long side of the down-scaled full image used for the coarse search.
COARSE_SIDE = 320


def validation_invalid_token(texts: Sequence[str]) -> str | None:
    """The invalid token of a validation request (``'n/a'`` in the paper), or None if ``texts`` do not
    contain the validation prompt."""
    for text in texts:
        if VALIDATION_PROMPT_START in text:
            match = _INVALID_TOKEN.search(text)
            return match.group(1) if match else "n/a"
    return None


def locate_crop(full_bgr: np.ndarray, crop_bgr: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel box ``(x1, y1, x2, y2)`` (exclusive ends) in ``full_bgr`` that ``crop_bgr`` was cut from, or
    None when the crop cannot come from this image (larger than it, or empty).

    >>> full = np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    >>> locate_crop(full, full[40:140, 210:380].copy())
    (210, 40, 380, 140)
    """
    height, width = full_bgr.shape[:2]
    h, w = crop_bgr.shape[:2]
    if h < 1 or w < 1 or h > height or w > width:
        return None
    full = full_bgr.astype(np.float32)
    crop = crop_bgr.astype(np.float32)
    # Coarse: both down-scaled so the full image's long side is COARSE_SIDE, keeping the crop >= 8 px.
    scale = min(1.0, COARSE_SIDE / max(height, width))
    scale = max(scale, min(1.0, 8.0 / min(h, w)))
    if scale < 1.0:
        small_full = cv2.resize(
            full, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
        sw = min(max(1, round(w * scale)), small_full.shape[1])
        sh = min(max(1, round(h * scale)), small_full.shape[0])
        small_crop = cv2.resize(crop, (sw, sh), interpolation=cv2.INTER_AREA)
        _, _, (cx, cy), _ = cv2.minMaxLoc(cv2.matchTemplate(small_full, small_crop, cv2.TM_SQDIFF))
        # Exact: full resolution in a window of a few coarse pixels around the coarse hit.
        margin = math.ceil(2.0 / scale)
        x0 = max(0, min(round(cx / scale) - margin, width - w))
        y0 = max(0, min(round(cy / scale) - margin, height - h))
        x1 = min(width, round(cx / scale) + w + margin)
        y1 = min(height, round(cy / scale) + h + margin)
        window = full[y0:y1, x0:x1]
        if window.shape[0] < h or window.shape[1] < w:
            window, x0, y0 = full, 0, 0
    else:
        window, x0, y0 = full, 0, 0
    _, _, (fx, fy), _ = cv2.minMaxLoc(cv2.matchTemplate(window, crop, cv2.TM_SQDIFF))
    return (x0 + fx, y0 + fy, x0 + fx + w, y0 + fy + h)


def described_objects(assistant_text: str | None) -> list[dict]:
    """The structured description of the conversation's assistant turn (a JSON list of objects)."""
    if not assistant_text:
        return []
    try:
        value = json.loads(assistant_text)
    except json.JSONDecodeError:
        return []
    if not isinstance(value, list):
        return []
    return [o for o in value if isinstance(o, dict) and isinstance(o.get("object_name"), str)]


def validation_answer(
    identified: Identified,
    full_image: bytes,
    crop_image: bytes,
    assistant_text: str | None,
    invalid: str,
    controls: ModelControls,
    parts: tuple,
) -> str:
    """The simulated validator's answer: an ``object_name`` of the description, or ``invalid``.

    Formatted as the paper's parser expects, sometimes (the model's ``fenced_rate``) as a chattier
    ``object_name: <name>``, which the parser's removal of ``object_name`` handles (docs/protocol/pipeline.md §5.4 step 2).
    """
    box = locate_crop(decode_image(full_image), decode_image(crop_image))
    answer = invalid
    if box is not None:
        image = identified.image
        crop_box = np.asarray(box, dtype=np.float64)
        scores = [
            box_iou(crop_box, image.box_xyxy(inst, identified.width, identified.height))
            for inst in image.instances
        ]
        if scores and max(scores) >= TIGHT_IOU:
            best = int(np.argmax(scores))
            for obj in described_objects(assistant_text):
                description = obj.get("description")
                if isinstance(description, str) and best in image.instances_for_description(description):
                    answer = obj["object_name"]
                    break
    if answer != invalid and rng(*parts, "validation_format").random() < controls.fenced_rate:
        return f"object_name: {answer}"
    return answer
