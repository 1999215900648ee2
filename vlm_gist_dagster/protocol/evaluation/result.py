"""What the evaluation returns: :class:`EvaluationResult`, a typed record of every number and table, and
the per-class report in sklearn's format."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from .average_precision import SweepEntries


@dataclass(frozen=True)
class EvaluationResult:
    """Everything ``evaluate`` computes, as typed fields (``result.fscore``, ``result.tp``).

    Paper metrics (docs/protocol/evaluation.md §2.5, §2.6): ``precision, recall, fscore, accuracy, support, tp, fp, fn``
    (pooled over all images at ``iou``) and ``mAP, mAR`` (NaN with ``mAP_available=False`` and a
    ``mAP_unavailable_reason`` when FiftyOne's PR sweep would raise, e.g. a prediction without
    confidence: the paper then stores mAP = None, docs/protocol/evaluation.md §2.3 / gotcha 13).

    ``per_class`` is sklearn's ``classification_report(output_dict=True, zero_division=0)`` over the
    observed classes, with sklearn's ``"micro avg"`` entry - or, as sklearn does when no object is
    unmatched, ``"accuracy": 1.0`` instead. ``class_ap`` maps every class with ground truth to its AP.
    ``per_image`` has one row per image id seen in either table: ``image_id, tp, fp, fn`` (FiftyOne's
    ``eval_tp / eval_fp / eval_fn`` sample fields). ``prediction_matches`` (``status`` tp/fp,
    ``gt_row``, ``iou``, ``rank`` in its image and class) and ``ground_truth_matches`` (``status`` tp/fn,
    ``pred_row`` of the first match) hold the object-level outcome at ``iou`` (FiftyOne's ``eval``,
    ``eval_id``, ``eval_iou`` fields); they are indexed like the input frames, and ``gt_row`` /
    ``pred_row`` are *positions* in the other frame (-1: unmatched).

    Not mirrored: a class literally named ``"(none)"`` (FiftyOne's missing-label marker, excluded from
    its metrics) is an ordinary class here; with no ground truth at all FiftyOne's ``mAP()`` returns
    -1, here mAP is NaN with a reason.

    Extra columns (not in the paper): ``coco_bbox_AP / AP50 / AP75`` and ``coco_segm_AP / AP50 /
    AP75`` from pycocotools' ``COCOeval`` (NaN with a reason in ``coco_unavailable`` when not
    computable, e.g. masks missing); ``fscore_per_iou``, the pooled F1 at each IoU threshold
    0.50:0.05:0.95, and their mean ``fscore_50_95``.

    ``sweep`` keeps the mAP sweep's entries (``SweepEntries``; None when mAP is unavailable) for the
    bootstrap over images.
    """

    precision: float
    recall: float
    fscore: float
    accuracy: float
    support: int
    tp: int
    fp: int
    fn: int
    mAP: float
    mAR: float
    mAP_available: bool
    mAP_unavailable_reason: str | None
    iou: float
    num_classes_with_ground_truth: int
    per_class: dict[str, Any]
    class_ap: dict[str, float]
    per_image: pd.DataFrame
    prediction_matches: pd.DataFrame
    ground_truth_matches: pd.DataFrame
    coco_bbox_AP: float = math.nan
    coco_bbox_AP50: float = math.nan
    coco_bbox_AP75: float = math.nan
    coco_segm_AP: float = math.nan
    coco_segm_AP50: float = math.nan
    coco_segm_AP75: float = math.nan
    coco_unavailable: dict[str, str] = field(default_factory=dict)
    fscore_per_iou: tuple[float, ...] = ()
    sweep: SweepEntries | None = field(default=None, repr=False)

    @property
    def fscore_50_95(self) -> float:
        """F1 averaged over the IoU thresholds 0.50:0.05:0.95 (NaN if not computed)."""
        return float(np.mean(self.fscore_per_iou)) if self.fscore_per_iou else math.nan

    def performance_metrics(self) -> dict[str, Any]:
        """The paper's ``evaluation.json`` ``results.performance_metrics`` block (docs/protocol/evaluation.md §5): mAP/mAR
        are ``None`` when unavailable."""
        return {
            "true_positives": self.tp,
            "false_positives": self.fp,
            "false_negatives": self.fn,
            "mAP": self.mAP if self.mAP_available else None,
            "mAR": self.mAR if self.mAP_available else None,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "fscore": self.fscore,
            "support": self.support,
            "per_class": self.per_class,
        }

    def scalars(self) -> dict[str, Any]:
        """All scalar fields (for a metrics row / Dagster metadata)."""
        skip = {
            "per_class",
            "class_ap",
            "per_image",
            "prediction_matches",
            "ground_truth_matches",
            "coco_unavailable",
            "fscore_per_iou",
            "sweep",
        }
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        out["fscore_50_95"] = self.fscore_50_95
        return out


def classification_report(labels: pd.Index, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, Any]:
    """sklearn's ``classification_report(output_dict=True, zero_division=0)`` from per-class counts,
    with sklearn's formulas (f1 = 2 tp / (true + pred))."""
    true = tp + fn
    pred = tp + fp

    def div(a: Any, b: Any) -> np.ndarray:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return np.where(b == 0, 0.0, a / np.where(b == 0, 1.0, b))

    p, r, f = div(tp, pred), div(tp, true), div(2.0 * tp, true + pred)
    report: dict[str, Any] = {}
    for i, label in enumerate(labels.tolist()):
        report[str(label)] = {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1-score": float(f[i]),
            "support": int(true[i]),
        }
    T, P, S = int(tp.sum()), int(pred.sum()), int(true.sum())
    if T > 0 and T == P == S:
        # Every object matched: no "(none)" label occurs, so sklearn's labels cover all observed ones and
        # it reports "accuracy" (of all pairs: 1.0) instead of "micro avg".
        report["accuracy"] = 1.0
    else:
        report["micro avg"] = {
            "precision": float(div(T, P)), "recall": float(div(T, S)), "f1-score": float(div(2.0 * T, S + P)), "support": S,
        }  # fmt: skip
    n = len(labels)
    report["macro avg"] = {
        "precision": float(np.mean(p)) if n else 0.0, "recall": float(np.mean(r)) if n else 0.0,
        "f1-score": float(np.mean(f)) if n else 0.0, "support": S,
    }  # fmt: skip
    weights = true.astype(np.float64)
    ws = weights.sum()
    report["weighted avg"] = {
        "precision": float(np.sum(p * weights) / ws) if ws else 0.0, "recall": float(np.sum(r * weights) / ws) if ws else 0.0,
        "f1-score": float(np.sum(f * weights) / ws) if ws else 0.0, "support": S,
    }  # fmt: skip
    return report
