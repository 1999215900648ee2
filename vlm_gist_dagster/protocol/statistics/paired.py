"""Which F1 differences are real: a paired permutation test (approximate randomisation) for every pair of
models evaluated on the same images, with Holm's correction over all pairs of a table.

Under the null hypothesis that two models are equally good, which of the two produced an image's result
is a coin flip. The test swaps the two models' per-image results (TP and prediction counts; the ground
truth is shared) on a random subset of the images, recomputes both pooled F1 scores, and counts how often
the swapped difference is at least as large (in absolute value) as the observed one: two-sided
``p = (1 + count) / (1 + permutations)`` (Monte Carlo, never 0), or ``count / 2**n`` when all ``2**n``
swaps are enumerated (few images). This is sacreBLEU's ``paired-ar`` and ``scipy.stats.permutation_test(
permutation_type="samples")``; it needs no distributional assumption and keeps its level for small n
(Riezler & Maxwell 2005 found the paired bootstrap test more prone to false positives). A table of
several datasets (the weighted table) swaps on every dataset's images independently and tests the
weighted difference.

Every pair uses the same swaps (one ``(permutations, n)`` 0/1 matrix per dataset), so all pairs together
are two matrix products per dataset: ``swaps @ (tp_a - tp_b)`` for all pairs at once.

>>> ones = np.ones((1, 6), dtype=int)
>>> data = PerImageResults(tp=np.vstack([ones, 0 * ones]), predictions=np.vstack([ones, 0 * ones]),
...                        ground_truth=ones[0])       # model 0 finds the one object of all 6 images
>>> tests = paired_permutation_test([data], permutations=1000, rng=np.random.default_rng(0))
>>> float(tests.difference[0]), float(tests.p_value[0]), tests.exact   # 2 of 64 swaps reach |1.0|
(1.0, 0.03125, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Swapped differences within this relative distance of the observed one count as reaching it (floating
#: point: two routes to the same rational F1 difference can differ in the last bits; scipy uses 1e-14).
RELATIVE_TOLERANCE = 1e-12
#: Enumerate every swap (exact p-values) when there are at most this many.
MAX_EXACT = 1 << 20
#: Elements per (swaps x pairs) block: bounds the memory of one step (~16 MB per array).
_BLOCK = 2_000_000


@dataclass(frozen=True)
class PerImageResults:
    """Per-image results of ``M`` models on the same ``n`` images of one dataset: ``tp`` and
    ``predictions`` ``(M, n)``, ``ground_truth`` ``(n,)`` (the same for every model)."""

    tp: np.ndarray
    predictions: np.ndarray
    ground_truth: np.ndarray

    def __post_init__(self) -> None:
        tp, pred, gt = (np.asarray(a) for a in (self.tp, self.predictions, self.ground_truth))
        if tp.ndim != 2 or pred.shape != tp.shape or gt.shape != tp.shape[1:]:
            raise ValueError(
                f"expected tp and predictions (models, images) and ground_truth (images,), got "
                f"{tp.shape}, {pred.shape}, {gt.shape}"
            )
        if (tp < 0).any() or (tp > pred).any() or (tp > gt[None, :]).any():
            raise ValueError("per-image counts must satisfy 0 <= tp <= predictions and tp <= ground truth")

    @classmethod
    def from_counts(cls, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> PerImageResults:
        """From per-image TP / FP / FN ``(M, n)``; the ground truth (TP + FN) must agree across models."""
        tp, fp, fn = (np.asarray(a, dtype=np.int64) for a in (tp, fp, fn))
        gt = tp + fn
        if len(gt) and (gt != gt[0]).any():
            model, image = (int(v[0]) for v in np.nonzero(gt != gt[0]))
            raise ValueError(
                f"model {model} has {gt[model, image]} ground-truth objects in image {image}, model 0 "
                f"{gt[0, image]}: the models were not evaluated on the same ground truth"
            )
        return cls(tp=tp, predictions=tp + fp, ground_truth=gt[0] if len(gt) else np.zeros(tp.shape[1], int))

    @property
    def n_models(self) -> int:
        return int(np.asarray(self.tp).shape[0])

    def fscore(self) -> np.ndarray:
        """Pooled F1 per model."""
        tp = np.asarray(self.tp).sum(axis=1)
        return _f1(tp, np.asarray(self.predictions).sum(axis=1), float(np.asarray(self.ground_truth).sum()))


def _f1(tp: np.ndarray, predictions: np.ndarray, ground_truth: float) -> np.ndarray:
    """Pooled F1 = 2 TP / (GT + predictions); 0 when both are 0."""
    tp = np.asarray(tp, dtype=np.float64)
    den = ground_truth + np.asarray(predictions, dtype=np.float64)
    return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1.0), 0.0)


@dataclass(frozen=True)
class PairwiseTests:
    """One entry per pair ``(first[k], second[k])`` of model indices, ``first < second``.

    ``difference`` is ``F1[first] - F1[second]`` (weighted over the datasets), ``p_value`` the two-sided
    permutation p-value, ``p_adjusted`` after the correction, ``significant`` = ``p_adjusted <= alpha``.
    """

    n_models: int
    first: np.ndarray
    second: np.ndarray
    difference: np.ndarray
    p_value: np.ndarray
    p_adjusted: np.ndarray
    significant: np.ndarray
    permutations: int
    exact: bool
    correction: str
    alpha: float

    def better(self) -> np.ndarray:
        """``(M, M)`` bool: ``[i, j]`` when model i is significantly better than model j."""
        out = np.zeros((self.n_models, self.n_models), dtype=bool)
        sig = self.significant
        out[self.first[sig & (self.difference > 0)], self.second[sig & (self.difference > 0)]] = True
        out[self.second[sig & (self.difference < 0)], self.first[sig & (self.difference < 0)]] = True
        return out


def holm_adjust(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate over all tests, any dependence).

    >>> holm_adjust(np.array([0.01, 0.04, 0.03, 0.005])).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def _swap_blocks(n_images: Sequence[int], total: int, exact: bool, rng: np.random.Generator, rows: int):
    """Blocks of swap matrices, one ``(rows, n_d)`` float32 0/1 matrix per dataset: all ``2**sum(n)``
    patterns in order when ``exact``, else ``total`` random ones."""
    n_total = int(sum(n_images))
    edges = np.cumsum([0, *n_images])
    for start in range(0, total, rows):
        count = min(rows, total - start)
        if exact:
            codes = np.arange(start, start + count, dtype=np.int64)
            bits = ((codes[:, None] >> np.arange(n_total, dtype=np.int64)[None, :]) & 1).astype(np.float32)
            yield [bits[:, edges[d] : edges[d + 1]] for d in range(len(n_images))]
        else:
            yield [rng.integers(0, 2, size=(count, n), dtype=np.int8).astype(np.float32) for n in n_images]


def paired_permutation_test(
    datasets: Sequence[PerImageResults],
    weights: Sequence[float] | None = None,
    *,
    permutations: int,
    rng: np.random.Generator,
    confidence_level: float = 0.95,
    correction: str = "holm",
) -> PairwiseTests:
    """Paired permutation tests of F1 for every pair of the ``M`` models (the same models, in the same
    order, in every dataset), on the weighted sum of the per-dataset F1 differences (one dataset:
    weight 1).

    ``permutations`` random swap patterns per dataset (shared by all pairs), or every pattern when
    there are at most ``permutations`` of them (``exact=True``). ``correction`` ``"holm"`` or ``"none"``;
    a pair is significant when its adjusted p-value is at most ``1 - confidence_level``.
    """
    if not datasets:
        raise ValueError("no datasets given")
    if correction not in ("holm", "none"):
        raise ValueError(f"correction must be 'holm' or 'none', got {correction!r}")
    if permutations < 1:
        raise ValueError(f"permutations must be positive, got {permutations}")
    M = datasets[0].n_models
    if any(d.n_models != M for d in datasets):
        raise ValueError(f"every dataset must hold the same models, got {[d.n_models for d in datasets]}")
    w = np.ones(len(datasets)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(datasets),) or (w < 0).any():
        raise ValueError(f"one non-negative weight per dataset expected, got {weights!r}")
    first, second = np.triu_indices(M, 1)
    P = len(first)
    alpha = 1.0 - confidence_level

    pieces = []
    observed = np.zeros(P)
    for d, weight in zip(datasets, w.tolist()):
        tp = np.asarray(d.tp, dtype=np.float64)
        pred = np.asarray(d.predictions, dtype=np.float64)
        gt_total = float(np.asarray(d.ground_truth).sum())
        tp_sum, pred_sum = tp.sum(axis=1), pred.sum(axis=1)
        observed += weight * (
            _f1(tp_sum[first], pred_sum[first], gt_total) - _f1(tp_sum[second], pred_sum[second], gt_total)
        )
        # Per-image differences are small integers: exact in float32, and the products stay exact.
        delta_tp = np.ascontiguousarray((tp[first] - tp[second]).T, dtype=np.float32)  # (n, P)
        delta_pred = np.ascontiguousarray((pred[first] - pred[second]).T, dtype=np.float32)
        pieces.append((weight, gt_total, tp_sum, pred_sum, delta_tp, delta_pred))

    n_images = [int(np.asarray(d.tp).shape[1]) for d in datasets]
    n_total = sum(n_images)
    exact = n_total < 63 and (1 << n_total) <= min(permutations, MAX_EXACT)
    total = (1 << n_total) if exact else int(permutations)
    count = np.zeros(P, dtype=np.int64)
    if P:
        threshold = np.abs(observed) * (1 - RELATIVE_TOLERANCE)
        rows = max(1, _BLOCK // P)
        for swaps in _swap_blocks(n_images, total, exact, rng, rows):
            swapped = np.zeros((len(swaps[0]), P))
            for s, (weight, gt_total, tp_sum, pred_sum, delta_tp, delta_pred) in zip(swaps, pieces):
                moved_tp = (s @ delta_tp).astype(np.float64)  # TP that model `first` hands to `second`
                moved_pred = (s @ delta_pred).astype(np.float64)
                f_first = _f1(tp_sum[first] - moved_tp, pred_sum[first] - moved_pred, gt_total)
                f_second = _f1(tp_sum[second] + moved_tp, pred_sum[second] + moved_pred, gt_total)
                swapped += weight * (f_first - f_second)
            count += (np.abs(swapped) >= threshold).sum(axis=0)
    p_value = count / total if exact else (count + 1) / (total + 1)
    p_adjusted = holm_adjust(p_value) if correction == "holm" else p_value.copy()
    return PairwiseTests(
        n_models=M,
        first=first,
        second=second,
        difference=observed,
        p_value=p_value,
        p_adjusted=p_adjusted,
        significant=p_adjusted <= alpha,
        permutations=total,
        exact=exact,
        correction=correction,
        alpha=alpha,
    )
