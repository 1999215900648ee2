"""FiftyOne's mAP / mAR sweep (``_compute_pr_curves``), vectorised: 10 IoU thresholds, 101 recall points,
at most 100 predictions per image and class, TPs ranked before FPs at equal confidence
(docs/protocol/evaluation.md §2.6).

>>> IOU_THRESHOLDS[0], IOU_THRESHOLDS[-1], len(RECALL_POINTS), MAX_PREDICTIONS
(0.5, 0.95, 101, 100)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: FiftyOne's default mAP thresholds ``[x / 100 for x in range(50, 100, 5)]`` (exact Python floats).
IOU_THRESHOLDS: tuple[float, ...] = tuple(x / 100 for x in range(50, 100, 5))
#: The 101 recall points of the COCO-style PR interpolation.
RECALL_POINTS: np.ndarray = np.linspace(0, 1, 101)
#: FiftyOne keeps at most this many predictions per (image, class) in the mAP sweep (``max_preds``).
MAX_PREDICTIONS = 100


@dataclass(frozen=True)
class SweepEntries:
    """The PR sweep's inputs, kept so that mAP can be recomputed for any reweighting of the images (the
    bootstrap, ``protocol.statistics``) without matching again: one entry per (counted prediction, IoU
    threshold), and the counted ground truth.

    Entries are the predictions that enter FiftyOne's sweep (top 100 of their image and class, not
    matched to a crowd region, class with ground truth) at each of the ``n_thresholds`` thresholds.
    ``class_index`` indexes ``classes`` (the classes with ground truth), ``image`` / ``gt_image`` index
    ``image_ids``.
    """

    threshold: np.ndarray  # (E,) int: index into IOU_THRESHOLDS
    class_index: np.ndarray  # (E,) int
    confidence: np.ndarray  # (E,) float
    is_tp: np.ndarray  # (E,) bool
    image: np.ndarray  # (E,) int
    gt_class: np.ndarray  # (G,) int: class of each non-crowd ground-truth object
    gt_image: np.ndarray  # (G,) int
    classes: tuple[str, ...]
    image_ids: tuple
    n_thresholds: int


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


def average_precision(
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
