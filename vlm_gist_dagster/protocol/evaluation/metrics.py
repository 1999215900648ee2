"""The paper's metrics from the two tables: P / R / F1 at the matching threshold, FiftyOne's mAP / mAR,
the per-class report, per-image counts and object-level outcomes, plus pycocotools' AP columns
(docs/protocol/evaluation.md §2.3-§2.6). :func:`evaluate` is the entry point; each step is a function below."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .average_precision import IOU_THRESHOLDS, MAX_PREDICTIONS, SweepEntries, average_precision
from .coco import coco_standard_ap
from .inputs import GT_REQUIRED, PRED_REQUIRED, check_frame, confidences, crowd_flags
from .mask_iou import MaskIoU
from .matching import Matching, match
from .result import EvaluationResult, classification_report


@dataclass(frozen=True)
class _Encoded:
    """The two tables as arrays: boxes, crowd flags, confidences and integer codes for images, labels
    and groups (one group = one (image, label)); ``gt_*`` and ``pred_*`` split the shared codes."""

    gt_box: np.ndarray
    pred_box: np.ndarray
    gt_crowd: np.ndarray
    conf: np.ndarray
    conf_missing: np.ndarray
    sort_key: np.ndarray
    image_uniques: pd.Index
    label_uniques: pd.Index
    n_groups: int
    gt_group: np.ndarray
    pred_group: np.ndarray
    gt_label: np.ndarray
    pred_label: np.ndarray
    gt_image: np.ndarray
    pred_image: np.ndarray


def _encode(gt: pd.DataFrame, pred: pd.DataFrame) -> _Encoded:
    n_gt = len(gt)
    conf = confidences(pred)
    conf_missing = np.isnan(conf)
    # Codes: images and labels over both tables; a group is one (image, label).
    image_codes, image_uniques = pd.factorize(
        pd.concat([gt["image_id"], pred["image_id"]], ignore_index=True), sort=False
    )
    label_codes, label_uniques = pd.factorize(
        pd.concat([gt["label"], pred["label"]], ignore_index=True), sort=True
    )
    n_labels = max(len(label_uniques), 1)
    group_codes, group_uniques = pd.factorize(
        image_codes.astype(np.int64) * n_labels + label_codes, sort=False
    )
    return _Encoded(
        gt_box=gt[["x", "y", "w", "h"]].to_numpy(dtype=np.float64),
        pred_box=pred[["x", "y", "w", "h"]].to_numpy(dtype=np.float64),
        gt_crowd=crowd_flags(gt),
        conf=conf,
        conf_missing=conf_missing,
        # FiftyOne's sort key ``p.confidence or -1``: None and 0.0 both sort as -1 (docs/protocol/evaluation.md gotcha 13).
        sort_key=np.where(conf_missing | (conf == 0), -1.0, conf),
        image_uniques=image_uniques,
        label_uniques=label_uniques,
        n_groups=len(group_uniques),
        gt_group=group_codes[:n_gt],
        pred_group=group_codes[n_gt:],
        gt_label=label_codes[:n_gt],
        pred_label=label_codes[n_gt:],
        gt_image=image_codes[:n_gt],
        pred_image=image_codes[n_gt:],
    )


def _pooled_counts(enc: _Encoded, m: Matching, gt_index: pd.Index, pred_index: pd.Index) -> dict[str, Any]:
    """P / R / F1 / accuracy pooled over all images at the main threshold (docs/protocol/evaluation.md §2.5), the per-class
    report, per-image counts and the object-level outcome tables."""
    pred_tp = m.pred_match[:, 0] >= 0
    gt_fn = m.gt_matched_by[:, 0] < 0
    tp, fp, fn = int(pred_tp.sum()), int((~pred_tp).sum()), int(gt_fn.sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    fscore = 2 * tp / ((tp + fn) + (tp + fp)) if tp + fn + tp + fp else 0.0
    accuracy = tp / (tp + fp + fn) if tp + fp + fn else 0.0

    n_lab = len(enc.label_uniques)
    c_tp = np.bincount(enc.pred_label[pred_tp], minlength=n_lab)
    c_fp = np.bincount(enc.pred_label[~pred_tp], minlength=n_lab)
    c_fn = np.bincount(enc.gt_label[gt_fn], minlength=n_lab)

    n_img = len(enc.image_uniques)
    per_image = pd.DataFrame(
        {
            "image_id": enc.image_uniques,
            "tp": np.bincount(enc.pred_image[pred_tp], minlength=n_img),
            "fp": np.bincount(enc.pred_image[~pred_tp], minlength=n_img),
            "fn": np.bincount(enc.gt_image[gt_fn], minlength=n_img),
        }
    )
    prediction_matches = pd.DataFrame(
        {
            "status": np.where(pred_tp, "tp", "fp"),
            "gt_row": m.pred_match[:, 0],  # position in the ground-truth frame, -1 if none
            "iou": m.pred_iou[:, 0],
            "rank": m.pred_rank,
        },
        index=pred_index,
    )
    ground_truth_matches = pd.DataFrame(
        {
            "status": np.where(gt_fn, "fn", "tp"),
            "pred_row": m.gt_matched_by[:, 0],  # position in predictions, -1 if none
        },
        index=gt_index,
    )
    return {
        "precision": float(precision), "recall": float(recall), "fscore": float(fscore),
        "accuracy": float(accuracy), "support": tp + fn, "tp": tp, "fp": fp, "fn": fn,
        "per_class": classification_report(enc.label_uniques, c_tp, c_fp, c_fn), "per_image": per_image,
        "prediction_matches": prediction_matches, "ground_truth_matches": ground_truth_matches,
    }  # fmt: skip


def _fscore_per_threshold(m: Matching, columns: list[int]) -> tuple[float, ...]:
    """Pooled F1 (docs/protocol/evaluation.md §2.5) of the given threshold columns of the matching."""
    out = []
    n_pred = m.pred_match.shape[0]
    for c in columns:
        tp = int((m.pred_match[:, c] >= 0).sum())
        fn = int((m.gt_matched_by[:, c] < 0).sum())
        fp = n_pred - tp
        out.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return tuple(out)


def _mean_average_precision(
    enc: _Encoded, m: Matching, compute_mAP: bool, sweep_columns: slice = slice(1, None)
) -> dict[str, Any]:
    """FiftyOne's mAP / mAR over the classes with ground truth (docs/protocol/evaluation.md §2.6), or NaN with the reason
    FiftyOne would have none; and the sweep's entries (``SweepEntries``) for resampling."""
    n_lab = len(enc.label_uniques)
    num_gt = np.bincount(enc.gt_label[~enc.gt_crowd], minlength=n_lab)
    classes_with_gt = np.flatnonzero(num_gt > 0)
    out: dict[str, Any] = {
        "mAP": math.nan, "mAR": math.nan, "mAP_available": False,
        "mAP_unavailable_reason": "not computed (compute_mAP=False)", "class_ap": {},
        "num_classes_with_ground_truth": len(classes_with_gt), "sweep": None,
    }  # fmt: skip
    if not compute_mAP:
        return out
    K = len(IOU_THRESHOLDS)
    sweep = m.pred_match[:, sweep_columns]  # (n_pred, K)
    included = (m.pred_rank[:, None] < MAX_PREDICTIONS) & np.ones((1, K), dtype=bool)
    matched_crowd = (sweep >= 0) & enc.gt_crowd[np.maximum(sweep, 0)]
    counted = included & ~matched_crowd & (num_gt[enc.pred_label] > 0)[:, None]  # crowd matches are skipped
    if len(classes_with_gt) == 0:
        out["mAP_unavailable_reason"] = "no class has ground truth (FiftyOne's mAP() returns -1)"
        return out
    if (counted & enc.conf_missing[:, None]).any():
        out["mAP_unavailable_reason"] = (
            "prediction without confidence in a class with ground truth (FiftyOne raises; the paper stores "
            "mAP = None)"
        )
        return out
    remap = np.full(n_lab, -1, dtype=np.int64)
    remap[classes_with_gt] = np.arange(len(classes_with_gt))
    p_idx, k_idx = np.nonzero(counted)
    prec, rec_sweep = average_precision(
        k_idx.astype(np.int64), remap[enc.pred_label[p_idx]], enc.conf[p_idx], sweep[p_idx, k_idx] >= 0,
        num_gt[classes_with_gt], K,
    )  # fmt: skip
    ap = np.mean(prec, axis=(0, 2))
    ar = np.mean(rec_sweep, axis=0)
    names = enc.label_uniques.tolist()
    gt_kept = ~enc.gt_crowd
    out.update(
        mAP=float(np.mean(ap)),
        mAR=float(np.mean(ar)),
        mAP_available=True,
        mAP_unavailable_reason=None,
        class_ap={str(names[c]): float(a) for c, a in zip(classes_with_gt.tolist(), ap.tolist())},
        sweep=SweepEntries(
            threshold=k_idx.astype(np.int64),
            class_index=remap[enc.pred_label[p_idx]],
            confidence=enc.conf[p_idx],
            is_tp=sweep[p_idx, k_idx] >= 0,
            image=enc.pred_image[p_idx].astype(np.int64),
            gt_class=remap[enc.gt_label[gt_kept]],
            gt_image=enc.gt_image[gt_kept].astype(np.int64),
            classes=tuple(str(names[c]) for c in classes_with_gt.tolist()),
            image_ids=tuple(enc.image_uniques.tolist()),
            n_thresholds=K,
        ),
    )
    return out


