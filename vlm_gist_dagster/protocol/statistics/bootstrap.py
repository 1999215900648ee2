"""The bootstrap over images: how much the benchmark's numbers would move with another sample of images
from the same population.

A resample draws ``n`` of the dataset's ``n`` images with replacement; a metric is recomputed on it as if
those images (with their repeats) were the dataset. The paper's metrics are pooled over images (TP, FP
and FN summed; mAP from one PR sweep per class over all images), and matching never crosses images, so a
resample needs no new matching: each image enters with its multiplicity ``w_i`` (``resample_counts``).

* Precision, recall, F1 (``count_replicates``): ``TP* = sum_i w_i tp_i`` and so on, one matrix product
  for all resamples.
* mAP (``average_precision_replicates``): FiftyOne's sweep with every prediction and ground-truth object
  weighted by its image's multiplicity (``SweepEntries`` from the evaluation: per prediction and IoU
  threshold its class, confidence and TP flag). Equal to evaluating the materialised resample, where
  a repeated image's copies are distinct images (tested).

The interval is the percentile interval of the replicates (``percentile_interval``), as
``scipy.stats.bootstrap(method="percentile")`` computes it; with the same generator the resamples are
the very ones scipy draws (``rng.integers(0, n, (B, n))``).

>>> rng = seeded_generator(0, "bootstrap", "example")
>>> w = resample_counts(4, 3, rng)
>>> w.shape, w.sum(axis=1).tolist()
((3, 4), [4, 4, 4])
>>> tp, fp, fn = np.array([1, 0, 2, 1]), np.array([0, 1, 0, 1]), np.array([1, 1, 0, 0])
>>> r = count_replicates(tp, fp, fn, np.ones((1, 4), dtype=np.int32))   # the dataset itself
>>> float(r.precision[0]), float(r.recall[0]), round(float(r.fscore[0]), 4)   # 4/6, 4/6
(0.6666666666666666, 0.6666666666666666, 0.6667)
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from ..evaluation.average_precision import RECALL_POINTS, SweepEntries


def seeded_generator(seed: int, *key: str) -> np.random.Generator:
    """A generator for one purpose, e.g. ``("bootstrap", "coco")``: one independent stream per key and
    seed, the same for every model (so that all models of a dataset see the same resamples).

    >>> a = seeded_generator(1, "bootstrap", "coco").integers(0, 100, 3).tolist()
    >>> a == seeded_generator(1, "bootstrap", "coco").integers(0, 100, 3).tolist()
    True
    >>> a == seeded_generator(1, "bootstrap", "vlm_gist").integers(0, 100, 3).tolist()
    False
    """
    spawn_key = tuple(zlib.crc32(part.encode("utf-8")) for part in key)
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=spawn_key))


def resample_counts(n_items: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(resamples, n_items)`` int32: how often each item is drawn in each bootstrap resample.

    The draws are ``rng.integers(0, n_items, (resamples, n_items))``, the indices
    ``scipy.stats.bootstrap`` draws (one batch), counted per row.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    if n_items == 0:
        return np.zeros((resamples, 0), dtype=np.int32)
    idx = rng.integers(0, n_items, size=(resamples, n_items))
    flat = (idx + (np.arange(resamples, dtype=np.int64) * n_items)[:, None]).ravel()
    counts = np.bincount(flat, minlength=resamples * n_items)
    return counts.reshape(resamples, n_items).astype(np.int32)


def percentile_interval(replicates: np.ndarray, confidence_level: float = 0.95) -> tuple[float, float]:
    """The two-sided percentile interval of bootstrap replicates (linear interpolation between order
    statistics, as ``scipy.stats.bootstrap(method="percentile")``); NaN if any replicate is NaN.

    >>> [round(v, 6) for v in percentile_interval(np.arange(1001) / 1000)]   # of 0, 0.001, ..., 1
    [0.025, 0.975]
    """
    values = np.asarray(replicates, dtype=np.float64)
    if values.size == 0 or np.isnan(values).any():
        return math.nan, math.nan
    alpha = (1 - confidence_level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def pooled_scores(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 from pooled counts, element-wise, 0 where undefined (sklearn's
    ``zero_division=0``, as the paper's FiftyOne call).

    >>> [float(v) for v in pooled_scores(np.array(3.0), np.array(1.0), np.array(2.0))]
    [0.75, 0.6, 0.6666666666666666]
    """
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)

    return ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)


