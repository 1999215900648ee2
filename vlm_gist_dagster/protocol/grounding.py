"""Stage B's grounding modes besides the paper's (``protocol.settings.grounding``): SAM 3 concept prompts
and the VLM's own boxes. The paper's mode (MM-Grounding-DINO + SAM2) lives in :mod:`.detection` and
:mod:`.segmentation`, untouched.

**VLM boxes.** A VLM asked for ``box_2d`` (nimbro-api's default structured description) returns
``[y_min, x_min, y_max, x_max]`` normalised to 0–1000 (Gemini's convention). :func:`parse_box_2d`
validates it (stage A, the ``box_2d`` dict-item type), :func:`box_2d_to_xyxy` turns it into the pixel box
the stage tables hold.

>>> parse_box_2d([100, 200, 500, 800])
(100.0, 200.0, 500.0, 800.0)
>>> box_2d_to_xyxy((100.0, 200.0, 500.0, 800.0), width=640, height=480)
(128, 48, 512, 240)
>>> parse_box_2d([500, 200, 100, 800])
Traceback (most recent call last):
...
ValueError: box_2d [500, 200, 100, 800] has y_min >= y_max

**SAM 3.** Each described object sends one concept prompt: its name without the `` 2`` that
tells duplicates apart (:func:`sam3_prompts`), or its description. One ``/infer`` per image carries the
image's unique prompts (the server runs them as one batch on one vision pass); the response lists, per
prompt, every instance above ``min_confidence`` with its box and mask (docs/nimbro_vision_api.md, "sam3").
A prompt that ``k`` objects share keeps its ``k`` best instances (:func:`select_sam3`), as
MM-Grounding-DINO's server keeps one box per prompt occurrence.

>>> sam3_prompts([{"object_name": "chair 1", "description": "a red chair"},
...               {"object_name": "chair 2", "description": "a blue chair"},
...               {"object_name": "table", "description": "a table"}])
['chair', 'chair', 'table']
>>> sam3_request("QUJD", ["chair", "chair", "table"])
{'images': ['QUJD'], 'inference_parameters': {'prompts': ['chair', 'table'], 'min_confidence': 0.5, 'mask_threshold': 0.5}}
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from .detection import over_detection_flags
from .detections import BoxXYXY, Detections
from .responses import ResponseFormatError, entries, int_box, string_field
from .segmentation import Sam2Track, decode_sam2_track
from .settings import BaselineSettings

__all__ = [
    "Box2D",
    "box_2d_to_xyxy",
    "parse_box_2d",
    "parse_sam3_response",
    "sam3_classes_request",
    "sam3_prompts",
    "sam3_request",
    "select_sam3",
    "suppress_duplicates",
]

#: ``(y_min, x_min, y_max, x_max)`` normalised to 0–1000.
Box2D = tuple[float, float, float, float]
_DUPLICATE_SUFFIX = re.compile(r"^(.*\S) (\d+)$")


def parse_box_2d(value: Any) -> Box2D:
    """A ``box_2d`` value as the VLM sent it → four floats; ValueError naming what is wrong.

    Four JSON numbers (not booleans) in [0, 1000] with ``y_min < y_max`` and ``x_min < x_max``.
    """
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"box_2d must be a list of 4 numbers [y_min, x_min, y_max, x_max], got {value!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ValueError(f"box_2d must hold 4 finite numbers, got {value!r}")
    y1, x1, y2, x2 = (float(v) for v in value)
    if not all(0.0 <= v <= 1000.0 for v in (y1, x1, y2, x2)):
        raise ValueError(f"box_2d {value!r} is not normalised to 0-1000")
    if y1 >= y2:
        raise ValueError(f"box_2d {value!r} has y_min >= y_max")
    if x1 >= x2:
        raise ValueError(f"box_2d {value!r} has x_min >= x_max")
    return (y1, x1, y2, x2)


def box_2d_to_xyxy(box: Box2D, *, width: int, height: int) -> BoxXYXY:
    """A normalised ``(y_min, x_min, y_max, x_max)`` → pixel ``(x1, y1, x2, y2)``: each edge rounded to the
    nearest pixel, kept inside the image and at least one pixel wide and tall."""
    y1, x1, y2, x2 = box
    px1 = min(round(x1 * width / 1000.0), width - 1)
    py1 = min(round(y1 * height / 1000.0), height - 1)
    px2 = min(max(round(x2 * width / 1000.0), px1 + 1), width)
    py2 = min(max(round(y2 * height / 1000.0), py1 + 1), height)
    return (px1, py1, px2, py2)


def _base_names(names: Sequence[str]) -> list[str]:
    """Names without the `` <n>`` that stage A appended to tell duplicates apart (``rename_duplicates``):
    only where at least two names share the base, so ``"table 2"`` alone keeps its number."""
    split = [_DUPLICATE_SUFFIX.match(name) for name in names]
    bases = Counter(m.group(1) for m in split if m)
    return [m.group(1) if m and bases[m.group(1)] > 1 else name for name, m in zip(names, split, strict=True)]


def sam3_prompts(
    objects: Sequence[Mapping[str, Any]], source: Literal["name", "description"] = "name"
) -> list[str]:
    """One SAM 3 concept prompt per described object, in description order (duplicates kept: they
    count); ``""`` for an object without a usable name (or description), which sends nothing."""
    if source == "description":
        return [str(o.get("description") or "").strip() for o in objects]
    return _base_names([str(o.get("object_name") or "").strip() for o in objects])


def sam3_request(
    image_b64: str, prompts: Sequence[str], *, min_confidence: float = 0.5, mask_threshold: float = 0.5
) -> dict[str, Any]:
    """Body of the SAM 3 ``POST /infer`` for one image: its unique non-empty prompts, in first-seen order."""
    return {
        "images": [image_b64],
        "inference_parameters": {
            "prompts": list(dict.fromkeys(p for p in prompts if p)),
            "min_confidence": float(min_confidence),
            "mask_threshold": float(mask_threshold),
        },
    }


def sam3_classes_request(
    image_b64: str, settings: BaselineSettings, class_names: Sequence[str] | None
) -> dict[str, Any]:
    """Body of the ``sam3_classes`` baseline's ``/infer``: SAM 3 prompted with the settings'
    ``model_classes``, else ``class_names`` (the dataset's), in that order; ValueError without either."""
    classes = list(settings.model_classes or class_names or [])
    if not classes:
        raise ValueError(
            "a sam3 baseline needs class names: set model_classes, or the dataset must have some"
        )
    return sam3_request(
        image_b64,
        classes,
        min_confidence=settings.model_min_confidence,
        mask_threshold=settings.model_mask_threshold,
    )


def suppress_duplicates(found: Detections, iou_threshold: float | None = 0.5) -> Detections:
    """Class-agnostic non-maximum suppression (``sam3_classes``: one instance, one class): walking the
    instances best first, drop each whose box overlaps a kept one with IoU above ``iou_threshold``; server
    order is kept. None keeps everything.

    >>> d = Detections.from_boxes(["chair", "armchair", "cup"], [(0, 0, 10, 10), (1, 0, 11, 10), (20, 20, 30, 30)],
    ...                           [0.7, 0.9, 0.6])
    >>> suppress_duplicates(d).label.tolist()   # IoU(chair, armchair) = 90 / 110 = 0.82 > 0.5
    ['armchair', 'cup']
    """
    if iou_threshold is None or len(found) < 2:
        return found
    boxes = found.xyxy.astype(np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    for i in np.argsort(-found.confidence, kind="stable"):
        if keep:
            kept = boxes[keep]
            w = np.clip(np.minimum(kept[:, 2], boxes[i, 2]) - np.maximum(kept[:, 0], boxes[i, 0]), 0, None)
            h = np.clip(np.minimum(kept[:, 3], boxes[i, 3]) - np.maximum(kept[:, 1], boxes[i, 1]), 0, None)
            inter = w * h
            with np.errstate(divide="ignore", invalid="ignore"):
                iou = inter / (areas[keep] + areas[i] - inter)
            if (iou > iou_threshold).any():
                continue
        keep.append(int(i))
    return found[np.sort(np.asarray(keep, dtype=np.int64))]


def parse_sam3_response(
    response: Mapping[str, Any],
    *,
    prompts: Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
    image: int = 0,
) -> Detections:
    """The instances of one image from a SAM 3 ``/infer`` response, in the server's order: label = the
    prompt, SAM 3's box and score. With ``image_size`` (width, height) the masks are decoded too (full-image
    COCO RLE, mask box, ``track_id`` = the entry's index); an entry without a mask gets none.

    With ``prompts``, an instance of a prompt that was not requested is an error. Raises
    :class:`ResponseFormatError` naming the field.
    """
    allowed = None if prompts is None else set(prompts)
    labels: list[str] = []
    boxes: list[BoxXYXY] = []
    scores: list[float] = []
    masks: list[tuple[int, BoxXYXY, Any] | None] = []
    for k, (where, entry) in enumerate(entries(response, "detections", image, "SAM 3")):
        prompt = string_field(entry, "prompt", where, "SAM 3")
        if allowed is not None and prompt not in allowed:
            raise ResponseFormatError(
                f"SAM 3 response field '{where}.prompt' is {prompt!r}, which was not requested"
            )
        confidence = entry.get("confidence")
        if not isinstance(confidence, (int, float)) or isinstance(confidence, bool):
            raise ResponseFormatError(
                f"SAM 3 response field '{where}.confidence' must be a number, got {confidence!r}"
            )
        labels.append(prompt)
        boxes.append(int_box(entry, where, "SAM 3"))
        scores.append(float(confidence))
        if image_size is None:
            continue
        mask = entry.get("mask")
        if mask is None:
            masks.append(None)
            continue
        if not isinstance(mask, str):
            raise ResponseFormatError(f"SAM 3 response field '{where}.mask' must be a base64 PNG or null")
        mask_box = int_box({"box_xyxy": entry.get("mask_box_xyxy")}, f"{where}.mask", "SAM 3")
        width, height = image_size
        track = Sam2Track(track_id=k, box_xyxy=mask_box, mask_png_b64=mask)
        masks.append((k, mask_box, decode_sam2_track(track, width, height)))
    found = Detections.from_boxes(labels, np.asarray(boxes, dtype=np.int64).reshape(-1, 4), scores)
    return found.with_masks(masks) if image_size is not None else found


def select_sam3(
    found: Detections, prompts: Sequence[str], *, keep_all: bool = False
) -> tuple[Detections, np.ndarray]:
    """``(kept instances, is_over_detection)``: for each prompt occurrence in ``prompts`` (one per
    described object), the best instance of that prompt not yet taken is direct (docs/protocol/pipeline.md §4.4 step 4's rule);
    the rest are over-detections, kept only with ``keep_all``. Server order is kept.

    >>> d = Detections.from_boxes(["chair", "chair", "table"], [(0, 0, 1, 1)] * 3, [0.6, 0.9, 0.7])
    >>> kept, over = select_sam3(d, ["chair", "table"])
    >>> kept.confidence.tolist(), over.tolist()
    ([0.9, 0.7], [False, False])
    >>> select_sam3(d, ["chair", "table"], keep_all=True)[1].tolist()
    [True, False, False]
    """
    flags = np.asarray(
        over_detection_flags(
            list(prompts),
            found.label.tolist(),
            found.confidence.tolist(),
            over_detect=1.0,
            conf_threshold=-math.inf,
        ),
        dtype=bool,
    )
    if keep_all:
        return found, flags
    keep = np.flatnonzero(~flags)
    return found[keep], flags[keep]