def _coco_columns(
    gt: pd.DataFrame, pred: pd.DataFrame, coco_standard: bool, image_sizes: pd.DataFrame | None
) -> dict[str, Any]:
    """The pycocotools columns (bbox and segm AP, AP50, AP75) and why any of them is missing."""
    if not coco_standard:
        reason = "not computed (coco_standard=False)"
        return {"coco_unavailable": {"bbox": reason, "segm": reason}}
    out: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for iou_type in ("bbox", "segm"):
        stats = coco_standard_ap(gt, pred, iou_type=iou_type, image_sizes=image_sizes)
        if stats.reason is not None:
            unavailable[iou_type] = stats.reason
        out[f"coco_{iou_type}_AP"] = stats.AP
        out[f"coco_{iou_type}_AP50"] = stats.AP50
        out[f"coco_{iou_type}_AP75"] = stats.AP75
    out["coco_unavailable"] = unavailable
    return out


def evaluate(
    ground_truth: pd.DataFrame,
    predictions: pd.DataFrame,
    iou: float = 0.5,
    *,
    compute_mAP: bool = True,
    coco_standard: bool = True,
    image_sizes: pd.DataFrame | None = None,
    use_masks: bool = False,
) -> EvaluationResult:
    """Evaluate predictions against ground truth as the paper does (FiftyOne ``evaluate_detections``
    with ``method="coco"``, ``classwise=True``, ``use_masks=False``, ``compute_mAP=True``).

    ``iou`` is the matching threshold for P/R/F1 (the paper: 0.5; FiftyOne caps it at 1 - 1e-10).
    ``compute_mAP=False`` skips the sweep (mAP/mAR NaN). ``coco_standard=True`` adds pycocotools'
    bbox (and, when every object has a mask, segm) AP columns; they cost more than everything else
    for large datasets (see benchmarks/eval_speed.py). ``image_sizes`` (``image_id, width, height``)
    makes those columns use pixel boxes, as COCO does (see ``coco_standard_ap``); the paper's metrics
    always use the relative boxes, as FiftyOne does.

    ``use_masks=True`` is FiftyOne's ``use_masks=True`` (not the paper's protocol: an extra column):
    matching and the mAP sweep use the IoU of the instance masks (``mask`` column, a COCO RLE on every
    row of both tables; ``mask_iou.MaskIoU``) instead of the boxes'.

    Besides the paper's numbers the result holds ``fscore_per_iou``, the pooled F1 at each of the ten
    mAP thresholds 0.50:0.05:0.95 (full greedy matching at each, no 100-per-class cut), and ``sweep``,
    the mAP sweep's entries for resampling images (``protocol.statistics``).

    >>> import pandas as pd
    >>> gt = pd.DataFrame({"image_id": ["a"], "label": ["cup"], "x": [0.1], "y": [0.1], "w": [0.2], "h": [0.2]})
    >>> pred = pd.DataFrame({"image_id": ["a"], "label": ["cup"], "x": [0.1], "y": [0.1], "w": [0.2], "h": [0.2]})
    >>> r = evaluate(gt, pred, coco_standard=False)
    >>> r.fscore, r.mAP_available, r.mAP_unavailable_reason
    (1.0, False, 'prediction without confidence in a class with ground truth (FiftyOne raises; the paper stores mAP = None)')
    """
    if not (isinstance(iou, (int, float)) and 0 < float(iou) <= 1):
        raise ValueError(f"iou must be in (0, 1], got {iou!r}")
    check_frame(ground_truth, GT_REQUIRED, "ground_truth")
    check_frame(predictions, PRED_REQUIRED, "predictions")
    pair_iou = None
    if use_masks:
        for what, df in (("ground_truth", ground_truth), ("predictions", predictions)):
            if len(df) and ("mask" not in df.columns or df["mask"].isna().any()):
                raise ValueError(f"{what}: use_masks=True needs a 'mask' (COCO RLE) on every row")
        pair_iou = MaskIoU(
            predictions["mask"].tolist() if len(predictions) else [],
            predictions[["x", "y", "w", "h"]].to_numpy(dtype=np.float64),
            ground_truth["mask"].tolist() if len(ground_truth) else [],
            ground_truth[["x", "y", "w", "h"]].to_numpy(dtype=np.float64),
        )
    enc = _encode(ground_truth, predictions)

    main_thresh = min(float(iou), 1 - 1e-10)
    unbounded = np.iinfo(np.int64).max
    K = len(IOU_THRESHOLDS)
    thresholds, max_preds = [main_thresh], [unbounded]
    if compute_mAP:
        thresholds += IOU_THRESHOLDS
        max_preds += [MAX_PREDICTIONS] * K
    # F1 per mAP threshold: the sweep's columns when no (image, class) holds more than 100 predictions
    # (the cut changes nothing then), else ten more columns without the cut.
    group_sizes = np.bincount(enc.pred_group, minlength=1) if len(enc.pred_group) else np.zeros(1, int)
    if compute_mAP and int(group_sizes.max()) <= MAX_PREDICTIONS:
        f1_columns = list(range(1, 1 + K))
    else:
        f1_columns = list(range(len(thresholds), len(thresholds) + K))
        thresholds += IOU_THRESHOLDS
        max_preds += [unbounded] * K
    m = match(
        enc.pred_box, enc.sort_key, enc.pred_group, enc.gt_box, enc.gt_crowd, enc.gt_group, enc.n_groups,
        np.array(thresholds), np.array(max_preds), pair_iou,
    )  # fmt: skip
    return EvaluationResult(
        iou=float(iou),
        **_pooled_counts(enc, m, ground_truth.index, predictions.index),
        **_mean_average_precision(enc, m, compute_mAP, slice(1, 1 + K)),
        **_coco_columns(ground_truth, predictions, coco_standard, image_sizes),
        fscore_per_iou=_fscore_per_threshold(m, f1_columns),
    )
