"""The paper's detection evaluation (stage E), exactly as FiftyOne's COCO-style ``evaluate_detections``
computes it for the paper (spec/evaluation.md §2.3-§2.6), vectorised, plus COCO-standard AP columns
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
>>> (r["tp"], r["fp"], r["fn"], r["precision"], r["recall"], r["fscore"])
(1, 1, 1, 0.5, 0.5, 0.5)
>>> r["mAP"]      # "cat": AP 1.0; "dog": no prediction, AP 0.0
0.5

Inputs are two DataFrames, one row per object:

* ground truth: ``image_id, label, x, y, w, h`` (relative to the image, top-left origin), optional
  ``iscrowd`` (0/1, default 0) and ``mask`` (COCO RLE dict over the full image, or None);
* predictions: the same box columns, optional ``confidence`` (None/NaN = missing) and ``mask``.

Within an image, row order is the order of FiftyOne's ``Detections`` list: it decides ties (stable
confidence sort, equal-IoU ground truth). Ground truth of images without predictions and predictions
of images without ground truth take part as usual (all FN / all FP).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "IOU_THRESHOLDS",
    "MAX_PREDICTIONS",
    "RECALL_POINTS",
    "EvaluationResult",
    "box_iou",
    "coco_standard_ap",
    "evaluate",
]

#: FiftyOne's default mAP thresholds ``[x / 100 for x in range(50, 100, 5)]`` (exact Python floats).
IOU_THRESHOLDS: tuple[float, ...] = tuple(x / 100 for x in range(50, 100, 5))
#: The 101 recall points of the COCO-style PR interpolation.
RECALL_POINTS: np.ndarray = np.linspace(0, 1, 101)
#: FiftyOne keeps at most this many predictions per (image, class) in the mAP sweep (``max_preds``).
MAX_PREDICTIONS = 100

_GT_REQUIRED = ("image_id", "label", "x", "y", "w", "h")
_PRED_REQUIRED = ("image_id", "label", "x", "y", "w", "h")


def _rtree_leaf_capacity() -> int:
    """Groups with at most this many GT boxes are a single R-tree leaf, which FiftyOne's ``rtree``
    query returns in insertion order; larger groups need the real R-tree order (see ``_Engine``)."""
    try:
        from rtree import index as rti

        return int(rti.Property().leaf_capacity)
    except Exception:  # noqa: BLE001 - rtree comes with fiftyone; without it assume its default
        return 100


_LEAF_CAPACITY = _rtree_leaf_capacity()


# --------------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationResult(Mapping[str, Any]):
    """Everything ``evaluate`` computes. Also a read-only mapping: ``result["fscore"]``.

    Paper metrics (spec §2.5, §2.6): ``precision, recall, fscore, accuracy, support, tp, fp, fn``
    (pooled over all images at ``iou``) and ``mAP, mAR`` (NaN with ``mAP_available=False`` and a
    ``mAP_unavailable_reason`` when FiftyOne's PR sweep would raise, e.g. a prediction without
    confidence: the paper then stores mAP = None, spec §2.3 / gotcha 13).

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
    computable, e.g. masks missing).
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

    # Mapping interface -------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @classmethod
    def _keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def performance_metrics(self) -> dict[str, Any]:
        """The paper's ``evaluation.json`` ``results.performance_metrics`` block (spec §5): mAP/mAR
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
        }
        return {k: getattr(self, k) for k in self._keys() if k not in skip}


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _check_frame(df: pd.DataFrame, required: tuple[str, ...], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; need {list(required)}")
    if len(df) == 0:
        return
    labels = df["label"]
    if isinstance(labels.dtype, pd.StringDtype):  # pandas' string dtype: only missing values can be bad
        bad = labels.isna().to_numpy()
    else:
        bad = labels.isna().to_numpy() | ~labels.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what}: row {df.index[i]!r} (image {df['image_id'].iloc[i]!r}), field 'label': expected a string, got {labels.iloc[i]!r}"
        )
    if df["image_id"].isna().any():
        i = int(np.flatnonzero(df["image_id"].isna().to_numpy())[0])
        raise ValueError(f"{what}: row {df.index[i]!r}, field 'image_id' is missing")
    box = df[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
    finite = np.isfinite(box).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"{what}: row {df.index[i]!r} (image {df['image_id'].iloc[i]!r}), fields 'x, y, w, h': non-finite box {box[i].tolist()}"
        )
    # spec §2.2: the paper asserts w > 0 and h > 0 for every box and aborts the evaluation otherwise.
    positive = (box[:, 2] > 0) & (box[:, 3] > 0)
    if not positive.all():
        i = int(np.flatnonzero(~positive)[0])
        raise ValueError(
            f"{what}: row {df.index[i]!r} (image {df['image_id'].iloc[i]!r}), fields 'w, h': the paper requires "
            f"w > 0 and h > 0 (spec/evaluation.md §2.2), got {box[i].tolist()}"
        )


def _confidences(pred: pd.DataFrame) -> np.ndarray:
    """Confidences as float64 with NaN for missing (None and NaN are the same here)."""
    if "confidence" not in pred.columns:
        return np.full(len(pred), np.nan)
    conf = pd.to_numeric(pred["confidence"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    raw_missing = pred["confidence"].isna().to_numpy()
    coerced = np.isnan(conf) & ~raw_missing
    if coerced.any():
        i = int(np.flatnonzero(coerced)[0])
        raise ValueError(
            f"predictions: row {pred.index[i]!r}, field 'confidence': not a number: {pred['confidence'].iloc[i]!r}"
        )
    return conf


def _crowd(gt: pd.DataFrame) -> np.ndarray:
    if "iscrowd" not in gt.columns:
        return np.zeros(len(gt), dtype=bool)
    return gt["iscrowd"].fillna(0).astype(bool).to_numpy()


# --------------------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------------------


def box_iou(pred_box: np.ndarray, gt_box: np.ndarray, gt_crowd: np.ndarray | bool = False) -> np.ndarray:
    """Element-wise IoU of relative ``[x, y, w, h]`` boxes, operation for operation as FiftyOne's
    ``compute_bbox_iou`` (spec §2.4 step 3), so that thresholds and ties compare bit-identically.

    No +1 pixel convention; 0 when the boxes do not overlap; a crowd GT uses the prediction's area as
    the union; capped at 1.

    >>> float(box_iou(np.array([0.0, 0.0, 0.2, 0.2]), np.array([0.1, 0.0, 0.2, 0.2])))  # 0.02 / 0.06
    0.3333333333333333
    >>> float(box_iou(np.array([0.0, 0.0, 0.2, 0.2]), np.array([0.2, 0.0, 0.2, 0.2])))  # touching
    0.0
    """
    p = np.asarray(pred_box, dtype=np.float64)
    g = np.asarray(gt_box, dtype=np.float64)
    px, py, pw, ph = p[..., 0], p[..., 1], p[..., 2], p[..., 3]
    gx, gy, gw, gh = g[..., 0], g[..., 1], g[..., 2], g[..., 3]
    gt_area = gh * gw
    pred_area = ph * pw
    iw = np.minimum(px + pw, gx + gw) - np.maximum(px, gx)
    ih = np.minimum(py + ph, gy + gh) - np.maximum(py, gy)
    overlap = (iw > 0) & (ih > 0)
    inter = ih * iw
    union = np.where(gt_crowd, pred_area, pred_area + gt_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(overlap & (union != 0), inter / np.where(union != 0, union, 1.0), 0.0)
    return np.minimum(iou, 1.0)


# --------------------------------------------------------------------------------------------------
# Matching engine
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Matching:
    """Greedy matching results for K threshold columns (column 0 = the main ``iou``)."""

    pred_match: np.ndarray  # (n_pred, K) int: GT row (input position) matched, or -1
    pred_iou: np.ndarray  # (n_pred, K) float: IoU of that match (NaN if none)
    gt_matched_by: np.ndarray  # (n_gt, K) int: first prediction row that matched the GT, or -1
    pred_rank: np.ndarray  # (n_pred,) rank of the prediction in its (image, label) group


def _segment_last_argmax(values: np.ndarray, valid: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per segment (rows ``starts[i]:starts[i+1]``) and column: the *last* row holding the maximum of
    ``values`` among ``valid`` rows, or -1. "Last" mirrors FiftyOne's ``if iou < best: continue``, which
    lets a later candidate with an equal IoU replace the earlier one (spec §2.4 step 4)."""
    score = np.where(valid, values, -np.inf)
    seg_max = np.maximum.reduceat(score, starts, axis=0)
    lengths = np.diff(np.append(starts, len(values)))
    is_best = valid & (score == np.repeat(seg_max, lengths, axis=0))
    rows = np.where(is_best, np.arange(len(values))[:, None], -1)
    return np.maximum.reduceat(rows, starts, axis=0)