@dataclass(frozen=True)
class CountReplicates:
    """Precision, recall and F1 of every resample, ``(resamples,)`` each."""

    precision: np.ndarray
    recall: np.ndarray
    fscore: np.ndarray


def count_replicates(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, weights: np.ndarray) -> CountReplicates:
    """Pooled precision / recall / F1 of every resample from per-image TP / FP / FN (``(n,)`` each) and the
    resamples' image multiplicities ``weights`` (``(resamples, n)``, from ``resample_counts``)."""
    w = np.asarray(weights, dtype=np.float64)
    counts = np.stack([np.asarray(a, dtype=np.float64) for a in (tp, fp, fn)], axis=1)  # (n, 3)
    if w.shape[1] != counts.shape[0]:
        raise ValueError(f"weights cover {w.shape[1]} images, the counts {counts.shape[0]}")
    pooled = w @ counts  # (B, 3)
    p, r, f = pooled_scores(pooled[:, 0], pooled[:, 1], pooled[:, 2])
    return CountReplicates(precision=p, recall=r, fscore=f)


def average_precision_replicates(
    sweep: SweepEntries, image_column: np.ndarray, weights: np.ndarray, *, chunk: int = 16
) -> np.ndarray:
    """FiftyOne's mAP (docs/protocol/evaluation.md §2.6) of every resample, ``(resamples,)``, without matching again.

    ``image_column[i]`` is the column of ``weights`` (``(resamples, n)``) that holds the multiplicity of
    ``sweep.image_ids[i]``. Per resample, each sweep entry and ground-truth object counts ``w`` times
    (its image's multiplicity). The sweep's order (threshold, class, confidence descending, TPs first)
    does not depend on the weights, so it is sorted once; then per resample: weighted cumulative TP and
    prediction counts, precision made monotone from the right, and for each TP entry the recall points
    it reaches first, each taking that monotone precision: the 101-point sum of FiftyOne's
    ``searchsorted`` interpolation.

    Why this equals the sweep on the materialised resample (tested against ``evaluate``): a repeated
    TP's copies sit together (same confidence, TPs first) and precision only rises along them, so the
    last copy stands for all; an FP never sets a recall point and its precision is below its
    predecessor's, so only TPs need the envelope, and FPs after a segment's last TP change nothing.
    Classes without ground truth in a resample drop out of its mean, as FiftyOne excludes classes
    without ground truth. The envelope is a running maximum over all segments at once with a
    per-segment offset: exact to ~1e-11.
    """
    w_all = np.asarray(weights)
    B = w_all.shape[0]
    K, C = int(sweep.n_thresholds), len(sweep.classes)
    out = np.full(B, np.nan)
    if C == 0:
        return out
    image_column = np.asarray(image_column, dtype=np.int64)
    w_int = np.ascontiguousarray(w_all, dtype=np.int32)
    n_points = len(RECALL_POINTS)
    gt_order = np.argsort(sweep.gt_class, kind="stable")
    gt_cols = image_column[sweep.gt_image[gt_order]]
    gt_starts = np.flatnonzero(np.concatenate(([True], np.diff(sweep.gt_class[gt_order]) != 0)))
    gt_classes = sweep.gt_class[gt_order][gt_starts]  # every class has ground truth (by construction)

    order = np.lexsort((~sweep.is_tp, -sweep.confidence, sweep.class_index, sweep.threshold))
    seg = (sweep.threshold * C + sweep.class_index)[order]
    is_tp = sweep.is_tp[order]
    cols = image_column[sweep.image[order]]
    # FPs matter only before their segment's last TP (they lower its precision).
    if len(seg):
        seg_first = np.flatnonzero(np.concatenate(([True], seg[1:] != seg[:-1])))
        seg_id = np.repeat(np.arange(len(seg_first)), np.diff(np.append(seg_first, len(seg))))
        last_tp = np.maximum.reduceat(np.where(is_tp, np.arange(len(seg)), -1), seg_first)
        keep = np.arange(len(seg)) <= last_tp[seg_id]
        seg, is_tp, cols = seg[keep], is_tp[keep], cols[keep]

    tp_pos = np.flatnonzero(is_tp)
    fp_pos = np.flatnonzero(~is_tp)
    T = len(tp_pos)
    if T:
        tp_seg = seg[tp_pos]
        tp_starts = np.flatnonzero(np.concatenate(([True], tp_seg[1:] != tp_seg[:-1])))
        S = len(tp_starts)
        tp_seg_index = np.repeat(np.arange(S), np.diff(np.append(tp_starts, T)))
        tp_class = tp_seg % C
        tp_cols = cols[tp_pos]
        fp_cols = cols[fp_pos]
        # FPs before each TP, and before its segment's first entry (positions in the FP list).
        fp_before_tp = np.searchsorted(fp_pos, tp_pos)
        first_of_seg = np.searchsorted(seg, tp_seg, side="left")
        fp_before_seg = np.searchsorted(fp_pos, first_of_seg)
        # TPs before each TP's segment start (positions in the TP list).
        tp_before_seg = tp_starts[tp_seg_index]
        offset = 2.0 * tp_seg_index  # keeps the right-to-left running maximum within its segment

    for b0 in range(0, B, chunk):
        w = w_int[b0 : b0 + chunk]
        b = len(w)
        num_gt = np.zeros((b, C))
        num_gt[:, gt_classes] = np.add.reduceat(w[:, gt_cols], gt_starts, axis=1)
        classes_present = (num_gt > 0).sum(axis=1)
        if T == 0:
            total = np.zeros(b)
        else:
            zero = np.zeros((b, 1), dtype=np.int32)
            cum_tp = np.concatenate((zero, np.cumsum(w[:, tp_cols], axis=1, dtype=np.int32)), axis=1)
            cum_fp = np.concatenate((zero, np.cumsum(w[:, fp_cols], axis=1, dtype=np.int32)), axis=1)
            tp_at = (cum_tp[:, 1:] - cum_tp[:, tp_before_seg]).astype(np.float64)
            n_at = tp_at + (cum_fp[:, fp_before_tp] - cum_fp[:, fp_before_seg])
            precision = tp_at / np.maximum(n_at, 1.0)  # 0 where nothing was predicted yet
            # Right-to-left running maximum per segment: reversed, later segments offset upwards.
            reverse = precision[:, ::-1] - offset[::-1]
            np.maximum.accumulate(reverse, axis=1, out=reverse)
            envelope = reverse[:, ::-1] + offset
            gt_at = num_gt[:, tp_class]
            recall = np.where(gt_at > 0, tp_at / np.maximum(gt_at, 1.0), -1.0)
            reached = recall_points_reached(recall)
            first = reached[:, tp_starts]
            reached[:, 1:] -= reached[:, :-1].copy()
            reached[:, tp_starts] = first
            total = np.einsum("ij,ij->i", envelope, reached.astype(np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            out[b0 : b0 + b] = np.where(
                classes_present > 0, total / (n_points * K) / np.maximum(classes_present, 1), np.nan
            )
    return out


#: ``RECALL_POINTS`` with -inf before and +inf after, for ``recall_points_reached``.
_POINTS_PADDED = np.concatenate(([-np.inf], RECALL_POINTS, [np.inf]))


def recall_points_reached(recall: np.ndarray) -> np.ndarray:
    """How many of the 101 recall points are <= ``recall``, element-wise: ``np.searchsorted(RECALL_POINTS,
    recall, side="right")``, from a guess ``floor(100 r) + 1`` corrected by one step each way (the points
    are ``i / 100`` up to rounding), several times faster than ``searchsorted`` on unsorted queries.

    >>> recall_points_reached(np.array([-1.0, 0.0, 0.005, 0.07, 1 / 3, 1.0])).tolist()
    [0, 1, 1, 8, 34, 101]
    """
    r = np.asarray(recall, dtype=np.float64)
    guess = np.clip(np.floor(r * 100), 0, 100).astype(np.int64) + 1
    count = guess - (_POINTS_PADDED[guess] > r)  # _POINTS_PADDED[i] is RECALL_POINTS[i - 1]
    return count + (_POINTS_PADDED[count + 1] <= r)
