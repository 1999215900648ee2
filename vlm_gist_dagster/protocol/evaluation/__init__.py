"""The paper's detection evaluation (stage E), exactly as FiftyOne's COCO-style ``evaluate_detections``
computes it for the paper (docs/protocol/evaluation.md §2.3-§2.6), vectorised, plus COCO-standard AP columns
from pycocotools.

The paper calls ``dataset.evaluate_detections(pred_field, gt_field, use_masks=False, classes=None,
compute_mAP=True)``: box IoU on relative ``[x, y, w, h]``, class-wise greedy matching by confidence at
IoU 0.5, pooled (micro) precision / recall / F1 over the whole dataset, and FiftyOne's own mAP / mAR
(10 IoU thresholds, 101 recall points, 100 predictions per image and class, TPs ranked before FPs at
equal confidence, mean over the classes that have ground truth).

>>> import pandas as pd
>>> gt = pd.DataFrame({"image_id": ["a", "a"], "label": ["cat", "dog"],
...                    "x": [0.0, 0.5], "y": [0.0, 0.5], "w": [0.4, 0.4], "h": [0.4, 0.4]})
>>> pred = pd.DataFrame({"image_id": ["a", "a"], "label": ["cat", "cat"], "confidence": [0.9, 0.8],
...                      "x": [0.0, 0.5], "y": [0.0, 0.5], "w": [0.4, 0.4], "h": [0.4, 0.4]})
>>> r = evaluate(gt, pred, coco_standard=False)
>>> (r.tp, r.fp, r.fn, r.precision, r.recall, r.fscore)
(1, 1, 1, 0.5, 0.5, 0.5)
>>> r.mAP      # "cat": AP 1.0; "dog": no prediction, AP 0.0
0.5

Inputs are two DataFrames, one row per object:

* ground truth: ``image_id, label, x, y, w, h`` (relative to the image, top-left origin), optional
  ``iscrowd`` (0/1, default 0) and ``mask`` (COCO RLE dict over the full image, or None);
* predictions: the same box columns, optional ``confidence`` (None/NaN = missing) and ``mask``.

Within an image, row order is the order of FiftyOne's ``Detections`` list: it decides ties (stable
confidence sort, equal-IoU ground truth). Ground truth of images without predictions and predictions
of images without ground truth take part as usual (all FN / all FP).

Modules: ``inputs`` (the tables' checks), ``matching`` (box IoU and FiftyOne's greedy matching),
``average_precision`` (the mAP / mAR sweep), ``metrics`` (:func:`evaluate`: P / R / F1 and the rest),
``result`` (:class:`EvaluationResult`), ``coco`` (pycocotools' AP, an extra column), ``mask_iou``
(FiftyOne's ``use_masks=True`` IoU, for the mask-based extra columns), ``variants`` (class-agnostic
matching, an extra column).
"""

from __future__ import annotations

from .average_precision import IOU_THRESHOLDS, MAX_PREDICTIONS, RECALL_POINTS, SweepEntries
from .coco import CocoStandardAP, coco_standard_ap
from .mask_iou import MaskIoU
from .matching import box_iou
from .metrics import evaluate
from .result import EvaluationResult
from .variants import evaluate_class_agnostic

__all__ = [
    "IOU_THRESHOLDS",
    "MAX_PREDICTIONS",
    "RECALL_POINTS",
    "CocoStandardAP",
    "EvaluationResult",
    "MaskIoU",
    "SweepEntries",
    "box_iou",
    "coco_standard_ap",
    "evaluate",
    "evaluate_class_agnostic",
]