def _match(
    pred_box: np.ndarray,
    pred_sort_key: np.ndarray,
    pred_group: np.ndarray,
    gt_box: np.ndarray,
    gt_crowd: np.ndarray,
    gt_group: np.ndarray,
    n_groups: int,
    thresholds: np.ndarray,
    max_preds: np.ndarray,
) -> _Matching:
    """FiftyOne's ``_compute_matches`` for every image and class at once, for K thresholds.

    Column k uses threshold ``thresholds[k]`` and only the first ``max_preds[k]`` predictions of each
    (image, label) group (FiftyOne truncates after sorting, spec §2.6 step 1).

    Predictions are processed group-parallel and rank-sequential: step r handles the r-th prediction
    (by confidence) of every group at once; groups never share ground truth, so this is the same
    greedy order as FiftyOne's per-image loops. Each prediction takes, among the still-unmatched
    non-crowd GTs of its group with IoU >= threshold, the one with the largest IoU (ties: the later
    GT); only if there is none, the best crowd GT (crowds may be matched repeatedly; they come last in
    FiftyOne's candidate order, so a non-crowd match always wins - the ``break`` in ``_compute_matches``).

    Candidate order is FiftyOne's R-tree query order. For a group with at most ``_LEAF_CAPACITY`` GTs
    the tree is one leaf and the order is the insertion order (GT rows, crowds last). Larger groups
    are matched by a sequential loop over the real ``rtree`` query order (rare: >100 objects of one
    class in one image).
    """
    n_pred, n_gt, K = len(pred_box), len(gt_box), len(thresholds)
    pred_match = np.full((n_pred, K), -1, dtype=np.int64)
    pred_iou = np.full((n_pred, K), np.nan)
    gt_matched_by = np.full((n_gt, K), -1, dtype=np.int64)

    # Predictions by (group, confidence desc, row): Python's stable sorted(..., reverse=True).
    p_order = np.lexsort((np.arange(n_pred), -pred_sort_key, pred_group))
    p_group_sorted = pred_group[p_order]
    p_group_start = np.searchsorted(p_group_sorted, np.arange(n_groups))
    rank_sorted = np.arange(n_pred) - p_group_start[p_group_sorted]
    pred_rank = np.empty(n_pred, dtype=np.int64)
    pred_rank[p_order] = rank_sorted

    # Ground truth by (group, crowd last, row): FiftyOne's sorted(gts, key=iscrowd).
    g_order = np.lexsort((np.arange(n_gt), gt_crowd, gt_group))
    g_group_sorted = gt_group[g_order]
    g_count = np.bincount(gt_group, minlength=n_groups)
    g_start = np.searchsorted(g_group_sorted, np.arange(n_groups))
    big_group = g_count > _LEAF_CAPACITY

    include = rank_sorted[:, None] < max_preds[None, :]  # (n_pred sorted, K)

    # All (prediction, GT) pairs within a group, in (group, rank, GT order).
    cnt = np.where(big_group[p_group_sorted], 0, g_count[p_group_sorted])
    total = int(cnt.sum())
    if total:
        pair_p = np.repeat(np.arange(n_pred), cnt)  # position in sorted predictions
        offsets = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        pair_g = g_order[np.repeat(g_start[p_group_sorted], cnt) + offsets]  # GT input row
        pair_crowd = gt_crowd[pair_g]
        iou = box_iou(pred_box[p_order[pair_p]], gt_box[pair_g], pair_crowd)
        # A pair below every threshold can never be chosen (and cannot trigger FiftyOne's crowd break).
        keep = iou >= thresholds.min()
        pair_p, pair_g, pair_crowd, iou = pair_p[keep], pair_g[keep], pair_crowd[keep], iou[keep]
        step_order = np.argsort(rank_sorted[pair_p], kind="stable")
        pair_p, pair_g, pair_crowd, iou = (
            pair_p[step_order],
            pair_g[step_order],
            pair_crowd[step_order],
            iou[step_order],
        )
        pair_rank = rank_sorted[pair_p]
        bounds = np.flatnonzero(np.diff(pair_rank)) + 1
        step_starts = np.concatenate(([0], bounds)) if len(pair_p) else np.array([], dtype=np.int64)
        step_ends = np.append(bounds, len(pair_p))
        matched = np.zeros((n_gt, K), dtype=bool)
        any_crowd = bool(pair_crowd.any())
        for s, e in zip(step_starts.tolist(), step_ends.tolist()):
            p, g, c, v = pair_p[s:e], pair_g[s:e], pair_crowd[s:e], iou[s:e]
            seg_starts = np.flatnonzero(np.concatenate(([True], p[1:] != p[:-1])))
            seg_pred = p[seg_starts]
            valid = (v[:, None] >= thresholds[None, :]) & include[p]
            non_crowd = valid & ~c[:, None] & ~matched[g]
            best = _segment_last_argmax(v[:, None], non_crowd, seg_starts)
            if any_crowd and c.any():
                best_crowd = _segment_last_argmax(v[:, None], valid & c[:, None], seg_starts)
                best = np.where(best >= 0, best, best_crowd)
            seg_idx, k_idx = np.nonzero(best >= 0)
            if len(seg_idx) == 0:
                continue
            rows = best[seg_idx, k_idx]
            gts = g[rows]
            preds = p_order[seg_pred[seg_idx]]
            matched[gts, k_idx] = True
            pred_match[preds, k_idx] = gts
            pred_iou[preds, k_idx] = v[rows]
            first = gt_matched_by[gts, k_idx] < 0
            gt_matched_by[gts[first], k_idx[first]] = preds[first]

    for grp in np.flatnonzero(big_group & (np.bincount(pred_group, minlength=n_groups) > 0)).tolist():
        _match_group_rtree(
            grp, p_order, p_group_start, p_group_sorted, include, pred_box,
            g_order[g_start[grp] : g_start[grp] + g_count[grp]], gt_box, gt_crowd, thresholds,
            pred_match, pred_iou, gt_matched_by,
        )  # fmt: skip
    return _Matching(pred_match, pred_iou, gt_matched_by, pred_rank)


