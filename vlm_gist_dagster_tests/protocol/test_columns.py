"""Ins. / Mat. / Time / Fail / Ret. and the totals (docs/protocol/evaluation.md §2.7, §2.10; gotchas 14-16),
on per-image tables worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from vlm_gist_dagster.protocol.columns import image_stats, metadata_columns

NAN = float("nan")


def descriptions(*rows):
    """rows: (image_id, success, num_described, failed_attempts, duration_s[, tokens_in, tokens_out, cost])"""
    cols = [
        "image_id",
        "success",
        "num_described",
        "failed_attempts",
        "duration_s",
        "tokens_in",
        "tokens_out",
        "cost_usd",
    ]
    return pd.DataFrame([list(r) + [NAN] * (8 - len(r)) for r in rows], columns=cols)


def detections(*rows):
    return pd.DataFrame(rows, columns=["image_id", "num_prompts", "num_detections"])


def label_matches(*rows):
    return pd.DataFrame(rows, columns=["image_id", "accepted", "rejected"])


# Four images: d fails after all 4 attempts (3 failures counted), b needed one retry.
DESC = descriptions(
    ("a", True, 5, 0, 2.0, 100, 50, 0.01),
    ("b", True, 3, 1, 6.0, 120, 40, 0.02),
    ("c", True, 0, 0, 1.0, 90, 10, NAN),
    ("d", False, NAN, 3, 9.0, 300, NAN, 0.03),
)
# c described 0 instances -> 0 prompts -> no detection count; d failed -> 0 prompts too.
DET = detections(("a", 5, 6), ("b", 3, 2), ("c", 0, 0), ("d", 0, 0))
# Label matching ran on images with detections only: a and b.
LM = label_matches(("a", 3, 3), ("b", 2, 0))


def test_the_five_columns():
    c = metadata_columns(DESC, DET, LM)
    # Ins. = mean detections over images with >= 1 prompt: (6 + 2) / 2 = 4.0
    assert c.ins == 4.0
    # Mat. = mean accepted (3 + 2) / 2 = 2.5, divided by Ins. 4.0 -> 0.625 (a ratio of means)
    assert c.mat == 0.625
    # Time = median of successful-attempt durations 2, 6, 1 (d's 9.0 is ignored: no success) -> 2.0
    assert c.time == 2.0
    # Fail = 1 of 4 images without a valid description -> 0.25
    assert c.fail == 0.25
    # Ret. = mean failed attempts (0 + 1 + 0 + 3) / 4 = 1.0
    assert c.ret == 1.0
    assert c.as_row() == {"ins": 4.0, "mat": 0.625, "time": 2.0, "fail": 0.25, "ret": 1.0}
    assert c.num_images == 4


def test_ratio_of_means_is_not_mean_of_ratios():
    # a: 4 detected / 4 accepted, b: 1 detected / 0 accepted. Ratio of means: (4 + 0)/2 / ((4 + 1)/2)
    # = 2 / 2.5 = 0.8; the mean of per-image ratios would be (1 + 0) / 2 = 0.5.
    det = detections(("a", 4, 4), ("b", 1, 1))
    lm = label_matches(("a", 4, 0), ("b", 0, 1))
    assert metadata_columns(DESC.iloc[:2], det, lm).mat == pytest.approx(0.8, abs=1e-15)


def test_different_image_sets_for_numerator_and_denominator():
    # Three images with prompts (detections 2, 4, 0) but label matching saw only the two with
    # detections (accepted 2, 4): Mat. = mean(2, 4) / mean(2, 4, 0) = 3 / 2 = 1.5 (docs/protocol/evaluation.md gotcha 14).
    det = detections(("a", 2, 2), ("b", 4, 4), ("c", 1, 0))
    lm = label_matches(("a", 2, 0), ("b", 4, 0))
    c = metadata_columns(DESC.iloc[:3], det, lm)
    assert c.ins == 2.0 and c.mat == 1.5


def test_images_block_uses_the_paper_keys():
    c = metadata_columns(DESC, DET, LM)
    im = c.images
    # described_instances = [5, 3, 0, NaN]: NaN fraction 1/4, nan-mean 8/3, median 3, max 5, min 0
    assert im["described_instances_NaN"] == 0.25
    assert im["described_instances_mean"] == pytest.approx(8 / 3)
    assert (
        im["described_instances_median"],
        im["described_instances_max"],
        im["described_instances_min"],
    ) == (3.0, 5.0, 0.0)
    assert im["failures_structured_description_mean"] == 1.0
    assert im["detected_instances_mean"] == 4.0
    assert im["label_matching_accept_mean"] == 2.5 and im["label_matching_reject_mean"] == 1.5
    assert im["time_description_median"] == 2.0
    # population std of [2, 6, 1]: mean 3, squares 1 + 9 + 4 = 14, /3 -> sqrt(14/3)
    assert im["time_description_std"] == pytest.approx(math.sqrt(14 / 3))


def test_totals():
    c = metadata_columns(DESC, DET, LM)
    # tokens_in 100 + 120 + 90 + 300 = 610 (failed attempts cost tokens too); out 50 + 40 + 10 = 100
    # (d unknown); cost 0.01 + 0.02 + 0.03 = 0.06
    assert (c.tokens_in, c.tokens_out) == (610, 100)
    assert c.cost_usd == pytest.approx(0.06, abs=1e-15)
    unknown = metadata_columns(DESC.drop(columns=["tokens_in", "tokens_out", "cost_usd"]), DET, LM)
    assert math.isnan(unknown.tokens_in) and math.isnan(unknown.cost_usd)


def test_every_image_failed_shows_fail_zero_as_in_the_paper():
    desc = descriptions(("a", False, NAN, 3, NAN), ("b", False, NAN, 3, NAN))
    c = metadata_columns(desc, detections(("a", 0, 0), ("b", 0, 0)), label_matches())
    # described_instances is all NaN -> key skipped -> images.get("described_instances_NaN", 0.0) = 0.0
    assert c.fail == 0.0
    assert c.ret == 3.0  # (3 + 3) / 2
    assert math.isnan(c.time) and math.isnan(c.ins) and math.isnan(c.mat)
    assert {"described_instances", "time_description", "detected_instances", "label_matching_accept"} <= set(
        c.skipped
    )


def test_inf_retries_forces_fail_and_ret_to_nan():
    c = metadata_columns(DESC, DET, LM, inf_retries=True)
    assert math.isnan(c.fail) and math.isnan(c.ret)
    assert c.ins == 4.0 and c.time == 2.0  # the other columns are untouched


def test_missing_inputs_give_nan_columns():
    c = metadata_columns(DESC)
    assert math.isnan(c.ins) and math.isnan(c.mat)
    assert c.fail == 0.25 and c.ret == 1.0
    # No detections at all among images with prompts -> Ins. 0 -> Mat. NaN instead of a division by 0.
    c0 = metadata_columns(DESC, detections(("a", 5, 0), ("b", 3, 0)), label_matches(("a", 0, 0)))
    assert c0.ins == 0.0 and math.isnan(c0.mat)
    empty = metadata_columns(descriptions())
    assert (empty.fail, empty.num_images) == (0.0, 0) and math.isnan(empty.ret) and math.isnan(empty.time)


def test_image_stats():
    s = image_stats([4.0, NAN, 1.0, 2.0])
    # NaN fraction 1/4; median of [1, 2, 4] = 2; mean 7/3; population std sqrt(((4-7/3)^2+(1-7/3)^2+(2-7/3)^2)/3)
    assert (s.nan_fraction, s.median, s.max, s.min) == (0.25, 2.0, 4.0, 1.0)
    assert s.mean == pytest.approx(7 / 3)
    assert s.std == pytest.approx(math.sqrt(((5 / 3) ** 2 + (4 / 3) ** 2 + (1 / 3) ** 2) / 3))
    assert image_stats([]) is None and image_stats([NAN, None]) is None


def test_bad_inputs():
    with pytest.raises(ValueError, match="missing column"):
        metadata_columns(DESC.drop(columns=["duration_s"]))
    with pytest.raises(ValueError, match="more than once"):
        metadata_columns(pd.concat([DESC, DESC.iloc[:1]]))
    with pytest.raises(ValueError, match="num_detections"):
        metadata_columns(DESC, detections(("a", 1, "many")))
