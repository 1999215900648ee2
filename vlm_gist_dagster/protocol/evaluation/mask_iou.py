"""The instance masks' IoU of FiftyOne's ``evaluate_detections(..., use_masks=True)`` (``_dense_iou``), for
the extra mask-based columns: each mask counts only inside its own box, as FiftyOne stores a mask (a
crop of the box), and IoU = intersection / union of the pixels.

>>> import numpy as np
>>> from vlm_gist_dagster.protocol.masks import encode_rle
>>> a = np.zeros((10, 10), dtype=bool); a[0:4, 0:4] = True     # 16 pixels
>>> b = np.zeros((10, 10), dtype=bool); b[2:6, 0:4] = True     # 16 pixels, 8 shared
>>> iou = MaskIoU([encode_rle(a)], np.array([[0, 0, 0.4, 0.4]]), [encode_rle(b)], np.array([[0, 0.2, 0.4, 0.4]]))
>>> float(iou(np.array([0]), np.array([0]), np.array([False])[0:1])[0])   # 8 / 24
0.3333333333333333
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..masks import _as_pycocotools


def pixel_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """FiftyOne's ``_float_to_pixel``: ``x1 = round(x W)``, ``x2 = round(x1 + w W)`` (Python's round, half
    to even), likewise for y; clipped to the image (FiftyOne's slicing would wrap negative indices).

    >>> pixel_box([0.25, 0.5, 0.5, 0.25], 640, 480)
    (160, 240, 480, 360)
    """
    x, y, w, h = (float(v) for v in box)
    x1, y1 = round(x * width), round(y * height)
    x2, y2 = round(x1 + w * width), round(y1 + h * height)
    clip_x = lambda v: min(max(v, 0), width)  # noqa: E731
    clip_y = lambda v: min(max(v, 0), height)  # noqa: E731
    return clip_x(x1), clip_y(y1), clip_x(x2), clip_y(y2)


def _box_restricted(rle: Mapping[str, Any], box: Sequence[float]) -> dict[str, Any]:
    """The mask as FiftyOne keeps it for a detection: only the pixels inside its (pixel) box."""
    coco = _as_pycocotools(rle)
    height, width = (int(v) for v in coco["size"])
    x1, y1, x2, y2 = pixel_box(box, width, height)
    mx, my, mw, mh = (float(v) for v in mask_utils.toBbox(coco))
    if mw == 0 or (mx >= x1 and my >= y1 and mx + mw <= x2 and my + mh <= y2):
        return coco  # already inside its box (the pipeline's masks: the box is the mask's box)
    mask = mask_utils.decode(coco)
    keep = np.zeros_like(mask)
    keep[y1:y2, x1:x2] = mask[y1:y2, x1:x2]
    return mask_utils.encode(np.asfortranarray(keep))


class MaskIoU:
    """Element-wise mask IoU of (prediction row, GT row) pairs, a ``matching.PairIoU``.

    ``pred_masks`` / ``gt_masks`` are COCO RLEs over the full image (the project's one mask format) and
    the boxes relative ``[x, y, w, h]``. As in FiftyOne's dense path, the IoU ignores crowd flags (its
    ``_compute_dense_mask_ious`` is not given ``iscrowd``; matching still treats crowds as crowds).

    FiftyOne infers the frame size from a mask crop and its relative box (``round(mask_w / w)``) and
    resizes one mask when the two disagree; for pixel-aligned boxes, such as the pipeline's (SAM2 mask
    boxes) and VLM-GIST's, that size is the image's and the two computations agree exactly. Here the
    image size is the RLE's, always.
    """

    def __init__(
        self,
        pred_masks: Sequence[Mapping[str, Any]],
        pred_boxes: np.ndarray,
        gt_masks: Sequence[Mapping[str, Any]],
        gt_boxes: np.ndarray,
    ) -> None:
        self._pred = [_box_restricted(m, b) for m, b in zip(pred_masks, np.asarray(pred_boxes).tolist())]
        self._gt = [_box_restricted(m, b) for m, b in zip(gt_masks, np.asarray(gt_boxes).tolist())]

    def __call__(self, pred_rows: np.ndarray, gt_rows: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
        pred_rows = np.asarray(pred_rows, dtype=np.int64)
        gt_rows = np.asarray(gt_rows, dtype=np.int64)
        out = np.zeros(len(pred_rows), dtype=np.float64)
        if len(pred_rows) == 0:
            return out
        # One pycocotools call per prediction, over all its candidate GTs.
        order = np.argsort(pred_rows, kind="stable")
        starts = np.flatnonzero(np.concatenate(([True], np.diff(pred_rows[order]) != 0)))
        ends = np.append(starts[1:], len(order))
        for s, e in zip(starts.tolist(), ends.tolist()):
            idx = order[s:e]
            pred = self._pred[int(pred_rows[idx[0]])]
            gts = [self._gt[int(g)] for g in gt_rows[idx].tolist()]
            for g, row in zip(gts, gt_rows[idx].tolist()):
                if list(g["size"]) != list(pred["size"]):
                    raise ValueError(
                        f"mask sizes differ within an image: prediction {list(pred['size'])} vs ground truth "
                        f"row {row} {list(g['size'])}"
                    )
            ious = mask_utils.iou([pred], gts, [0] * len(gts))
            out[idx] = np.minimum(np.asarray(ious, dtype=np.float64).reshape(-1), 1.0)
        return out