def _match_group_rtree(
    grp: int,
    p_order: np.ndarray,
    p_group_start: np.ndarray,
    p_group_sorted: np.ndarray,
    include: np.ndarray,
    pred_box: np.ndarray,
    gt_rows: np.ndarray,
    gt_box: np.ndarray,
    gt_crowd: np.ndarray,
    thresholds: np.ndarray,
    pred_match: np.ndarray,
    pred_iou: np.ndarray,
    gt_matched_by: np.ndarray,
) -> None:
    """FiftyOne's matching loop, statement for statement, over the real R-tree candidate order.
    Used only for (image, label) groups with more GT boxes than one R-tree leaf holds."""
    from rtree import index as rti

    prop = rti.Property()
    prop.dimension = 2
    tree = rti.Index(properties=prop, interleaved=False)
    for i, row in enumerate(gt_rows.tolist()):
        x, y, w, h = gt_box[row].tolist()
        tree.insert(i, (x, x + w, y, y + h))
    K = len(thresholds)
    matched = np.zeros((len(gt_rows), K), dtype=bool)
    start = int(p_group_start[grp])
    end = int(np.searchsorted(p_group_sorted, grp, side="right"))
    for pos in range(start, end):
        prow = int(p_order[pos])
        x, y, w, h = pred_box[prow].tolist()
        cands = list(tree.intersection((x, x + w, y, y + h)))
        if not cands:
            continue
        crowd = gt_crowd[gt_rows[cands]]
        ious = box_iou(
            np.broadcast_to(pred_box[prow], (len(cands), 4)), gt_box[gt_rows[cands]], crowd
        ).tolist()
        for k in range(K):
            if not include[pos, k]:
                continue
            best, best_iou = -1, float(thresholds[k])
            for j, iou, is_crowd in zip(cands, ious, crowd.tolist()):
                if matched[j, k] and not is_crowd:
                    continue
                if best >= 0 and not gt_crowd[gt_rows[best]] and is_crowd:
                    break
                if iou < best_iou:
                    continue
                best, best_iou = j, iou
            if best >= 0:
                g = int(gt_rows[best])
                matched[best, k] = True
                pred_match[prow, k] = g
                pred_iou[prow, k] = best_iou
                if gt_matched_by[g, k] < 0:
                    gt_matched_by[g, k] = prow


