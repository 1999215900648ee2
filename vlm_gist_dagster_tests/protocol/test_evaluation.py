"""The paper's evaluation (docs/protocol/evaluation.md §2.2-§2.6) on small cases computed by hand.

Boxes use dyadic fractions (0.5, 0.25, 0.125, ...) wherever an exact IoU matters, so that the
arithmetic in the comments is exact in floating point too. Full-height boxes (y=0, h=1) reduce IoU to
the 1-D interval IoU along x.
"""

import math

import numpy as np
import pandas as pd
import pytest

from vlm_gist_dagster.protocol.evaluation import IOU_THRESHOLDS, box_iou, evaluate


def gt_frame(*rows):
    """rows: (image_id, label, x, y, w, h[, iscrowd])"""
    return pd.DataFrame(
        [
            {
                "image_id": r[0],
                "label": r[1],
                "x": r[2],
                "y": r[3],
                "w": r[4],
                "h": r[5],
                "iscrowd": r[6] if len(r) > 6 else 0,
            }
            for r in rows
        ],
        columns=["image_id", "label", "x", "y", "w", "h", "iscrowd"],
    )


def pred_frame(*rows):
    """rows: (image_id, label, x, y, w, h, confidence)"""
    return pd.DataFrame(
        [
            {"image_id": r[0], "label": r[1], "x": r[2], "y": r[3], "w": r[4], "h": r[5], "confidence": r[6]}
            for r in rows
        ],
        columns=["image_id", "label", "x", "y", "w", "h", "confidence"],
    )


def run(gt, pred, **kw):
    return evaluate(gt, pred, coco_standard=False, **kw)


# ---- IoU -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, gt, crowd, expected",
    [
        ((0.25, 0.25, 0.5, 0.5), (0.25, 0.25, 0.5, 0.5), False, 1.0),  # identical
        ((0.0, 0.0, 0.25, 0.25), (0.25, 0.0, 0.25, 0.25), False, 0.0),  # touching edge: width 0 -> 0
        ((0.0, 0.0, 0.25, 0.25), (0.5, 0.5, 0.25, 0.25), False, 0.0),  # disjoint
        # half shifted: inter 0.125*0.25 = 1/32; union 1/16 + 1/16 - 1/32 = 3/32 -> 1/3
        ((0.0, 0.0, 0.25, 0.25), (0.125, 0.0, 0.25, 0.25), False, 1 / 3),
        # GT inside prediction: inter 1/16, union 1/4 -> 0.25
        ((0.0, 0.0, 0.5, 0.5), (0.125, 0.125, 0.25, 0.25), False, 0.25),
        # crowd GT: union = prediction area. Prediction inside the crowd: (1/16)/(1/16) = 1
        ((0.125, 0.125, 0.25, 0.25), (0.0, 0.0, 0.5, 0.5), True, 1.0),
        # crowd GT inside the prediction: (1/16)/(1/4) = 0.25
        ((0.0, 0.0, 0.5, 0.5), (0.125, 0.125, 0.25, 0.25), True, 0.25),
    ],
)
def test_box_iou(pred, gt, crowd, expected):
    assert float(box_iou(np.array(pred), np.array(gt), crowd)) == pytest.approx(expected, abs=1e-15)


def test_iou_exactly_at_threshold_is_a_match():
    # pred [0,0,.5,.5] vs GT [0,0,.5,.25]: inter 1/8, union 1/4 + 1/8 - 1/8 = 1/4 -> IoU 0.5 exactly.
    gt = gt_frame(("a", "cup", 0.0, 0.0, 0.5, 0.25))
    pred = pred_frame(("a", "cup", 0.0, 0.0, 0.5, 0.5, 0.9))
    assert run(gt, pred).tp == 1  # >= 0.5 counts (docs/protocol/evaluation.md gotcha 11)
    r = run(gt, pred, iou=0.55)
    assert (r.tp, r.fp, r.fn) == (0, 1, 1)
    # In the sweep the match exists only at t = 0.50: AP = 1 there, 0 at the other nine -> mAP 0.1
    assert run(gt, pred).mAP == pytest.approx(1 / 10, abs=1e-12)


