"""The statistics columns of the metrics rows and the leaderboard (``stages.statistics``), without a Dagster
instance: intervals worked out by hand, the weighted table's intervals from both datasets' replicates,
rank ranges and groups in the Markdown and CSV, the pairwise CSV and the plot, and the paper's text
tables unchanged by all of it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlm_gist_dagster.protocol.statistics import StatisticsSettings
from vlm_gist_dagster.stages.leaderboard import build_leaderboard, write_leaderboard
from vlm_gist_dagster.stages.metrics import compute_metrics, metrics_statistics_markdown
from vlm_gist_dagster.stages.statistics import LEADERBOARD_COLUMNS, table_statistics
from vlm_gist_dagster_tests.stages.test_metrics import (
    DESCRIPTIONS,
    DETECTION_IMAGES,
    GROUND_TRUTH,
    IMAGES,
    LABEL_MATCHES,
)

PAPER = ("f1", "rec", "prec", "map", "ins", "mat", "time", "fail", "ret")


def hand_made_row(**overrides) -> pd.Series:
    table, _ = compute_metrics(
        dataset="coco", model="m", display_name="M", kind="vlm", simulated=False, images=IMAGES,
        ground_truth=GROUND_TRUTH, descriptions=DESCRIPTIONS, detection_images=DETECTION_IMAGES,
        label_matches=LABEL_MATCHES, **overrides,
    )  # fmt: skip
    return table.iloc[0]


def test_metrics_row_intervals_by_hand():
    """Image a: TP 1, FP 1, FN 1; image b: TP 1. A resample is aa (F1 2/4 = 0.5, prob. 1/4), ab or ba
    (F1 4/6, 1/2) or bb (F1 1, 1/4): with 1,000 resamples the 2.5 % and 97.5 % points are 0.5 and 1."""
    row = hand_made_row()
    assert row["f1"] == pytest.approx(2 / 3)
    assert (row["f1_low"], row["f1_high"]) == (0.5, 1.0)
    assert (row["prec_low"], row["prec_high"]) == (0.5, 1.0)
    f1 = np.asarray(row["bootstrap_f1"])
    assert len(f1) == row["bootstrap_resamples"] == 1000
    assert set(np.round(f1, 12)) == {0.5, round(2 / 3, 12), 1.0}
    assert 0.4 < np.mean(f1 == 1.0) / 0.25 < 1.6  # about a quarter are bb
    # per-image results for the paired tests, in sorted image order
    assert (row["image_ids"], row["image_tp"], row["image_fp"], row["image_fn"]) == (
        ["a", "b"],
        [1, 1],
        [1, 0],
        [1, 0],
    )
    # The cat predicted on the dog counts as found when labels are ignored: TP 3, FP 0, FN 0.
    assert row["agnostic_f1"] == 1.0
    # Every match is exact (IoU 1): F1 is the same at every threshold.
    assert row["f1_50_95"] == pytest.approx(2 / 3)
    # No masks in this pair: NaN, and why.
    assert math.isnan(row["mask_f1"]) and "mask" in row["mask_unavailable_reason"]
    markdown = metrics_statistics_markdown(row)
    assert "| M | 0.667 (0.500–1.000) | 0.667 (0.500–1.000) |" in markdown
    assert "1,000 resamples, seed 0" in markdown


def test_seed_and_resamples_come_from_the_settings():
    a = hand_made_row(statistics=StatisticsSettings(seed=1, bootstrap_resamples=2000))
    b = hand_made_row(statistics=StatisticsSettings(seed=1, bootstrap_resamples=2000))
    c = hand_made_row(statistics=StatisticsSettings(seed=2, bootstrap_resamples=2000))
    assert a["bootstrap_resamples"] == 2000 and a["bootstrap_seed"] == 1
    assert a["bootstrap_f1"] == b["bootstrap_f1"] and a["bootstrap_f1"] != c["bootstrap_f1"]


def test_mask_columns_when_masks_exist():
    """Masks equal to the boxes (rectangles): mask metrics equal the box metrics here."""
    from vlm_gist_dagster.protocol.masks import encode_rle

    def rect(r) -> dict:
        mask = np.zeros((100, 100), dtype=bool)
        mask[round(r.y * 100) : round((r.y + r.h) * 100), round(r.x * 100) : round((r.x + r.w) * 100)] = True
        return encode_rle(mask)

    gt = GROUND_TRUTH.assign(mask=[rect(r) for r in GROUND_TRUTH.itertuples()])
    matches = LABEL_MATCHES.assign(mask=[rect(r) for r in LABEL_MATCHES.itertuples()])
    table, _ = compute_metrics(
        dataset="coco", model="m", display_name="M", kind="vlm", simulated=False, images=IMAGES, ground_truth=gt,
        descriptions=DESCRIPTIONS, detection_images=DETECTION_IMAGES, label_matches=matches,
    )  # fmt: skip
    row = table.iloc[0]
    assert row["mask_unavailable_reason"] is None
    for mask_column, box_column in (
        ("mask_f1", "f1"),
        ("mask_prec", "prec"),
        ("mask_rec", "rec"),
        ("mask_map", "map"),
    ):
        assert row[mask_column] == pytest.approx(row[box_column]), mask_column


def test_a_prediction_whose_segmentation_failed_is_a_false_positive_of_the_mask_metrics():
    """The real SAM2 server answers 500 on a one-pixel-wide mask, so some detections have no mask. With
    box-shaped masks everywhere but on b's cat (a true positive by its box), the mask metrics count TP 1
    (a's cat), FP 2 (the cat on a's dog, b's cat with an empty mask) and FN 2 (a's dog, b's cat):
    precision = recall = F1 = 1/3, while the box metrics stay TP 2, FP 1, FN 1."""
    from vlm_gist_dagster.protocol.masks import encode_rle

    def rect(r) -> dict:
        mask = np.zeros((100, 100), dtype=bool)
        mask[round(r.y * 100) : round((r.y + r.h) * 100), round(r.x * 100) : round((r.x + r.w) * 100)] = True
        return encode_rle(mask)

    gt = GROUND_TRUTH.assign(mask=[rect(r) for r in GROUND_TRUTH.itertuples()])
    masks = [rect(r) for r in LABEL_MATCHES.itertuples()]
    masks[3] = None
    matches = LABEL_MATCHES.assign(mask=masks)
    table, _ = compute_metrics(
        dataset="coco", model="m", display_name="M", kind="vlm", simulated=False, images=IMAGES, ground_truth=gt,
        descriptions=DESCRIPTIONS, detection_images=DETECTION_IMAGES, label_matches=matches,
    )  # fmt: skip
    row = table.iloc[0]
    assert row["mask_unavailable_reason"] is None and row["masks_missing"] == 1
    assert (row["tp"], row["fp"], row["fn"]) == (2, 1, 1)
    assert row["mask_prec"] == pytest.approx(1 / 3) and row["mask_rec"] == pytest.approx(1 / 3)
    assert row["mask_f1"] == pytest.approx(1 / 3)


def metrics_row(
    dataset: str, model: str, tp: list[int], fp: list[int], fn: list[int], f1_replicates=None
) -> dict:
    t, p, f = sum(tp), sum(fp), sum(fn)
    f1 = 2 * t / (2 * t + p + f)
    row = {
        "dataset": dataset, "model": model, "display_name": model.upper(), "simulated": False,
        "f1": f1, "rec": t / (t + f), "prec": t / (t + p), "map": 0.5, "ins": 3.0, "mat": 1.0, "time": 2.0,
        "fail": 0.0, "ret": 0.0, "mask_f1": 0.4, "mask_prec": 0.4, "mask_rec": 0.4, "mask_map": 0.3,
        "agnostic_f1": 0.95, "f1_50_95": f1 / 2,
        "image_ids": [f"i{k:03d}" for k in range(len(tp))], "image_tp": tp, "image_fp": fp, "image_fn": fn,
    }  # fmt: skip
    if f1_replicates is not None:
        row.update(bootstrap_f1=list(f1_replicates), bootstrap_prec=list(f1_replicates),
                   bootstrap_rec=list(f1_replicates), bootstrap_map=list(f1_replicates))  # fmt: skip
    return row


def three_models() -> pd.DataFrame:
    """Per dataset: alpha finds 50 of 60 single objects, beta 49, gamma 15 (no false positives)."""
    rows = []
    for dataset in ("coco", "vlm_gist"):
        for model, found in (("alpha", 50), ("beta", 49), ("gamma", 15)):
            tp = [1] * found + [0] * (60 - found)
            rows.append(metrics_row(dataset, model, tp, [0] * 60, [1 - t for t in tp]))
    return pd.DataFrame(rows)


def test_leaderboard_ranks_groups_and_paper_tables_unchanged(tmp_path):
    frame = three_models()
    board = build_leaderboard(frame)
    paper_only = build_leaderboard(frame[["dataset", "model", "display_name", "simulated", *PAPER]])
    assert board.texts == paper_only.texts  # the paper's text tables do not change
    rows = board.rows.set_index(["table", "model"])
    for table in ("coco", "vlm_gist", "weighted"):
        # alpha vs beta: one image apart (p = 1); both far above gamma (35 images apart).
        assert rows.loc[(table, "alpha"), ["rank_low", "rank_high", "group"]].tolist() == [1, 2, "a"]
        assert rows.loc[(table, "beta"), ["rank_low", "rank_high", "group"]].tolist() == [1, 2, "a"]
        assert rows.loc[(table, "gamma"), ["rank_low", "rank_high", "group"]].tolist() == [3, 3, "b"]
    assert list(board.rows.columns[-len(LEADERBOARD_COLUMNS) :]) == list(LEADERBOARD_COLUMNS)
    pairwise = board.pairwise.set_index(["table", "model_a", "model_b"])
    assert pairwise.loc[("coco", "alpha", "beta"), "p_value"] == 1.0
    assert pairwise.loc[("coco", "alpha", "gamma"), "significant"]
    assert pairwise.loc[("weighted", "beta", "gamma"), "difference"] == pytest.approx(
        2 * 49 / (60 + 49) - 2 * 15 / (60 + 15)
    )
    # Markdown: the statistics table after each paper table, with ranks and groups
    row = (
        "| ALPHA | 0.909 | 1.000 | 0.833 | 0.500 | 1–2 | a | 0.400 | 0.400 | 0.400 | 0.300 | 0.950 | 0.455 |"
    )
    assert row in board.markdown  # no replicates in these rows: values without intervals
    assert board.markdown.count("Uncertainty and extra metrics (not in the paper)") == 3
    assert "Holm-corrected over 3 pairs" in board.markdown

    written = write_leaderboard(board, tmp_path)
    csv = pd.read_csv(tmp_path / "leaderboard.csv")
    assert {
        "f1_low",
        "f1_high",
        "rank_low",
        "rank_high",
        "group",
        "mask_f1",
        "agnostic_f1",
        "f1_50_95",
    } <= set(csv)
    assert len(pd.read_csv(tmp_path / "pairwise_f1.csv")) == 9  # 3 pairs x 3 tables
    with Image.open(written["f1_intervals"]) as image:
        assert image.format == "PNG" and image.width > 300


def test_weighted_intervals_combine_both_datasets():
    """COCO replicates 0, 0.001, ..., 1 and VLM-GIST replicates all 0.5: the weighted replicates are
    0.25 + 0.5 * COCO's, so the interval is 0.25 + 0.5 * (0.025, 0.975) = (0.2625, 0.7375)."""
    coco = metrics_row("coco", "m", [1, 0], [0, 0], [0, 1], f1_replicates=np.arange(1001) / 1000)
    vlm = metrics_row("vlm_gist", "m", [1, 1], [0, 0], [0, 0], f1_replicates=np.full(1001, 0.5))
    stats = table_statistics("weighted", [[coco], [vlm]], [0.5, 0.5], ["M"], StatisticsSettings())
    assert stats.columns.loc["m", ["f1_low", "f1_high"]].tolist() == pytest.approx([0.2625, 0.7375])
    assert stats.columns.loc["m", "mask_map"] == pytest.approx(0.3)  # the paper's weighted rule: a mean
    assert stats.columns.loc["m", "rank_low"] == 1 and stats.columns.loc["m", "group"] == "a"
    only_coco = table_statistics("coco", [[coco]], [1.0], ["M"], StatisticsSettings())
    assert only_coco.columns.loc["m", ["f1_low", "f1_high"]].tolist() == pytest.approx([0.025, 0.975])


def test_rows_from_before_the_statistics_still_make_a_leaderboard():
    frame = three_models()
    old = frame.drop(columns=["image_ids", "image_tp", "image_fp", "image_fn"])
    board = build_leaderboard(old)
    assert board.texts == build_leaderboard(frame).texts
    assert board.rows["rank_low"].isna().all() and board.pairwise.empty
    assert "No paired tests: no per-image results" in board.markdown
    mixed = pd.concat([frame.iloc[:3], old.iloc[3:]], ignore_index=True)  # coco new, vlm_gist old
    rows = build_leaderboard(mixed).rows.set_index(["table", "model"])
    assert rows.loc[("coco", "alpha"), "rank_low"] == 1 and pd.isna(
        rows.loc[("vlm_gist", "alpha"), "rank_low"]
    )


def test_different_image_lists_are_not_compared():
    frame = three_models()
    frame.at[1, "image_ids"] = [f"j{k:03d}" for k in range(60)]  # coco|beta on other images
    board = build_leaderboard(frame)
    assert "evaluated on different image lists" in board.markdown
    assert board.rows.set_index(["table", "model"]).loc[("coco", "alpha"), "group"] == ""


def test_the_columns_are_named_in_the_table_specs():
    from vlm_gist_dagster.stages.statistics import EXTRA_METRICS, INTERVAL_COLUMNS, SAMPLE_COLUMNS
    from vlm_gist_dagster.stages.tables import LEADERBOARD, METRICS

    assert set(INTERVAL_COLUMNS + EXTRA_METRICS + SAMPLE_COLUMNS) <= set(METRICS.names)
    assert LEADERBOARD.names[-len(LEADERBOARD_COLUMNS) :] == LEADERBOARD_COLUMNS
    row = hand_made_row()
    assert list(row.index) == list(METRICS.names)  # every statistics value kept in the stored row