# --------------------------------------------------------------------------------------------------
# mAP / mAR (FiftyOne's _compute_pr_curves, vectorised)
# --------------------------------------------------------------------------------------------------


def _min_tp_for_recall(num_gt: np.ndarray) -> np.ndarray:
    """For each class (num_gt) and recall point r: the smallest integer t with ``t / num_gt >= r`` in
    float64, i.e. FiftyOne's ``searchsorted(rec, r, side="left")`` expressed on the TP count."""
    n = num_gt.astype(np.float64)[:, None]
    base = np.maximum(np.floor(RECALL_POINTS[None, :] * n) - 1, 0)
    out = np.full(base.shape, np.inf)
    for extra in (3, 2, 1, 0):  # descending, so the smallest qualifying t wins
        t = base + extra
        ok = (t / n >= RECALL_POINTS[None, :]) & (t <= n)
        out = np.where(ok, t, out)
    return out.astype(np.int64)


def _average_precision(
    k_idx: np.ndarray,
    cls: np.ndarray,
    conf: np.ndarray,
    is_tp: np.ndarray,
    num_gt: np.ndarray,
    n_thresholds: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Precision array (K, C, 101) and recall sweep (K, C) for classes 0..C-1 (all with num_gt > 0).

    Entries are the non-crowd-matched, included predictions of one threshold column: class, confidence,
    TP flag. Per (k, c): stable sort by -confidence over [TPs..., FPs...] (so TPs first at equal
    confidence), cumulative precision/recall, precision made monotone from the right, sampled at the
    101 recall points with ``searchsorted(..., side="left")`` (0 past the end).
    """
    C = len(num_gt)
    precision = np.zeros((n_thresholds, C, len(RECALL_POINTS)))
    recall_sweep = np.zeros((n_thresholds, C))
    if len(cls) == 0 or C == 0:
        return precision, recall_sweep
    order = np.lexsort((~is_tp, -conf, cls, k_idx))
    seg = (k_idx * C + cls)[order]
    tp = is_tp[order].astype(np.int64)
    n = len(seg)
    starts = np.flatnonzero(np.concatenate(([True], seg[1:] != seg[:-1])))
    ends = np.append(starts[1:], n)
    lengths = ends - starts
    seg_ids = seg[starts]
    cum = np.cumsum(tp)
    before = np.repeat(np.concatenate(([0], cum))[starts], lengths)
    tp_sum = (cum - before).astype(np.float64)
    total = (np.arange(n) - np.repeat(starts, lengths) + 1).astype(np.float64)
    seg_cls = seg_ids % C
    pre = tp_sum / total
    # recall_sweep = last recall of the segment = tp_sum[-1] / num_gt.
    rs = recall_sweep.reshape(-1)
    rs[seg_ids] = tp_sum[ends - 1] / num_gt[seg_cls]
    # q[r] = max(pre[idx_r:end]) (the right-to-left monotone precision at idx_r) if idx_r < end else 0,
    # idx_r = first position with tp_sum >= min_tp[c, r].
    min_tp = _min_tp_for_recall(num_gt)[seg_cls]  # (S, 101)
    # Global searchsorted on an exact int64 composite key (segment, tp_sum), non-decreasing.
    key = np.repeat(np.arange(len(starts), dtype=np.int64), lengths) * (1 << 32) + (cum - before)
    queries = (np.arange(len(starts), dtype=np.int64)[:, None] * (1 << 32) + min_tp).reshape(-1)
    idx = np.searchsorted(key, queries, side="left").reshape(len(starts), -1)
    valid = idx < ends[:, None]
    pre_ext = np.append(pre, 0.0)
    bounds = np.empty(idx.size * 2, dtype=np.int64)
    bounds[0::2] = np.minimum(idx, n).reshape(-1)
    bounds[1::2] = np.repeat(ends, idx.shape[1])
    maxima = np.maximum.reduceat(pre_ext, bounds)[0::2].reshape(idx.shape)
    q = np.where(valid, maxima, 0.0)
    pr = precision.reshape(-1, len(RECALL_POINTS))
    pr[seg_ids] = q
    return precision, recall_sweep


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def evaluate(
    ground_truth: pd.DataFrame,
    predictions: pd.DataFrame,
    iou: float = 0.5,
    *,
    compute_mAP: bool = True,
    coco_standard: bool = True,
    image_sizes: pd.DataFrame | None = None,
) -> EvaluationResult:
    """Evaluate predictions against ground truth as the paper does (FiftyOne ``evaluate_detections``
    with ``method="coco"``, ``classwise=True``, ``use_masks=False``, ``compute_mAP=True``).

    ``iou`` is the matching threshold for P/R/F1 (the paper: 0.5; FiftyOne caps it at 1 - 1e-10).
    ``compute_mAP=False`` skips the sweep (mAP/mAR NaN). ``coco_standard=True`` adds pycocotools'
    bbox (and, when every object has a mask, segm) AP columns; they cost more than everything else
    for large datasets (see benchmarks/eval_speed.py). ``image_sizes`` (``image_id, width, height``)
    makes those columns use pixel boxes, as COCO does (see ``coco_standard_ap``); the paper's metrics
    always use the relative boxes, as FiftyOne does.

    >>> import pandas as pd
    >>> gt = pd.DataFrame({"image_id": ["a"], "label": ["cup"], "x": [0.1], "y": [0.1], "w": [0.2], "h": [0.2]})
    >>> pred = pd.DataFrame({"image_id": ["a"], "label": ["cup"], "x": [0.1], "y": [0.1], "w": [0.2], "h": [0.2]})
    >>> r = evaluate(gt, pred, coco_standard=False)
    >>> r["fscore"], r["mAP_available"], r["mAP_unavailable_reason"]
    (1.0, False, 'prediction without confidence in a class with ground truth (FiftyOne raises; the paper stores mAP = None)')
    """
    if not (isinstance(iou, (int, float)) and 0 < float(iou) <= 1):
        raise ValueError(f"iou must be in (0, 1], got {iou!r}")
    _check_frame(ground_truth, _GT_REQUIRED, "ground_truth")
    _check_frame(predictions, _PRED_REQUIRED, "predictions")
    gt, pred = ground_truth, predictions
    n_gt = len(gt)

    gt_box = gt[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
    pred_box = pred[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
    gt_crowd = _crowd(gt)
    conf = _confidences(pred)
    conf_missing = np.isnan(conf)
    # FiftyOne's sort key ``p.confidence or -1``: None and 0.0 both sort as -1 (gotcha 13).
    sort_key = np.where(conf_missing | (conf == 0), -1.0, conf)

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
    gt_group, pred_group = group_codes[:n_gt], group_codes[n_gt:]
    gt_label, pred_label = label_codes[:n_gt], label_codes[n_gt:]
    gt_image, pred_image = image_codes[:n_gt], image_codes[n_gt:]

    main_thresh = min(float(iou), 1 - 1e-10)
    if compute_mAP:
        thresholds = np.array((main_thresh, *IOU_THRESHOLDS))
        max_preds = np.array([np.iinfo(np.int64).max] + [MAX_PREDICTIONS] * len(IOU_THRESHOLDS))
    else:
        thresholds = np.array([main_thresh])
        max_preds = np.array([np.iinfo(np.int64).max])
    m = _match(
        pred_box, sort_key, pred_group, gt_box, gt_crowd, gt_group, len(group_uniques), thresholds, max_preds
    )

    # ---- P / R / F1 at the main threshold (spec §2.5) -------------------------------------------
    pred_tp = m.pred_match[:, 0] >= 0
    gt_fn = m.gt_matched_by[:, 0] < 0
    tp, fp, fn = int(pred_tp.sum()), int((~pred_tp).sum()), int(gt_fn.sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    fscore = 2 * tp / ((tp + fn) + (tp + fp)) if tp + fn + tp + fp else 0.0
    accuracy = tp / (tp + fp + fn) if tp + fp + fn else 0.0

    n_lab = len(label_uniques)
    c_tp = np.bincount(pred_label[pred_tp], minlength=n_lab)
    c_fp = np.bincount(pred_label[~pred_tp], minlength=n_lab)
    c_fn = np.bincount(gt_label[gt_fn], minlength=n_lab)
    per_class = _classification_report(label_uniques, c_tp, c_fp, c_fn)

    n_img = len(image_uniques)
    per_image = pd.DataFrame(
        {
            "image_id": image_uniques,
            "tp": np.bincount(pred_image[pred_tp], minlength=n_img),
            "fp": np.bincount(pred_image[~pred_tp], minlength=n_img),
            "fn": np.bincount(gt_image[gt_fn], minlength=n_img),
        }
    )
    pred_matches = pd.DataFrame(
        {
            "status": np.where(pred_tp, "tp", "fp"),
            "gt_row": m.pred_match[:, 0],  # position in the ground-truth frame, -1 if none
            "iou": m.pred_iou[:, 0],
            "rank": m.pred_rank,
        },
        index=pred.index,
    )
    gt_matches = pd.DataFrame(
        {
            "status": np.where(gt_fn, "fn", "tp"),
            "pred_row": m.gt_matched_by[:, 0],  # position in predictions, -1 if none
        },
        index=gt.index,
    )

    # ---- mAP / mAR (spec §2.6) ------------------------------------------------------------------
    mAP = mAR = math.nan
    available, reason = False, "not computed (compute_mAP=False)"
    class_ap: dict[str, float] = {}
    num_gt = np.bincount(gt_label[~gt_crowd], minlength=n_lab)
    classes_with_gt = np.flatnonzero(num_gt > 0)
    if compute_mAP:
        K = len(IOU_THRESHOLDS)
        sweep = m.pred_match[:, 1:]  # (n_pred, K)
        included = (m.pred_rank[:, None] < MAX_PREDICTIONS) & np.ones((1, K), dtype=bool)
        matched_crowd = (sweep >= 0) & gt_crowd[np.maximum(sweep, 0)]
        counted = included & ~matched_crowd & (num_gt[pred_label] > 0)[:, None]  # crowd matches are skipped
        if len(classes_with_gt) == 0:
            reason = "no class has ground truth (FiftyOne's mAP() returns -1)"
        elif (counted & conf_missing[:, None]).any():
            reason = "prediction without confidence in a class with ground truth (FiftyOne raises; the paper stores mAP = None)"
        else:
            remap = np.full(n_lab, -1, dtype=np.int64)
            remap[classes_with_gt] = np.arange(len(classes_with_gt))
            p_idx, k_idx = np.nonzero(counted)
            prec, rec_sweep = _average_precision(
                k_idx.astype(np.int64), remap[pred_label[p_idx]], conf[p_idx], sweep[p_idx, k_idx] >= 0,
                num_gt[classes_with_gt], K,
            )  # fmt: skip
            ap = np.mean(prec, axis=(0, 2))
            ar = np.mean(rec_sweep, axis=0)
            mAP, mAR = float(np.mean(ap)), float(np.mean(ar))
            available, reason = True, None
            names = label_uniques.tolist()
            class_ap = {str(names[c]): float(a) for c, a in zip(classes_with_gt.tolist(), ap.tolist())}

    result = {
        "precision": float(precision), "recall": float(recall), "fscore": float(fscore), "accuracy": float(accuracy),
        "support": tp + fn, "tp": tp, "fp": fp, "fn": fn, "mAP": mAP, "mAR": mAR, "mAP_available": available,
        "mAP_unavailable_reason": reason, "iou": float(iou), "num_classes_with_ground_truth": len(classes_with_gt),
        "per_class": per_class, "class_ap": class_ap, "per_image": per_image, "prediction_matches": pred_matches,
        "ground_truth_matches": gt_matches,
    }  # fmt: skip
    if coco_standard:
        unavailable: dict[str, str] = {}
        for iou_type in ("bbox", "segm"):
            stats = coco_standard_ap(gt, pred, iou_type=iou_type, image_sizes=image_sizes)
            if stats["reason"] is not None:
                unavailable[iou_type] = stats["reason"]
            for key in ("AP", "AP50", "AP75"):
                result[f"coco_{iou_type}_{key}"] = stats[key]
        result["coco_unavailable"] = unavailable
    else:
        result["coco_unavailable"] = {
            "bbox": "not computed (coco_standard=False)",
            "segm": "not computed (coco_standard=False)",
        }
    return EvaluationResult(**result)


def _pixel_scale(df: pd.DataFrame, image_sizes: pd.DataFrame, what: str) -> np.ndarray:
    """Per row ``[W, H, W, H]`` from an ``image_id, width, height`` table."""
    missing_cols = [c for c in ("image_id", "width", "height") if c not in image_sizes.columns]
    if missing_cols:
        raise ValueError(f"image_sizes: missing column(s) {missing_cols}")
    sizes = (
        image_sizes.drop_duplicates("image_id").set_index("image_id")[["width", "height"]].astype(np.float64)
    )
    wh = sizes.reindex(df["image_id"]).to_numpy()
    unknown = np.isnan(wh).any(axis=1)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise ValueError(
            f"{what}: row {df.index[i]!r}: image {df['image_id'].iloc[i]!r} is not in image_sizes"
        )
    return np.concatenate([wh, wh], axis=1)


def _classification_report(
    labels: pd.Index, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray
) -> dict[str, Any]:
    """sklearn's ``classification_report(output_dict=True, zero_division=0)`` from per-class counts,
    with sklearn's formulas (f1 = 2 tp / (true + pred))."""
    true = tp + fn
    pred = tp + fp

    def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------------
# COCO-standard AP (pycocotools), an extra column
# --------------------------------------------------------------------------------------------------


def coco_standard_ap(
    ground_truth: pd.DataFrame,
    predictions: pd.DataFrame,
    iou_type: str = "bbox",
    *,
    image_sizes: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """COCO-standard AP@[.5:.95], AP50 and AP75 (area "all", 100 detections per image and category)
    from pycocotools' ``COCOeval`` on the same objects: categories = labels, crowd GT = ignore regions,
    masks as COCO RLE for ``iou_type="segm"``.

    Boxes are evaluated in pixels (``x * width`` ...) when ``image_sizes`` (``image_id, width,
    height``, e.g. the dataset's images table) is given, as COCO does; otherwise in relative
    coordinates. IoU is scale-free, but pixel-aligned boxes often hit a threshold exactly (e.g. IoU
    0.75) and the relative-coordinate rounding can then fall on the other side of it.

    Differs from the paper's FiftyOne mAP in the tie order (pycocotools ranks equal scores by image id,
    then detection order; FiftyOne puts TPs first) and in crowd handling (ignore regions). Returns ``{"AP", "AP50", "AP75", "reason"}``; values are NaN and ``reason`` says why
    when it cannot be computed (missing confidences or masks, no ground truth).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    nan = {"AP": math.nan, "AP50": math.nan, "AP75": math.nan}
    gt, pred = ground_truth, predictions
    if len(gt) == 0:
        return {**nan, "reason": "no ground truth"}
    conf = _confidences(pred)
    if np.isnan(conf).any():
        return {**nan, "reason": "a prediction has no confidence (COCOeval needs scores)"}
    if iou_type == "segm":
        for what, df in (("ground truth", gt), ("predictions", pred)):
            if len(df) and ("mask" not in df.columns or df["mask"].isna().any()):
                return {**nan, "reason": f"{what}: not every object has a mask"}

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from .masks import compress_rle, rle_area

    # Image ids in sorted image_id order: pycocotools breaks score ties across images by image id, and
    # for COCO's zero-padded file names this is the order of the official integer ids.
    image_codes, _ = pd.factorize(pd.concat([gt["image_id"], pred["image_id"]], ignore_index=True), sort=True)
    labels = sorted(set(gt["label"].tolist()) | set(pred["label"].tolist()))
    cat_of = {label: i + 1 for i, label in enumerate(labels)}
    gt_img, pred_img = image_codes[: len(gt)] + 1, image_codes[len(gt) :] + 1
    crowd = _crowd(gt)
    gt_box = gt[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
    pred_box = pred[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
    if image_sizes is not None:
        gt_box = gt_box * _pixel_scale(gt, image_sizes, "ground_truth")
        pred_box = pred_box * _pixel_scale(pred, image_sizes, "predictions")
    gt_masks = gt["mask"].tolist() if iou_type == "segm" else [None] * len(gt)
    pred_masks = pred["mask"].tolist() if iou_type == "segm" else [None] * len(pred)

    annotations = []
    for i, (img, label, box, is_crowd, mask) in enumerate(
        zip(gt_img.tolist(), gt["label"].tolist(), gt_box.tolist(), crowd.tolist(), gt_masks)
    ):
        ann = {
            "id": i + 1,
            "image_id": img,
            "category_id": cat_of[label],
            "bbox": box,
            "iscrowd": int(is_crowd),
        }
        if iou_type == "segm":
            ann["segmentation"] = compress_rle(mask)
            ann["area"] = float(rle_area(mask))
        else:
            ann["area"] = box[2] * box[3]
        annotations.append(ann)
    images = [{"id": int(i)} for i in range(1, int(image_codes.max()) + 2)]
    if iou_type == "segm":
        # pycocotools reads the image size for every mask; all masks of one image must agree on it.
        for img, mask, what, row in [
            *zip(gt_img.tolist(), gt_masks, ["ground_truth"] * len(gt), gt.index),
            *zip(pred_img.tolist(), pred_masks, ["predictions"] * len(pred), pred.index),
        ]:
            height, width = (int(v) for v in mask["size"])
            entry = images[img - 1]
            if entry.setdefault("height", height) != height or entry.setdefault("width", width) != width:
                raise ValueError(
                    f"{what}: row {row!r}, field 'mask': size {[height, width]} differs from another mask of the "
                    f"same image ({[entry['height'], entry['width']]})"
                )
    dataset = {
        "images": images,
        "categories": [{"id": c, "name": label} for label, c in cat_of.items()],
        "annotations": annotations,
    }
    results = []
    for img, label, box, score, mask in zip(
        pred_img.tolist(), pred["label"].tolist(), pred_box.tolist(), conf.tolist(), pred_masks
    ):
        det = {"image_id": img, "category_id": cat_of[label], "score": score}
        if iou_type == "segm":
            det["segmentation"] = compress_rle(mask)
        else:
            det["bbox"] = box
        results.append(det)

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if not results:
            return (
                {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "reason": None}
                if (~crowd).any()
                else {**nan, "reason": "no ground truth"}
            )
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        # Only area "all" and maxDets 100 are reported: evaluating one area range instead of four
        # gives the same numbers for it (ranges are evaluated independently) at a quarter of the cost.
        ev.params.areaRng = [[0**2, 1e5**2]]
        ev.params.areaRngLbl = ["all"]
        ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, 0]  # (T, R, K)

    def mean_valid(a: np.ndarray) -> float:
        v = a[a > -1]
        return float(np.mean(v)) if v.size else math.nan

    iou_thrs = ev.params.iouThrs
    ap = mean_valid(precision)
    if math.isnan(ap):
        return {**nan, "reason": "no non-crowd ground truth"}
    return {
        "AP": ap,
        "AP50": mean_valid(precision[np.flatnonzero(np.isclose(iou_thrs, 0.5))]),
        "AP75": mean_valid(precision[np.flatnonzero(np.isclose(iou_thrs, 0.75))]),
        "reason": None,
    }
