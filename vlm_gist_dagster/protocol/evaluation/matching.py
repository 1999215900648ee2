"""FiftyOne's greedy matching of predictions to ground truth (``_compute_matches``), vectorised over every
image and class at once and over several IoU thresholds (docs/protocol/evaluation.md §2.4), and the box IoU it
uses, operation for operation.

>>> import numpy as np
>>> float(box_iou(np.array([0.0, 0.0, 0.2, 0.2]), np.array([0.1, 0.0, 0.2, 0.2])))  # 0.02 / 0.06
0.3333333333333333
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: IoU of (prediction row, GT row, GT crowd flag) triples, element-wise: the box IoU by default; the mask
#: IoU for ``use_masks=True`` (``mask_iou.MaskIoU``).
PairIoU = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _rtree_leaf_capacity() -> int:
    """Groups with at most this many GT boxes are a single R-tree leaf, which FiftyOne's ``rtree``
    query returns in insertion order; larger groups need the real R-tree order (see ``_Engine``)."""
    try:
        from rtree import index as rti

        return int(rti.Property().leaf_capacity)
    except Exception:  # noqa: BLE001 - rtree comes with fiftyone; without it assume its default
        return 100


_LEAF_CAPACITY = _rtree_leaf_capacity()


def box_iou(pred_box: np.ndarray, gt_box: np.ndarray, gt_crowd: np.ndarray | bool = False) -> np.ndarray:
    """Element-wise IoU of relative ``[x, y, w, h]`` boxes, operation for operation as FiftyOne's
    ``compute_bbox_iou`` (docs/protocol/evaluation.md §2.4 step 3), so that thresholds and ties compare bit-identically.

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


@dataclass(frozen=True)
class Matching:
    """Greedy matching results for K threshold columns (column 0 = the main ``iou``)."""

    pred_match: np.ndarray  # (n_pred, K) int: GT row (input position) matched, or -1
    pred_iou: np.ndarray  # (n_pred, K) float: IoU of that match (NaN if none)
    gt_matched_by: np.ndarray  # (n_gt, K) int: first prediction row that matched the GT, or -1
    pred_rank: np.ndarray  # (n_pred,) rank of the prediction in its (image, label) group


def _segment_last_argmax(values: np.ndarray, valid: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per segment (rows ``starts[i]:starts[i+1]``) and column: the *last* row holding the maximum of
    ``values`` among ``valid`` rows, or -1. "Last" mirrors FiftyOne's ``if iou < best: continue``, which
    lets a later candidate with an equal IoU replace the earlier one (docs/protocol/evaluation.md §2.4 step 4)."""
    score = np.where(valid, values, -np.inf)
    seg_max = np.maximum.reduceat(score, starts, axis=0)
    lengths = np.diff(np.append(starts, len(values)))
    is_best = valid & (score == np.repeat(seg_max, lengths, axis=0))
    rows = np.where(is_best, np.arange(len(values))[:, None], -1)
    return np.maximum.reduceat(rows, starts, axis=0)


def match(
    pred_box: np.ndarray,
    pred_sort_key: np.ndarray,
    pred_group: np.ndarray,
    gt_box: np.ndarray,
    gt_crowd: np.ndarray,
    gt_group: np.ndarray,
    n_groups: int,
    thresholds: np.ndarray,
    max_preds: np.ndarray,
    pair_iou: PairIoU | None = None,
) -> Matching:
    """FiftyOne's ``_compute_matches`` for every image and class at once, for K thresholds.

    Column k uses threshold ``thresholds[k]`` and only the first ``max_preds[k]`` predictions of each
    (image, label) group (FiftyOne truncates after sorting, docs/protocol/evaluation.md §2.6 step 1).

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

    ``pair_iou(pred_rows, gt_rows, gt_crowd)`` replaces the box IoU of the candidate pairs (input rows),
    e.g. by the instance masks' IoU; candidates and their order stay the boxes' (FiftyOne queries its
    R-tree with the boxes for masks too).
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
        if pair_iou is None:
            iou = box_iou(pred_box[p_order[pair_p]], gt_box[pair_g], pair_crowd)
        else:
            iou = np.asarray(pair_iou(p_order[pair_p], pair_g, pair_crowd), dtype=np.float64)
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
            pred_match, pred_iou, gt_matched_by, pair_iou,
        )  # fmt: skip
    return Matching(pred_match, pred_iou, gt_matched_by, pred_rank)


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
    pair_iou: PairIoU | None = None,
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
        if pair_iou is None:
            ious = box_iou(
                np.broadcast_to(pred_box[prow], (len(cands), 4)), gt_box[gt_rows[cands]], crowd
            ).tolist()
        else:
            ious = np.asarray(
                pair_iou(np.full(len(cands), prow), gt_rows[cands], crowd), dtype=np.float64
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
