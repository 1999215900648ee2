"""Stage E for one pair (``stages.metrics``) on a hand-made pair, without a Dagster instance: every
number below is worked out by hand in the comments."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from vlm_gist_dagster.stages.leaderboard import build_leaderboard
from vlm_gist_dagster.stages.metrics import (
    compute_metrics,
    metrics_markdown,
    per_image_matches,
    predictions_from_label_matches,
)

IMAGES = pd.DataFrame({"image_id": ["a", "b"], "width": [100, 100], "height": [100, 100]})
GROUND_TRUTH = pd.DataFrame(
    {
        "image_id": ["a", "a", "b"],
        "label": ["cat", "dog", "cat"],
        "x": [0.0, 0.5, 0.1],
        "y": [0.0, 0.5, 0.1],
        "w": [0.4, 0.4, 0.3],
        "h": [0.4, 0.4, 0.3],
        "mask": [None, None, None],
        "iscrowd": [0, 0, 0],
    }
)
DESCRIPTIONS = pd.DataFrame(
    {
        "image_id": ["a", "b"],
        "success": [True, True],
        "num_described": [3, 1],
        "failed_attempts": [1, 0],
        "duration_s": [2.0, 4.0],
        "tokens_in": [100, 50],
        "tokens_out": [10, 5],
        "cost_usd": [0.01, float("nan")],
    }
)
DETECTION_IMAGES = pd.DataFrame({"image_id": ["a", "b"], "num_prompts": [3, 1], "num_detections": [3, 1]})
# a: a cat exactly on the cat (TP), a cat on the dog (FP: wrong class), a wall (not a target: dropped);
# b: a cat exactly on the cat (TP). The dog is missed (FN).
LABEL_MATCHES = pd.DataFrame(
    {
        "image_id": ["a", "a", "a", "b"],
        "dataset_match": ["cat", "cat", None, "cat"],
        "skipped": [False, False, False, False],
        "confidence": [0.9, 0.8, 0.95, 0.7],
        "x": [0.0, 0.5, 0.0, 0.1],
        "y": [0.0, 0.5, 0.0, 0.1],
        "w": [0.4, 0.4, 1.0, 0.3],
        "h": [0.4, 0.4, 1.0, 0.3],
        "mask": [None, None, None, None],
    }
)


def test_unmatched_labels_are_dropped_not_counted():
    predictions = predictions_from_label_matches(LABEL_MATCHES)
    assert list(predictions["label"]) == ["cat", "cat", "cat"]
    assert list(predictions["confidence"]) == [0.9, 0.8, 0.7]
    counts = per_image_matches(LABEL_MATCHES)
    assert counts.to_dict("list") == {"image_id": ["a", "b"], "accepted": [2, 1], "rejected": [1, 0]}


def test_compute_metrics_on_a_hand_made_pair():
    table, result = compute_metrics(
        dataset="coco",
        model="m",
        display_name="M",
        kind="vlm",
        simulated=True,
        images=IMAGES,
        ground_truth=GROUND_TRUTH,
        descriptions=DESCRIPTIONS,
        detection_images=DETECTION_IMAGES,
        label_matches=LABEL_MATCHES,
    )
    row = table.iloc[0]
    assert (row["tp"], row["fp"], row["fn"]) == (2, 1, 1)
    assert row["prec"] == pytest.approx(2 / 3) and row["rec"] == pytest.approx(2 / 3)
    assert row["f1"] == pytest.approx(2 / 3)
    # cat: TP 0.9, FP 0.8, TP 0.7 over 2 GT at every threshold; precision envelope 1 up to recall 0.5
    # (51 of the 101 points), 2/3 above (50 points); dog: no prediction, AP 0; mAP = their mean.
    assert row["map"] == pytest.approx((51 + 50 * 2 / 3) / 101 / 2)
    assert row["ins"] == 2.0  # (3 + 1) / 2 detections per image with prompts
    assert row["mat"] == 0.75  # accepted per image (2 + 1) / 2 = 1.5, over Ins.
    assert row["time"] == 3.0 and row["fail"] == 0.0 and row["ret"] == 0.5
    assert (row["tokens_in"], row["tokens_out"]) == (150, 15) and row["cost_usd"] == pytest.approx(0.01)
    assert row["num_predictions"] == 3 and row["num_images"] == 2
    assert math.isnan(row["coco_segm_ap"])  # no masks on either side: boxes only
    assert result.tp == 2


def test_metrics_markdown_is_the_leaderboards_row():
    table, _ = compute_metrics(
        dataset="coco", model="m", display_name="M", kind="vlm", simulated=True, images=IMAGES,
        ground_truth=GROUND_TRUTH, descriptions=DESCRIPTIONS, detection_images=DETECTION_IMAGES,
        label_matches=LABEL_MATCHES,
    )  # fmt: skip
    markdown = metrics_markdown(table.iloc[0])
    expected = "| M (simulated) | 0.667 | 0.667 | 0.667 | 0.417 | 2.0 | 0.75 | 3.0s | 0.00 | 0.50 |"
    assert markdown.splitlines()[2] == expected
    assert markdown.splitlines()[2] in build_leaderboard(table).markdown.splitlines()
    # Half-up on the shortest repr, as the paper's tables: 0.1245 -> 0.125 (":.3f" printed 0.124).
    assert "| 0.125 |" in metrics_markdown({**table.iloc[0].to_dict(), "f1": 0.1245})
