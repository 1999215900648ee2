"""``protocol.statistics`` checked independently:

* bootstrap intervals against ``scipy.stats.bootstrap(method="percentile")`` with the same generator:
  a closed-form case (recall with one object per image is the mean of per-image hits) and the pooled F1
  (a ratio, ``paired=True``);
* the mAP of every resample against ``evaluate`` (itself checked against FiftyOne) run on the
  materialised resample, on the real VLM-GIST and COCO ground truth;
* the paired permutation test on constructed data whose p-value is known in closed form, and against
  ``scipy.stats.permutation_test(permutation_type="samples")``;
* Holm's correction, rank ranges and letters on hand-made cases;
* the settings file's validation.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vlm_gist_dagster.datasets import load_dataset
from vlm_gist_dagster.protocol.evaluation import RECALL_POINTS, evaluate
from vlm_gist_dagster.protocol.settings import SettingsError
from vlm_gist_dagster.protocol.statistics import (
    PerImageResults,
    StatisticsSettings,
    average_precision_replicates,
    compact_letter_display,
    count_replicates,
    holm_adjust,
    load_statistics_settings,
    paired_permutation_test,
    percentile_interval,
    rank_ranges,
    resample_counts,
    seeded_generator,
)
from vlm_gist_dagster.protocol.statistics.bootstrap import recall_points_reached
from vlm_gist_dagster_tests.conftest import REPO
from vlm_gist_dagster_tests.protocol.test_evaluation_vs_fiftyone import random_predictions

# ---- bootstrap intervals vs scipy.stats.bootstrap ---------------------------------------------------


def test_resamples_are_scipys_draws():
    rng_ours, rng_scipy = np.random.default_rng(5), np.random.default_rng(5)
    counts = resample_counts(7, 50, rng_ours)
    draws = rng_scipy.integers(0, 7, (50, 7))  # what scipy.stats.bootstrap draws (one batch)
    expected = np.stack([np.bincount(row, minlength=7) for row in draws])
    assert (counts == expected).all() and (counts.sum(axis=1) == 7).all()


def test_closed_form_case_matches_scipy_bootstrap():
    """One GT object per image: recall = mean of the per-image hits (0/1), a closed-form mean."""
    rng = np.random.default_rng(0)
    n = 120
    tp = (rng.random(n) < 0.6).astype(int)
    fn = 1 - tp
    fp = rng.poisson(0.8, n)
    for level in (0.95, 0.9):
        weights = resample_counts(n, 2000, np.random.default_rng(42))
        ours = percentile_interval(count_replicates(tp, fp, fn, weights).recall, level)
        reference = stats.bootstrap(
            (tp.astype(float),), np.mean, n_resamples=2000, method="percentile", confidence_level=level,
            rng=np.random.default_rng(42),
        ).confidence_interval  # fmt: skip
        assert ours == pytest.approx((reference.low, reference.high), abs=1e-12)
        # and it is an interval around the observed mean, of the width the binomial standard error says
        se = np.sqrt(tp.mean() * (1 - tp.mean()) / n)
        assert ours[0] < tp.mean() < ours[1]
        assert ours[1] - ours[0] == pytest.approx(2 * stats.norm.ppf(0.5 + level / 2) * se, rel=0.15)


def test_pooled_f1_interval_matches_scipy_paired_bootstrap():
    rng = np.random.default_rng(1)
    n = 64
    gt = rng.integers(8, 40, n)
    tp = rng.binomial(gt, 0.5)
    fn = gt - tp
    fp = rng.poisson(6, n)

    def f1(tp, fp, fn, axis=-1):
        t, p, f = tp.sum(axis=axis), fp.sum(axis=axis), fn.sum(axis=axis)
        return 2 * t / (2 * t + p + f)

    weights = resample_counts(n, 1000, seeded_generator(3, "bootstrap", "vlm_gist"))
    replicates = count_replicates(tp, fp, fn, weights)
    reference = stats.bootstrap(
        (tp, fp, fn), f1, paired=True, vectorized=True, n_resamples=1000, method="percentile",
        rng=seeded_generator(3, "bootstrap", "vlm_gist"),
    )  # fmt: skip
    assert replicates.fscore == pytest.approx(reference.bootstrap_distribution, abs=1e-12)
    ci = reference.confidence_interval
    assert percentile_interval(replicates.fscore) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_recall_points_reached_is_searchsorted():
    x = np.concatenate(
        [
            np.random.default_rng(0).random(100_000),
            RECALL_POINTS,
            np.nextafter(RECALL_POINTS, 2),
            np.nextafter(RECALL_POINTS, -1),
            [t / n for n in range(1, 300) for t in range(n + 1)],
            [-1.0],
        ]
    )
    assert (recall_points_reached(x) == np.searchsorted(RECALL_POINTS, x, side="right")).all()


# ---- mAP of a resample = evaluate on the materialised resample -----------------------------------------


def materialise(frame: pd.DataFrame, image_ids: list[str], counts: np.ndarray) -> pd.DataFrame:
    """The resample as a dataset: each drawn image once per draw, as distinct images."""
    by_image = dict(tuple(frame.groupby("image_id", sort=False)))
    parts = [
        by_image[img].assign(image_id=f"{img}#{copy}")
        for img, k in zip(image_ids, counts.tolist())
        if img in by_image
        for copy in range(k)
    ]
    return pd.concat(parts, ignore_index=True) if parts else frame.iloc[:0]


@pytest.mark.parametrize("which", ["vlm_gist", "coco"])
def test_map_of_every_resample_equals_evaluating_the_resample(which, vlm_gist_dataset, coco_dir):
    ds = vlm_gist_dataset if which == "vlm_gist" else load_dataset(coco_dir, crowd="keep")
    gt = ds.ground_truth.drop(columns="mask")
    pred = random_predictions(gt, seed=7, coarse_confidence=which == "coco")  # coco: heavy ties
    pred["confidence"] = pred["confidence"].astype(float)
    full = evaluate(gt, pred, coco_standard=False)
    ids = sorted(ds.images["image_id"])
    column = pd.Index(ids).get_indexer(list(full.sweep.image_ids))
    ones = np.ones((1, len(ids)), dtype=np.int32)
    assert average_precision_replicates(full.sweep, column, ones)[0] == pytest.approx(full.mAP, abs=1e-12)

    weights = resample_counts(len(ids), 6, seeded_generator(0, "bootstrap", which))
    maps = average_precision_replicates(full.sweep, column, weights)
    per_image = full.per_image.set_index("image_id").reindex(ids, fill_value=0)
    counts = count_replicates(per_image["tp"], per_image["fp"], per_image["fn"], weights)
    for b in range(len(weights)):
        resample = evaluate(
            materialise(gt, ids, weights[b]), materialise(pred, ids, weights[b]), coco_standard=False
        )
        assert maps[b] == pytest.approx(resample.mAP, abs=1e-10), b
        assert counts.fscore[b] == pytest.approx(resample.fscore, abs=1e-12)
        assert counts.precision[b] == pytest.approx(resample.precision, abs=1e-12)
        assert counts.recall[b] == pytest.approx(resample.recall, abs=1e-12)
    assert len(set(np.round(maps, 12))) > 1  # the resamples differ


def test_a_class_absent_from_a_resample_drops_out_of_its_mean():
    """Image a: a cat found (AP 1); image b: a dog missed (AP 0). mAP 0.5; a resample of two copies of
    a has only the cat (mAP 1), one of two copies of b only the dog (mAP 0)."""
    gt = pd.DataFrame({"image_id": ["a", "b"], "label": ["cat", "dog"], "x": [0.1, 0.1], "y": [0.1, 0.1],
                       "w": [0.2, 0.2], "h": [0.2, 0.2]})  # fmt: skip
    pred = pd.DataFrame({"image_id": ["a", "b"], "label": ["cat", "cat"], "confidence": [0.9, 0.8],
                         "x": [0.1, 0.6], "y": [0.1, 0.6], "w": [0.2, 0.2], "h": [0.2, 0.2]})  # fmt: skip
    result = evaluate(gt, pred, coco_standard=False)
    weights = np.array([[1, 1], [2, 0], [0, 2]], dtype=np.int32)
    column = pd.Index(["a", "b"]).get_indexer(list(result.sweep.image_ids))
    # [2, 0]: the cat twice, found twice -> 1. [0, 2]: the dog twice, missed, and the cat FPs of b in
    # a class without ground truth there -> AP(dog) = 0.
    assert average_precision_replicates(result.sweep, column, weights).tolist() == [0.5, 1.0, 0.0]


# ---- paired permutation test ----------------------------------------------------------------------


def one_object_per_image(n: int, a_finds: list[int], b_finds: list[int]) -> PerImageResults:
    """n images with one object each; a model predicts (and finds) exactly the objects it finds."""
    tp = np.zeros((2, n), dtype=int)
    tp[0, a_finds] = 1
    tp[1, b_finds] = 1
    return PerImageResults(tp=tp, predictions=tp.copy(), ground_truth=np.ones(n, dtype=int))


def test_known_answer_exact_enumeration():
    """A and B agree on every image but m = 6, where A finds the object and B predicts nothing. Swapping
    k of those 6 images moves F1_A - F1_B strictly monotonically from d to -d, so |d*| >= |d| exactly when
    k = 0 or k = 6: p = 2 / 2**6 = 0.03125, whatever the other images hold."""
    data = one_object_per_image(10, a_finds=[0, 1, 2, 3, 4, 5, 6, 7], b_finds=[6, 7])
    tests = paired_permutation_test([data], permutations=5000, rng=np.random.default_rng(0))
    assert tests.exact and tests.permutations == 1024
    assert tests.p_value[0] == 0.03125
    # F1_A = 2*8 / (10 + 8), F1_B = 2*2 / (10 + 2)
    assert tests.difference[0] == pytest.approx(16 / 18 - 4 / 12, abs=1e-15)
    assert tests.significant[0]  # one pair: Holm changes nothing
    # Five differing images: p = 2 / 32 = 0.0625, not significant at 5 %.
    five = one_object_per_image(10, a_finds=[0, 1, 2, 3, 4], b_finds=[])
    assert (
        paired_permutation_test([five], permutations=5000, rng=np.random.default_rng(0)).p_value[0] == 0.0625
    )


def test_known_answer_monte_carlo():
    """The same construction on 60 images (2**60 swaps: Monte Carlo): the estimate of p = 2**-5 is within
    its sampling error, and an identical model is never significant."""
    data = one_object_per_image(60, a_finds=list(range(30)), b_finds=list(range(6, 30)))
    R = 40_000
    tests = paired_permutation_test([data], permutations=R, rng=seeded_generator(1, "permutation", "t"))
    assert not tests.exact and tests.permutations == R
    p = 2 / 2**6
    assert abs(tests.p_value[0] - p) < 4 * np.sqrt(p * (1 - p) / R)
    same = one_object_per_image(60, a_finds=list(range(30)), b_finds=list(range(30)))
    tests = paired_permutation_test([same], permutations=2000, rng=np.random.default_rng(0))
    assert tests.difference[0] == 0 and tests.p_value[0] == 1 and not tests.significant[0]


def test_several_datasets_swap_independently():
    """The weighted statistic over two datasets where only the first differs: the known answer of the
    first (6 differing images: p = 2**-5), whatever the weights."""
    first = one_object_per_image(8, a_finds=[0, 1, 2, 3, 4, 5], b_finds=[])
    second = one_object_per_image(5, a_finds=[0, 1], b_finds=[0, 1])
    for weights in ([0.5, 0.5], [0.9, 0.1]):
        tests = paired_permutation_test(
            [first, second], weights, permutations=10_000, rng=np.random.default_rng(0)
        )
        assert tests.exact and tests.permutations == 2**13
        assert tests.p_value[0] == 2 / 2**6
        assert tests.difference[0] == pytest.approx(weights[0] * (12 / 14 - 0.0), abs=1e-15)


def test_matches_scipy_permutation_test():
    """Random per-image counts of two models on 12 images: every one of the 4,096 swaps enumerated by us
    and by ``scipy.stats.permutation_test(permutation_type="samples")`` (paired: swaps within an image)."""
    rng = np.random.default_rng(3)
    n = 12
    gt = rng.integers(1, 6, n)
    tp = rng.binomial(np.vstack([gt, gt]), [[0.7], [0.4]])
    pred = tp + rng.poisson(1.5, (2, n))
    data = PerImageResults(tp=tp, predictions=pred, ground_truth=gt)
    ours = paired_permutation_test([data], permutations=10_000, rng=np.random.default_rng(0))

    def f1_difference(a, b, axis=-1):  # a, b: model results per image, encoded tp * 1000 + predictions
        total = gt.sum()
        fa = 2 * (a // 1000).sum(axis=axis) / (total + (a % 1000).sum(axis=axis))
        fb = 2 * (b // 1000).sum(axis=axis) / (total + (b % 1000).sum(axis=axis))
        return fa - fb

    reference = stats.permutation_test(
        (tp[0] * 1000 + pred[0], tp[1] * 1000 + pred[1]), f1_difference, permutation_type="samples",
        vectorized=True, n_resamples=np.inf,
    )  # fmt: skip
    assert ours.exact
    assert ours.difference[0] == pytest.approx(reference.statistic, abs=1e-15)
    assert ours.p_value[0] == pytest.approx(reference.pvalue, abs=1e-12)
    assert 0.001 < ours.p_value[0] < 0.5  # a case in between, not a trivial 1 or minimum


def test_holm_and_the_tables_of_many_models():
    assert holm_adjust(np.array([0.01, 0.04, 0.03, 0.005])).tolist() == pytest.approx(
        [0.03, 0.06, 0.06, 0.02]
    )
    # Four models on 200 images: A clearly best, B and C equal, D clearly worst.
    rng = np.random.default_rng(0)
    n = 200
    gt = np.ones(n, dtype=int)
    quality = [0.9, 0.6, 0.6, 0.2]
    tp = np.vstack([rng.random(n) < q for q in quality]).astype(int)
    tp[2] = tp[1][rng.permutation(n)]  # C: B's hits shuffled over the images, same F1
    data = PerImageResults(tp=tp, predictions=np.ones((4, n), dtype=int), ground_truth=gt)
    settings = StatisticsSettings()
    tests = paired_permutation_test(
        [data], permutations=settings.permutations_for(6), rng=np.random.default_rng(0)
    )
    significant = {(int(i), int(j)) for i, j, s in zip(tests.first, tests.second, tests.significant) if s}
    assert significant == {(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)}
    low, high = rank_ranges(tests.better())
    assert list(zip(low.tolist(), high.tolist())) == [(1, 1), (2, 3), (2, 3), (4, 4)]
    better = tests.better()
    assert compact_letter_display(data.fscore(), better | better.T) == ["a", "b", "b", "c"]


def test_rank_ranges_and_letters_by_hand():
    # 0 > 2, 0 > 3, 1 > 3 (significant); all else indistinguishable.
    better = np.zeros((4, 4), dtype=bool)
    better[0, 2] = better[0, 3] = better[1, 3] = True
    low, high = rank_ranges(better)
    assert low.tolist() == [1, 1, 2, 3] and high.tolist() == [2, 3, 4, 4]
    assert compact_letter_display(np.array([0.6, 0.5, 0.4, 0.3]), better | better.T) == ["a", "ab", "bc", "c"]
    # Letters start at the best score, not at the first input: only the worst (0) and the best (3) differ.
    different = np.zeros((4, 4), dtype=bool)
    different[0, 3] = different[3, 0] = True
    assert compact_letter_display(np.array([0.3, 0.4, 0.5, 0.6]), different) == ["b", "ab", "ab", "a"]
    assert compact_letter_display(np.array([]), np.zeros((0, 0), dtype=bool)) == []


def test_letters_share_exactly_when_not_different():
    rng = np.random.default_rng(0)
    for _ in range(40):
        M = int(rng.integers(2, 9))
        scores = np.sort(rng.random(M))[::-1]
        # differences more likely far apart in the ranking, as tests on sorted scores give
        distance = np.abs(np.arange(M)[:, None] - np.arange(M)[None, :])
        different = rng.random((M, M)) < distance / M
        different = np.triu(different, 1)
        different = different | different.T
        letters = compact_letter_display(scores, different)
        for i in range(M):
            for j in range(M):
                if i != j:
                    assert bool(set(letters[i]) & set(letters[j])) == (not different[i, j]), (letters, i, j)
        assert "a" in letters[0]  # the best model carries the first letter


# ---- settings ---------------------------------------------------------------------------------------


def test_shipped_settings_and_defaults(tmp_path):
    shipped = load_statistics_settings(REPO / "settings" / "statistics.json")
    assert shipped.bootstrap_resamples >= 1000 and shipped.confidence_level == 0.95
    assert shipped.model_dump(exclude={"about"}) == StatisticsSettings().model_dump(exclude={"about"})
    assert load_statistics_settings(tmp_path / "missing.json") == StatisticsSettings()
    assert StatisticsSettings(multiple_comparisons="none").permutations_for(1225) == 10_000
    assert StatisticsSettings(permutations=3000).permutations_for(1225) == 3000
    # 'auto' with Holm: the smallest p-value, 1 / (R + 1), passes Holm's first step for every table size
    for pairs in (1, 6, 1225, 1485):
        R = StatisticsSettings().permutations_for(pairs)
        assert 1 / (R + 1) <= 0.05 / pairs / 2


@pytest.mark.parametrize(
    "content, key, message",
    [
        ({"bootstrap_resamples": 100}, "bootstrap_resamples", "greater than or equal to 1000"),
        ({"permutations": "many"}, "permutations", "'auto' or an integer"),
        ({"confidence_level": 1.5}, "confidence_level", "less than 1"),
        ({"multiple_comparisons": "bonferroni"}, "multiple_comparisons", "'holm' or 'none'"),
        ({"sed": 3}, "sed", "unknown key 'sed'"),
    ],
)
def test_bad_settings_name_the_file_and_the_key(tmp_path, content, key, message):
    path = tmp_path / "statistics.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SettingsError) as error:
        load_statistics_settings(path)
    assert error.value.key == key
    assert str(error.value).startswith("statistics.json: ") and message in str(error.value)
