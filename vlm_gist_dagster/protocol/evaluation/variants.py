"""Evaluations the paper did not report, as extra columns: class-agnostic matching (labels ignored).

Mask-based matching is ``evaluate(..., use_masks=True)``; F1 over the IoU thresholds 0.50:0.05:0.95 is
``EvaluationResult.fscore_50_95``.
"""

from __future__ import annotations

import pandas as pd

from .metrics import evaluate
from .result import EvaluationResult

#: The one label every object gets in the class-agnostic evaluation.
AGNOSTIC_LABEL = "object"


def evaluate_class_agnostic(
    ground_truth: pd.DataFrame, predictions: pd.DataFrame, iou: float = 0.5
) -> EvaluationResult:
    """P / R / F1 with matching that ignores labels: every object is relabelled ``"object"`` and then
    matched as the paper matches (greedy by confidence, IoU >= ``iou``). It says how well objects are
    *found*, apart from how they are named: the difference to the paper's F1 is the part lost to labels.
    The predictions are the evaluated (label-matched) ones, so dropped labels stay dropped. No mAP (one
    class), no pycocotools columns.

    >>> gt = pd.DataFrame({"image_id": ["a"], "label": ["cat"], "x": [0.1], "y": [0.1], "w": [0.2], "h": [0.2]})
    >>> pred = pd.DataFrame({"image_id": ["a"], "label": ["dog"], "confidence": [0.9],
    ...                      "x": [0.1], "y": [0.1], "w": [0.2], "h": [0.2]})
    >>> evaluate(gt, pred, coco_standard=False).fscore, evaluate_class_agnostic(gt, pred).fscore
    (0.0, 1.0)
    """
    return evaluate(
        ground_truth.assign(label=AGNOSTIC_LABEL),
        predictions.assign(label=AGNOSTIC_LABEL),
        iou,
        compute_mAP=False,
        coco_standard=False,
    )
