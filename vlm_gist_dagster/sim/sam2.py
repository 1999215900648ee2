"""The simulated SAM2-realtime model: the server's request checks, its masks, and its one failure mode.

What the public server does (docs/nimbro_vision_api.md, "sam2_realtime"; ``models/sam2_realtime/`` of
AIS-Bonn/nimbro_vision_servers): ``/update`` takes one image and box or point prompts (a single prompt dict
is accepted), always resets the tracker and adds every prompt; ``/infer`` tracks the stored objects on
each image. The response encodes each mask as ``(box with inclusive max, PNG of mask[y1:y2, x1:x2])``
(:func:`~vlm_gist_dagster.protocol.segmentation.sam2_response`), so a mask one pixel wide or tall crops to
nothing, ``cv2.imencode`` raises and the whole request is a 500 (:func:`encode_frames`).

The simulated mask of a prompt box is the ground-truth mask of the instance that overlaps the box best
(IoU ≥ 0.3), cut to the box, else the filled box (:func:`mask_for_box`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..protocol.segmentation import DegenerateMaskError, sam2_response
from ..protocol.vision_requests import listed_field, request_images
from ._http import RejectedRequest, request_object
from .geometry import box_iou
from .world import Identified, SimImage

__all__ = [
    "Sam2Prompt",
    "encode_frames",
    "mask_for_box",
    "parse_track_request",
    "parse_update_request",
]


@dataclass(frozen=True)
class Sam2Prompt:
    """One ``/update`` prompt: the object id and either a box or points with labels (pixels)."""

    object_id: Any
    bbox: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()


def _numbers(value: Any, message: str) -> np.ndarray:
    # The server converts with np.array(..., dtype=np.float32): the same call fails the same way.
    try:
        return np.array(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise RejectedRequest(str(exc) or message) from None


def _parse_prompt(prompt: Any) -> Sam2Prompt:
    if not isinstance(prompt, dict):  # the server calls prompt.copy()
        raise RejectedRequest(f"'{type(prompt).__name__}' object has no attribute 'copy'")
    if "object_id" not in prompt:
        raise RejectedRequest("Missing 'object_id' in prompt")
    if "bbox" not in prompt and not ("points" in prompt and "labels" in prompt):
        raise RejectedRequest("Missing 'bbox' or 'points' and 'labels' in prompt")
    bbox = points = labels = None
    if "bbox" in prompt:
        raw = prompt["bbox"]
        if not isinstance(raw, list) or len(raw) != 4:
            raise RejectedRequest("Invalid 'bbox' in prompt")
        bbox = _numbers(raw, "Invalid 'bbox' in prompt")
    if "points" in prompt:
        raw = prompt["points"]
        if not isinstance(raw, list) or not raw:
            raise RejectedRequest("Invalid 'points' in prompt")
        points = _numbers(raw, "Invalid 'points' in prompt")
        if points.ndim != 2 or points.shape[1] != 2:
            raise RejectedRequest("Invalid 'points' in prompt")
    if "labels" in prompt:
        raw = prompt["labels"]
        if not isinstance(raw, list) or not raw:
            raise RejectedRequest("Invalid 'labels' in prompt")
        if points is None:  # the server compares with a variable it never set (UnboundLocalError)
            raise RejectedRequest(
                "cannot access local variable 'points' where it is not associated with a value"
            )
        labels = _numbers(raw, "Invalid 'labels' in prompt").astype(np.int32)
        if labels.shape[0] != points.shape[0]:
            raise RejectedRequest("Invalid 'labels' in prompt")
    return Sam2Prompt(
        object_id=prompt["object_id"],
        bbox=None if bbox is None else tuple(float(v) for v in bbox.reshape(-1)),  # type: ignore[arg-type]
        points=() if points is None else tuple((float(x), float(y)) for x, y in points),
        labels=() if labels is None else tuple(int(v) for v in labels),
    )


def parse_update_request(payload: Any) -> tuple[Any, list[Sam2Prompt]]:
    """The image (base64) and prompts of an ``/update`` body, checked as the server's ``preprocess``
    (mode ``update``, model.py:181-224) does. ``reset_tracks`` is ignored: the server forces it.

    >>> parse_update_request({"image": "QUJD", "prompts": {"object_id": 3, "bbox": [1, 2, 30, 40]}})[1]
    [Sam2Prompt(object_id=3, bbox=(1.0, 2.0, 30.0, 40.0), points=(), labels=())]
    """
    image = request_object(payload).get("image")
    if image is None:
        raise RejectedRequest("Missing 'image' in payload")
    prompts = listed_field(payload, "prompts", dict, RejectedRequest)
    return image, [_parse_prompt(p) for p in prompts]


def parse_track_request(payload: Any) -> list[Any]:
    """The images of a tracking ``/infer`` body (model.py:169-180)."""
    return request_images(request_object(payload), RejectedRequest)


def prompt_box(prompt: Sam2Prompt, item: Identified) -> np.ndarray:
    """The box a prompt stands for: its ``bbox``, or for point prompts the smallest GT box containing the
    first positive point (else a small box around it)."""
    if prompt.bbox is not None:  # the server prefers the box when a prompt has both
        return np.asarray(prompt.bbox, dtype=np.float64)
    labels = prompt.labels or (1,) * len(prompt.points)
    positive = [p for p, label in zip(prompt.points, labels, strict=False) if label] or list(prompt.points)
    x, y = positive[0]
    for inst in item.image.instances:
        box = item.image.box_xyxy(inst, item.width, item.height)
        if box[0] <= x <= box[2] and box[1] <= y <= box[3]:
            return box
    r = 0.05 * min(item.width, item.height)
    return np.array([x - r, y - r, x + r, y + r])


def _grow_thin(mask: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """A one-pixel-thin mask grown to two pixels (only with ``thin_mask_error`` off). ``window`` (x1, y1,
    x2, y2, exclusive ends) bounds the foreground, so only that part of the mask is scanned."""
    part = mask[window[1] : window[3], window[0] : window[2]]
    rows = np.flatnonzero(part.any(axis=1))
    if rows.size == 0:
        return mask
    cols = np.flatnonzero(part.any(axis=0))
    height, width = mask.shape
    y1, y2 = int(rows[0]) + window[1], int(rows[-1]) + window[1]
    x1, x2 = int(cols[0]) + window[0], int(cols[-1]) + window[0]
    if y2 > y1 and x2 > x1:
        return mask
    out = mask.copy()
    ys = (y1, y1 + 1) if y1 + 1 < height else (max(y1 - 1, 0), y1)
    xs = (x1, x1 + 1) if x1 + 1 < width else (max(x1 - 1, 0), x1)
    out[ys[0] : max(y2, ys[1]) + 1, xs[0] : max(x2, xs[1]) + 1] = True
    return out


def mask_for_box(
    image: SimImage, width: int, height: int, box: np.ndarray, *, grow_thin: bool = False
) -> np.ndarray:
    """The simulated SAM2 mask for a prompt box (full image, bool): the best-overlapping GT instance's
    mask cut to the box, or the box itself when none overlaps enough. ``grow_thin``: a mask one pixel wide
    or tall is grown to two (the real server fails on it; see :func:`encode_frames`)."""
    x1 = int(np.clip(np.floor(box[0]), 0, width))
    y1 = int(np.clip(np.floor(box[1]), 0, height))
    x2 = int(np.clip(np.ceil(box[2]), 0, width))
    y2 = int(np.clip(np.ceil(box[3]), 0, height))
    best, best_iou = None, 0.0
    for inst in image.instances:
        iou = box_iou(image.box_xyxy(inst, width, height), np.asarray(box, dtype=np.float64))
        if iou > best_iou:
            best, best_iou = inst, iou
    mask = np.zeros((height, width), dtype=bool)
    # Only the box is ever foreground, so everything below works on that window of the image (a full
    # 1920 x 1080 AND and scan per box made the simulated SAM2 the slowest part of a pair run).
    crop = None
    if best is not None and best_iou >= 0.3:
        gt = image.full_mask(best, width, height)
        if gt is not None:
            crop = gt[y1:y2, x1:x2]
    mask[y1:y2, x1:x2] = crop if crop is not None and crop.any() else True
    return _grow_thin(mask, (x1, y1, x2, y2)) if grow_thin else mask


def _imencode_error() -> str:
    """The message ``cv2.imencode`` raises on the empty crop of a thin mask (the same call the server makes)."""
    try:
        cv2.imencode(".png", np.zeros((3, 0), dtype=np.uint8))
    except cv2.error as exc:
        return str(exc).strip()
    return "cv2.imencode failed on an empty mask crop"  # pragma: no cover - OpenCV always raises here


def encode_frames(frames: Sequence[Sequence[tuple[int, np.ndarray]]]) -> dict[str, Any]:
    """The response body for frames of ``(track id, full mask)``; a one-pixel-thin mask raises
    :class:`RejectedRequest` with OpenCV's message, as the server's ``encode_mask`` does."""
    try:
        return sam2_response(frames)
    except DegenerateMaskError:
        raise RejectedRequest(_imencode_error()) from None