def test_classwise_matching_needs_identical_label():
    gt = gt_frame(("a", "cup", 0.0, 0.0, 0.5, 0.5))
    pred = pred_frame(("a", "Cup", 0.0, 0.0, 0.5, 0.5, 0.9))  # case differs -> another class
    r = run(gt, pred)
    assert (r.tp, r.fp, r.fn) == (0, 1, 1)


def test_matching_is_per_image():
    gt = gt_frame(("a", "cup", 0.0, 0.0, 0.5, 0.5))
    pred = pred_frame(("b", "cup", 0.0, 0.0, 0.5, 0.5, 0.9))  # same box, other image
    r = run(gt, pred)
    assert (r.tp, r.fp, r.fn) == (0, 1, 1)
    per_image = r.per_image.set_index("image_id")
    assert per_image.loc["a"].tolist() == [0, 0, 1] and per_image.loc["b"].tolist() == [0, 1, 0]


# ---- greedy matching -------------------------------------------------------------------------------

# Full-height boxes: G1 = [0, .5], G2 = [.25, .75], A = [.125, .625], B = G2 along x.
# IoU(A, G1) = (.5 - .125) / (1 - .375)... precisely: inter .375, union .5 + .5 - .375 = .625 -> 0.6
# IoU(A, G2) = inter (.625 - .25) = .375, union .625 -> 0.6 (a tie)
# IoU(B, G2) = 1; IoU(B, G1) = inter .25 / union .75 = 1/3 (< 0.5)
G1 = (0.0, 0.0, 0.5, 1.0)
G2 = (0.25, 0.0, 0.5, 1.0)
A = (0.125, 0.0, 0.5, 1.0)


def test_greedy_tie_goes_to_the_later_ground_truth():
    gt = gt_frame(("i", "x", *G1), ("i", "x", *G2))
    pred = pred_frame(("i", "x", *A, 0.9), ("i", "x", *G2, 0.8))
    r = run(gt, pred)
    # A (first by confidence) ties G1/G2 at 0.6 and takes the later one, G2 (docs/protocol/evaluation.md §2.4 step 4).
    # B then finds G2 taken and G1 at 1/3 -> FP; G1 stays unmatched -> FN. Greedy, not optimal.
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)
    assert r.prediction_matches["gt_row"].tolist() == [1, -1]
    assert r.prediction_matches["iou"].iloc[0] == 0.6
    assert r.ground_truth_matches["status"].tolist() == ["fn", "tp"]


def test_greedy_tie_with_ground_truth_order_swapped():
    gt = gt_frame(("i", "x", *G2), ("i", "x", *G1))
    pred = pred_frame(("i", "x", *A, 0.9), ("i", "x", *G2, 0.8))
    r = run(gt, pred)
    # Now G1 is later: A takes G1, B takes G2 at IoU 1 -> two TPs.
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)
    assert r.prediction_matches["gt_row"].tolist() == [1, 0]


def test_higher_confidence_wins_even_with_lower_iou():
    gt = gt_frame(("i", "x", *G2))
    pred = pred_frame(("i", "x", *G2, 0.1), ("i", "x", *A, 0.9))  # exact box, low confidence first in rows
    r = run(gt, pred)
    # A (0.9, IoU 0.6) is processed first and takes G2; the exact box becomes FP.
    assert r.prediction_matches["status"].tolist() == ["fp", "tp"]


def test_duplicate_predictions():
    gt = gt_frame(("i", "x", 0.0, 0.0, 0.5, 0.5))
    pred = pred_frame(("i", "x", 0.0, 0.0, 0.5, 0.5, 0.7), ("i", "x", 0.0, 0.0, 0.5, 0.5, 0.7))
    r = run(gt, pred)
    # Equal confidence: stable order, the first row matches, the duplicate is a FP.
    assert r.prediction_matches["status"].tolist() == ["tp", "fp"]
    assert (r.precision, r.recall) == (0.5, 1.0)
    # F1 = 2PR/(P+R) = 2*.5*1/1.5 = 2/3; accuracy = TP/(TP+FP+FN) = 1/2
    assert r.fscore == pytest.approx(2 / 3, abs=1e-15)
    assert r.accuracy == 0.5


def test_missing_and_zero_confidence_sort_as_minus_one():
    gt = gt_frame(("i", "x", *G2))
    pred = pred_frame(
        ("i", "x", *G2, None),  # key -1, row 0
        ("i", "x", *G2, 0.0),  # 0.0 -> -1 too (``confidence or -1``), row 1
        ("i", "x", *A, -0.5),  # -0.5 > -1: processed first although its IoU is only 0.6
    )
    r = run(gt, pred)
    assert r.prediction_matches["status"].tolist() == ["fp", "fp", "tp"]
    assert r.prediction_matches["rank"].tolist() == [1, 2, 0]  # stable among the two -1 keys


def test_missing_confidence_before_zero_keeps_row_order():
    gt = gt_frame(("i", "x", *G2))
    pred = pred_frame(("i", "x", *G2, 0.0), ("i", "x", *G2, None))
    assert run(gt, pred).prediction_matches["status"].tolist() == ["tp", "fp"]


# ---- P / R / F1 ------------------------------------------------------------------------------------


def test_pooled_micro_metrics_over_images_and_classes():
    # image a: 2 cups (1 found), 1 dog (found); image b: 1 cup (missed), 1 extra cat prediction.
    gt = gt_frame(
        ("a", "cup", 0.0, 0.0, 0.25, 0.25), ("a", "cup", 0.5, 0.5, 0.25, 0.25), ("a", "dog", 0.5, 0.0, 0.25, 0.25),
        ("b", "cup", 0.0, 0.0, 0.25, 0.25),
    )  # fmt: skip
    pred = pred_frame(
        ("a", "cup", 0.0, 0.0, 0.25, 0.25, 0.9), ("a", "dog", 0.5, 0.0, 0.25, 0.25, 0.8),
        ("b", "cat", 0.0, 0.0, 0.25, 0.25, 0.7),
    )  # fmt: skip
    r = run(gt, pred)
    # TP 2, FP 1, FN 2 -> P = 2/3, R = 2/4, F1 = 2*2/(2*2+1+2) = 4/7, accuracy 2/5, support 4
    assert (r.tp, r.fp, r.fn, r.support) == (2, 1, 2, 4)
    assert r.precision == pytest.approx(2 / 3, abs=1e-15)
    assert r.recall == 0.5
    assert r.fscore == pytest.approx(4 / 7, abs=1e-15)
    assert r.accuracy == pytest.approx(2 / 5, abs=1e-15)
    pc = r.per_class
    # cup: tp 1, fp 0, fn 2 -> P 1, R 1/3, F1 2/(1+3)... 2*1/(3+1) = 0.5, support 3
    assert pc["cup"] == {"precision": 1.0, "recall": pytest.approx(1 / 3), "f1-score": 0.5, "support": 3}
    # cat: tp 0, fp 1, fn 0 -> all 0 (zero_division=0), support 0
    assert pc["cat"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
    assert pc["dog"] == {"precision": 1.0, "recall": 1.0, "f1-score": 1.0, "support": 1}
    assert pc["micro avg"]["f1-score"] == pytest.approx(4 / 7)
    # macro: P (1+0+1)/3, R (1/3+0+1)/3, F1 (.5+0+1)/3
    assert pc["macro avg"]["precision"] == pytest.approx(2 / 3)
    assert pc["macro avg"]["f1-score"] == pytest.approx(0.5)
    # weighted by support (3, 0, 1): R = (3*(1/3) + 1*1)/4 = 0.5
    assert pc["weighted avg"]["recall"] == pytest.approx(0.5)


def test_no_predictions_and_no_ground_truth():
    gt = gt_frame(("a", "cup", 0.0, 0.0, 0.25, 0.25))
    r = run(gt, pred_frame())
    # zero_division=0 everywhere; the class with GT has AP 0 -> mAP 0 (FiftyOne's behaviour)
    assert (r.precision, r.recall, r.fscore, r.tp, r.fn) == (0.0, 0.0, 0.0, 0, 1)
    assert (r.mAP, r.mAR, r.mAP_available) == (0.0, 0.0, True)
    empty = run(gt_frame(), pred_frame())
    assert (empty.precision, empty.fscore, empty.support) == (0.0, 0.0, 0)
    assert empty.mAP_available is False and math.isnan(empty.mAP)
    assert "no class has ground truth" in empty.mAP_unavailable_reason


# ---- mAP / mAR -------------------------------------------------------------------------------------


def test_ap_ties_rank_true_positives_first():
    # One class, 2 GT far apart. p1 (0.5) on G1 -> TP; p2 (0.5) elsewhere -> FP; p3 (0.3) on G2 -> TP.
    # IoUs are 1 or 0, so every threshold gives the same outcome.
    gt = gt_frame(("i", "x", 0.0, 0.0, 0.25, 0.25), ("i", "x", 0.5, 0.5, 0.25, 0.25))
    pred = pred_frame(
        ("i", "x", 0.5, 0.0, 0.25, 0.25, 0.5),  # FP listed first
        ("i", "x", 0.0, 0.0, 0.25, 0.25, 0.5),
        ("i", "x", 0.5, 0.5, 0.25, 0.25, 0.3),
    )
    r = run(gt, pred)
    # Sweep order [TP .5, FP .5, TP .3]: precision 1, 1/2, 2/3 -> monotone 1, 2/3, 2/3; recall .5, .5, 1.
    # Recall points 0.00..0.50 (51 of them) hit index 0 -> 1; 0.51..1.00 (50) hit index 2 -> 2/3.
    # AP = (51 * 1 + 50 * 2/3) / 101 = 253/303. (FP-first order would give 2/3.)
    assert r.mAP == pytest.approx(253 / 303, abs=1e-12)
    assert r.mAR == 1.0


def test_ap_without_ties():
    # 3 GT; predictions by confidence: TP, FP, TP (IoU 1 or 0). num_gt = 3.
    gt = gt_frame(*[("i", "x", 0.25 * k, 0.0, 0.125, 0.125) for k in range(3)])
    pred = pred_frame(
        ("i", "x", 0.0, 0.0, 0.125, 0.125, 0.9),
        ("i", "x", 0.0, 0.5, 0.125, 0.125, 0.8),
        ("i", "x", 0.25, 0.0, 0.125, 0.125, 0.7),
    )
    r = run(gt, pred)
    # precision 1, 1/2, 2/3 -> monotone 1, 2/3, 2/3; recall 1/3, 1/3, 2/3.
    # r <= 1/3 (r = 0.00..0.33: 34 points) -> 1; 1/3 < r <= 2/3 (0.34..0.66: 33 points) -> 2/3; rest 0.
    # AP = (34 + 33 * 2/3) / 101 = 56/101; mAR = 2/3
    assert r.mAP == pytest.approx(56 / 101, abs=1e-12)
    assert r.mAR == pytest.approx(2 / 3, abs=1e-12)


def test_iou_sweep_over_ten_thresholds():
    # pred vs GT along x: GT [0, .5], pred [0, .375]: IoU = .375/.5 = 0.75 -> a match for t = .50 ... .75
    # (6 of the 10 thresholds; 0.75 counts since >=), AP 1 there and 0 elsewhere -> mAP 0.6, mAR 0.6.
    assert IOU_THRESHOLDS[5] == 0.75
    gt = gt_frame(("i", "x", 0.0, 0.0, 0.5, 1.0))
    pred = pred_frame(("i", "x", 0.0, 0.0, 0.375, 1.0, 0.9))
    r = run(gt, pred)
    assert r.mAP == pytest.approx(0.6, abs=1e-12)
    assert r.mAR == pytest.approx(0.6, abs=1e-12)


def test_classes_without_ground_truth_or_without_predictions():
    gt = gt_frame(("i", "cat", 0.0, 0.0, 0.25, 0.25), ("i", "dog", 0.5, 0.5, 0.25, 0.25))
    pred = pred_frame(("i", "cat", 0.0, 0.0, 0.25, 0.25, 0.9), ("i", "ghost", 0.5, 0.0, 0.25, 0.25, 0.95))
    r = run(gt, pred)
    # ghost has no GT: excluded from mAP (but its FP lowers precision). cat AP 1, dog (no predictions) AP 0.
    assert r.mAP == 0.5 and r.mAR == 0.5
    assert r.class_ap == {"cat": 1.0, "dog": 0.0}
    assert r.num_classes_with_ground_truth == 2
    assert (r.precision, r.recall) == (0.5, 0.5)


def test_missing_confidence_makes_map_unavailable():
    gt = gt_frame(("i", "cat", 0.0, 0.0, 0.25, 0.25))
    pred = pred_frame(("i", "cat", 0.0, 0.0, 0.25, 0.25, 0.9), ("i", "cat", 0.5, 0.5, 0.25, 0.25, None))
    r = run(gt, pred)
    assert r.mAP_available is False and math.isnan(r.mAP) and math.isnan(r.mAR)
    assert "confidence" in r.mAP_unavailable_reason
    assert r.performance_metrics()["mAP"] is None and r.performance_metrics()["mAR"] is None
    assert (r.tp, r.fp, r.precision) == (1, 1, 0.5)  # P/R/F1 are still computed


def test_missing_confidence_in_a_class_without_ground_truth_keeps_map():
    # FiftyOne raises only while sweeping a class with GT; a class without GT is skipped before.
    gt = gt_frame(("i", "cat", 0.0, 0.0, 0.25, 0.25))
    pred = pred_frame(("i", "cat", 0.0, 0.0, 0.25, 0.25, 0.9), ("i", "ghost", 0.5, 0.5, 0.25, 0.25, None))
    r = run(gt, pred)
    assert r.mAP_available is True and r.mAP == 1.0


def test_only_100_predictions_per_image_and_class_in_the_sweep():
    gt = gt_frame(("i", "x", 0.0, 0.0, 0.0625, 0.0625))
    # 100 FPs at confidence 0.9 (disjoint from the GT) and the only TP at 0.1: rank 100, cut from the
    # sweep -> AP 0; but P/R use all predictions: TP 1, FP 100.
    fps = [("i", "x", 0.5, 0.5, 0.0625, 0.0625, 0.9)] * 100
    pred = pred_frame(*fps, ("i", "x", 0.0, 0.0, 0.0625, 0.0625, 0.1))
    r = run(gt, pred)
    assert (r.tp, r.fp, r.recall) == (1, 100, 1.0)
    assert r.mAP == 0.0 and r.mAR == 0.0
    # A missing confidence sorts last (-1) and falls outside the top 100 too: mAP stays available.
    pred2 = pred_frame(("i", "x", 0.0, 0.0, 0.0625, 0.0625, 0.5), *[("i", "x", 0.5, 0.5, 0.0625, 0.0625, 0.4)] * 99,
                       ("i", "x", 0.5, 0.5, 0.0625, 0.0625, None))  # fmt: skip
    r2 = run(gt, pred2)
    assert r2.mAP_available is True and r2.mAP == 1.0  # the TP ranks first: precision 1 at recall 1


def test_crowd_ground_truth():
    # G: normal cat; C: crowd cat region [.5, 1] x [.5, 1]. p1 on G; p2 and p3 inside C (IoU with a
    # crowd = inter / prediction area = 1); p4 overlaps G at 0.6 and C fully -> the non-crowd wins.
    gt = gt_frame(("i", "cat", *G1), ("i", "cat", 0.5, 0.5, 0.5, 0.5, 1))
    gt.loc[0, ["y", "h"]] = [0.0, 0.5]  # G = [0, .5] x [0, .5]
    pred = pred_frame(
        ("i", "cat", 0.0, 0.0, 0.5, 0.5, 0.9),
        ("i", "cat", 0.5, 0.5, 0.25, 0.25, 0.8),
        ("i", "cat", 0.75, 0.75, 0.25, 0.25, 0.7),
    )
    r = run(gt, pred)
    # Crowds can be matched several times; FiftyOne counts each as a TP: TP 3, FP 0, FN 0, support 3.
    assert (r.tp, r.fp, r.fn, r.support) == (3, 0, 0, 3)
    assert r.prediction_matches["gt_row"].tolist() == [0, 1, 1]
    assert r.ground_truth_matches["pred_row"].tolist() == [0, 1]  # first (highest-confidence) match
    # In the sweep crowd matches are skipped and crowds are not counted as GT: num_gt 1, one TP -> AP 1.
    assert r.mAP == 1.0
    # Unmatched crowd GT is a FN in P/R (it is an ordinary GT tuple there).
    r2 = run(gt, pred.iloc[:1])
    assert (r2.tp, r2.fn) == (1, 1)


def test_non_crowd_match_beats_a_better_crowd_match():
    # p: [0, .5] x [0, 1] (full height); G (non-crowd) = [.125, .625] -> IoU 0.6; crowd C = [0, 1] x [0, 1]
    # -> IoU with a crowd = inter/pred area = 1. FiftyOne breaks at the first crowd once a non-crowd
    # match exists, so p matches G.
    gt = gt_frame(("i", "x", *A), ("i", "x", 0.0, 0.0, 1.0, 1.0, 1))
    pred = pred_frame(("i", "x", *G1, 0.9))
    r = run(gt, pred)
    assert r.prediction_matches["gt_row"].tolist() == [0]
    assert r.prediction_matches["iou"].tolist() == [0.6]


def test_typed_fields_and_scalars():
    gt = gt_frame(("a", "cup", 0.0, 0.0, 0.5, 0.5))
    r = run(gt, pred_frame(("a", "cup", 0.0, 0.0, 0.5, 0.5, 0.9)))
    for key in ("precision", "recall", "fscore", "accuracy", "support", "tp", "fp", "fn", "mAP", "mAR"):
        assert key in r.scalars()
    assert r.fscore == 1.0 and isinstance(r.tp, int)
    with pytest.raises(TypeError):
        r["fscore"]  # a plain typed object, not a mapping
    assert "per_image" not in r.scalars() and r.scalars()["tp"] == 1
    assert r.coco_unavailable["bbox"].startswith("not computed")
    # Nothing unmatched: sklearn's report (and so FiftyOne's) has "accuracy" instead of "micro avg".
    assert r.per_class["accuracy"] == 1.0 and "micro avg" not in r.per_class
    assert r.per_class["cup"] == {"precision": 1.0, "recall": 1.0, "f1-score": 1.0, "support": 1}


# ---- input validation ------------------------------------------------------------------------------


def test_zero_size_box_is_rejected_as_in_the_paper():
    gt = gt_frame(("a", "cup", 0.0, 0.0, 0.0, 0.5))
    with pytest.raises(ValueError, match=r"ground_truth: row 0 .*w > 0 and h > 0"):
        run(gt, pred_frame())


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="missing column"):
        run(gt_frame().drop(columns=["w"]), pred_frame())
    bad_label = pred_frame(("a", None, 0.0, 0.0, 0.5, 0.5, 0.9))
    with pytest.raises(ValueError, match="predictions: row 0 .*'label'"):
        run(gt_frame(), bad_label)
    bad_conf = pred_frame(("a", "cup", 0.0, 0.0, 0.5, 0.5, "high"))
    with pytest.raises(ValueError, match="'confidence'"):
        run(gt_frame(), bad_conf)
    nan_box = pred_frame(("a", "cup", float("nan"), 0.0, 0.5, 0.5, 0.9))
    with pytest.raises(ValueError, match="non-finite box"):
        run(gt_frame(), nan_box)
    with pytest.raises(ValueError, match="iou"):
        run(gt_frame(), pred_frame(), iou=0)
