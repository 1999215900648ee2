"""Cross-checks of ``protocol.evaluation`` against the reference implementations, on the real data.

* FiftyOne's ``evaluate_detections(method="coco", compute_mAP=True)`` (the paper's evaluation,
  docs/protocol/evaluation.md §2.3) on the VLM-GIST dataset and the COCO sample (crowd regions kept, so crowd
  handling is exercised), each with several seeded random prediction sets built from the ground truth:
  jittered boxes, wrong labels, duplicates, many equal confidences, zero and missing confidences.
  Dataset-level P/R/F1/accuracy/support, TP/FP/FN, mAP/mAR, the per-class report, the per-sample
  counts and every object's TP/FP/FN status and matched id must agree (numbers to 1e-9).
* pycocotools' ``COCOeval`` run here, independently and with standard parameters, in pixel
  coordinates, for the extra COCO-standard bbox and segm AP columns.

FiftyOne installed here is 1.22.1; the paper used 1.7.2. Its ``utils/eval/coco.py`` matching, sweep and
PR code reads as docs/protocol/evaluation.md §2.4-§2.6 describes 1.7.2 (same sort key ``confidence or -1``, crowds-last GT
sort, ``iou < best_iou: continue``, TP-first mergesort, top-100, 101 points). One upstream snapshot
records an unmatched prediction only ``elif pred.label == cat`` and sweeps with ``map_samples``; both
matter only for ``classwise=False`` / speed, not for the paper's classwise evaluation.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest

from vlm_gist_dagster.datasets import load_dataset
from vlm_gist_dagster.protocol.evaluation import evaluate
from vlm_gist_dagster.protocol.masks import encode_rle

METRICS = ("precision", "recall", "fscore", "accuracy", "support")


def random_predictions(
    gt: pd.DataFrame, seed: int, *, missing_confidence: float = 0.0, coarse_confidence: bool = False
) -> pd.DataFrame:
    """A seeded prediction set made from the ground truth: 75% of the GT objects are predicted once
    (15% of those twice: duplicates), boxes jittered by N(0, 0.15) of their size (some kept exact),
    15% with a wrong label from the same dataset; plus 20% random false boxes. Confidences: half
    rounded to one decimal (ties), 5% exactly 0.0; ``coarse_confidence`` draws from {0, .5, 1} only;
    ``missing_confidence`` is the fraction set to None. Rows are shuffled (order matters for ties)."""
    rng = np.random.default_rng(seed)
    labels = gt["label"].unique()
    rows = []
    for r in gt.itertuples():
        if rng.random() < 0.25:
            continue
        for _ in range(1 + int(rng.random() < 0.15)):
            jitter = rng.normal(0, 0.15, 4) * [r.w, r.h, r.w, r.h] * (rng.random() > 0.1)
            if coarse_confidence:
                conf = float(rng.choice([0.0, 0.5, 1.0]))
            else:
                conf = float(np.round(rng.random(), 1)) if rng.random() < 0.5 else float(rng.random())
                conf = 0.0 if rng.random() < 0.05 else conf
            rows.append(
                {
                    "image_id": r.image_id,
                    "label": r.label if rng.random() > 0.15 else labels[rng.integers(len(labels))],
                    "x": r.x + jitter[0], "y": r.y + jitter[1],
                    "w": max(r.w + jitter[2], 1e-3), "h": max(r.h + jitter[3], 1e-3),
                    "confidence": None if rng.random() < missing_confidence else conf,
                }
            )  # fmt: skip
    images = gt["image_id"].unique()
    for _ in range(len(gt) // 5):
        rows.append(
            {
                "image_id": images[rng.integers(len(images))], "label": labels[rng.integers(len(labels))],
                "x": rng.random() * 0.8, "y": rng.random() * 0.8, "w": rng.random() * 0.3 + 0.01, "h": rng.random() * 0.3 + 0.01,
                "confidence": float(rng.random()),
            }
        )  # fmt: skip
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df["confidence"] = df["confidence"].astype(object).where(df["confidence"].notna(), None)
    return df


def fiftyone_reference(
    images: pd.DataFrame, gt: pd.DataFrame, prediction_sets: list[pd.DataFrame]
) -> list[dict]:
    """Build one FiftyOne dataset (GT + one field per prediction set) and evaluate every set as the
    paper's node does: ``compute_mAP=True``, falling back to ``compute_mAP=False`` (mAP None) when
    the PR sweep raises (docs/protocol/evaluation.md §2.3)."""
    import fiftyone as fo

    fo.config.show_progress_bars = False
    dataset = fo.Dataset()
    gt_row_of_id: dict[str, int] = {}
    pred_row_of_id: list[dict[str, int]] = [{} for _ in prediction_sets]
    gt_by_image = {k: v for k, v in gt.groupby("image_id", sort=False)}
    preds_by_image = [{k: v for k, v in p.groupby("image_id", sort=False)} for p in prediction_sets]
    samples = []
    for img in images.itertuples():
        sample = fo.Sample(filepath=img.path)
        dets = []
        g = gt_by_image.get(img.image_id, gt.iloc[:0])
        for pos, r in zip(gt.index.get_indexer(g.index), g.itertuples()):
            d = fo.Detection(label=r.label, bounding_box=[r.x, r.y, r.w, r.h], iscrowd=int(r.iscrowd))
            gt_row_of_id[d.id] = int(pos)
            dets.append(d)
        sample["ground_truth"] = fo.Detections(detections=dets)
        for i, (pred, by_image) in enumerate(zip(prediction_sets, preds_by_image)):
            p = by_image.get(img.image_id, pred.iloc[:0])
            dets = []
            for pos, r in zip(pred.index.get_indexer(p.index), p.itertuples()):
                d = fo.Detection(label=r.label, bounding_box=[r.x, r.y, r.w, r.h], confidence=r.confidence)
                pred_row_of_id[i][d.id] = int(pos)
                dets.append(d)
            sample[f"pred{i}"] = fo.Detections(detections=dets)
        samples.append(sample)
    dataset.add_samples(samples)

    refs = []
    for i in range(len(prediction_sets)):
        key = f"eval{i}"
        try:
            results = dataset.evaluate_detections(
                f"pred{i}", gt_field="ground_truth", eval_key=key, compute_mAP=True
            )
            mAP, mAR = results.mAP(), results.mAR()
        except ValueError:
            dataset.delete_evaluation(key)
            results = dataset.evaluate_detections(
                f"pred{i}", gt_field="ground_truth", eval_key=key, compute_mAP=False
            )
            mAP = mAR = None
        ref = dict(results.metrics(), mAP=mAP, mAR=mAR, report=results.report())
        ref["tp"], ref["fp"], ref["fn"] = (dataset.sum(f"{key}_{t}") for t in ("tp", "fp", "fn"))
        ref["per_image"] = {
            s.filepath: (s[f"{key}_tp"], s[f"{key}_fp"], s[f"{key}_fn"])
            for s in dataset.select_fields([f"{key}_tp", f"{key}_fp", f"{key}_fn"])
        }
        pred_status, gt_status = {}, {}
        for s in dataset.select_fields(["ground_truth", f"pred{i}"]):
            for d in s[f"pred{i}"].detections:
                matched = d[f"{key}_id"]
                pred_status[pred_row_of_id[i][d.id]] = (d[key], gt_row_of_id[matched] if matched else -1)
            for d in s["ground_truth"].detections:
                matched = d[f"{key}_id"]
                gt_status[gt_row_of_id[d.id]] = (d[key], pred_row_of_id[i][matched] if matched else -1)
        ref["pred_status"], ref["gt_status"] = pred_status, gt_status
        refs.append(ref)
    dataset.delete()
    return refs


def assert_same_as_fiftyone(ours, ref, images: pd.DataFrame) -> None:
    for key in METRICS:
        assert getattr(ours, key) == pytest.approx(ref[key], abs=1e-9), key
    assert (ours.tp, ours.fp, ours.fn) == (ref["tp"], ref["fp"], ref["fn"])
    if ref["mAP"] is None:
        assert ours.mAP_available is False and np.isnan(ours.mAP)
    else:
        assert ours.mAP_available is True
        assert ours.mAP == pytest.approx(ref["mAP"], abs=1e-9)
        assert ours.mAR == pytest.approx(ref["mAR"], abs=1e-9)
    # Per-class report (sklearn's classification_report inside FiftyOne).
    assert set(ours.per_class) == set(ref["report"])
    for cls, entry in ref["report"].items():
        if not isinstance(entry, dict):  # sklearn's scalar "accuracy" when nothing is unmatched
            assert ours.per_class[cls] == pytest.approx(entry, abs=1e-9)
            continue
        for k, v in entry.items():
            assert ours.per_class[cls][k] == pytest.approx(v, abs=1e-9), (cls, k)
    # Per sample and per object.
    path_of = dict(zip(images["image_id"], images["path"]))
    per_image = {path_of[r.image_id]: (r.tp, r.fp, r.fn) for r in ours.per_image.itertuples()}
    for path, counts in ref["per_image"].items():
        assert per_image.get(path, (0, 0, 0)) == counts, path
    pm = ours.prediction_matches
    assert {i: (s, g) for i, (s, g) in enumerate(zip(pm["status"], pm["gt_row"]))} == ref["pred_status"]
    gm = ours.ground_truth_matches
    assert {i: (s, p) for i, (s, p) in enumerate(zip(gm["status"], gm["pred_row"]))} == ref["gt_status"]


# ---- VLM-GIST ------------------------------------------------------------------------------------

VLM_GIST_SETS = [
    {"seed": 11},
    {"seed": 12, "coarse_confidence": True},
    {"seed": 13, "missing_confidence": 0.02},
]


@pytest.fixture(scope="module")
def vlm_gist_case(vlm_gist_dataset):
    gt = vlm_gist_dataset.ground_truth
    sets = [random_predictions(gt, **kw) for kw in VLM_GIST_SETS]
    return vlm_gist_dataset.images, gt, sets, fiftyone_reference(vlm_gist_dataset.images, gt, sets)


@pytest.mark.parametrize("i", range(len(VLM_GIST_SETS)))
def test_vlm_gist_matches_fiftyone(vlm_gist_case, i):
    images, gt, sets, refs = vlm_gist_case
    assert 1100 < len(sets[i]) < 1400  # ~1200 predictions for 1178 GT
    assert_same_as_fiftyone(evaluate(gt, sets[i], coco_standard=False), refs[i], images)


def test_vlm_gist_sets_exercise_the_edge_cases(vlm_gist_case):
    _, _, sets, refs = vlm_gist_case
    assert refs[2]["mAP"] is None  # missing confidences -> the paper's mAP = None fallback
    conf = pd.to_numeric(sets[1]["confidence"])
    # Heavy ties and zeros (only the random false boxes keep random confidences).
    assert conf.duplicated().sum() > 900 and (conf == 0).sum() > 100
    assert sets[0].duplicated(["image_id", "label"]).sum() > 50  # duplicates / wrong labels


# ---- COCO sample, crowd regions kept ---------------------------------------------------------------

COCO_SETS = [
    {"seed": 21},
    {"seed": 22, "coarse_confidence": True},
    {"seed": 23, "missing_confidence": 0.03},
    {"seed": 24},
]


@pytest.fixture(scope="module")
def coco_case(coco_dir):
    ds = load_dataset(coco_dir, crowd="keep")
    gt = ds.ground_truth
    assert gt["iscrowd"].sum() == 4  # the sample's 4 crowd regions take part
    sets = [random_predictions(gt, **kw) for kw in COCO_SETS]
    return ds.images, gt, sets, fiftyone_reference(ds.images, gt, sets)


@pytest.mark.parametrize("i", range(len(COCO_SETS)))
def test_coco_matches_fiftyone(coco_case, i):
    images, gt, sets, refs = coco_case
    assert_same_as_fiftyone(evaluate(gt, sets[i], coco_standard=False), refs[i], images)


def test_coco_sets_match_crowd_regions(coco_case):
    _, gt, _, refs = coco_case
    crowd_rows = set(np.flatnonzero(gt["iscrowd"].to_numpy()).tolist())
    # Per FiftyOne itself, some predictions were matched to crowd GT (so that path is compared).
    assert any(g in crowd_rows for ref in refs for (_, g) in ref["pred_status"].values())


# ---- groups larger than one R-tree leaf ------------------------------------------------------------


def big_group_case():
    """150 GT "person" boxes in one image: identical and slightly shifted copies of one box, the last
    30 crowds. FiftyOne's R-tree returns candidates in tree order (not GT order) for > 100 boxes, so
    crowds come before some non-crowds: the insertion-order shortcut would give other matches (fn 60
    instead of 73 for this seed)."""
    rng = np.random.default_rng(5)
    gts = []
    for i in range(150):
        if i < 100 and rng.random() >= 0.5:
            box = (0.1 + rng.uniform(-0.03, 0.03), 0.1 + rng.uniform(-0.03, 0.03), 0.3, 0.3)
        else:
            box = (0.1, 0.1, 0.3, 0.3)
        gts.append(
            {
                "image_id": "big",
                "label": "person",
                "x": box[0],
                "y": box[1],
                "w": box[2],
                "h": box[3],
                "iscrowd": int(i >= 120),
            }
        )
    gts.append({"image_id": "small", "label": "person", "x": 0.0, "y": 0.0, "w": 0.1, "h": 0.1, "iscrowd": 0})
    preds = [
        {
            "image_id": "big",
            "label": "person",
            "x": 0.1,
            "y": 0.1,
            "w": 0.3,
            "h": 0.3,
            "confidence": float(np.round(rng.random(), 1)),
        }
        for _ in range(90)
    ]
    preds.append(
        {"image_id": "small", "label": "person", "x": 0.0, "y": 0.0, "w": 0.1, "h": 0.1, "confidence": 0.5}
    )
    images = pd.DataFrame(
        {"image_id": ["big", "small"], "path": ["/nonexistent/big.jpg", "/nonexistent/small.jpg"]}
    )
    return images, pd.DataFrame(gts), pd.DataFrame(preds)


def test_groups_beyond_one_rtree_leaf_match_fiftyone():
    images, gt, pred = big_group_case()
    (ref,) = fiftyone_reference(images, gt, [pred])
    assert ref["fn"] == 73
    assert_same_as_fiftyone(evaluate(gt, pred, coco_standard=False), ref, images)


def test_when_a_missing_confidence_disables_map_matches_fiftyone():
    """FiftyOne raises only for a prediction without confidence that enters the PR sweep of a class
    with ground truth: not for one in a class without GT, nor for one beyond the top 100 of its
    (image, class), nor for one matched to a crowd region (crowd matches are skipped)."""

    def box(x, label="cat", conf=0.5, crowd=None):
        d = {"image_id": "i", "label": label, "x": x, "y": 0.0, "w": 0.05, "h": 0.05}
        return {**d, "iscrowd": crowd} if crowd is not None else {**d, "confidence": conf}

    gt = pd.DataFrame([box(0.0, crowd=0), box(0.5, crowd=1)])
    cases = [
        [box(0.0, conf=0.9), box(0.2, label="ghost", conf=None)],  # class without GT: mAP kept
        [box(0.0, conf=0.9), *[box(0.3, conf=0.4)] * 99, box(0.0, conf=None)],  # 101st of its group
        [box(0.0, conf=0.9), box(0.5, conf=None)],  # matched to the crowd region
        [box(0.0, conf=0.9), box(0.3, conf=None)],  # an ordinary FP of "cat": mAP = None
    ]
    preds = [pd.DataFrame(c) for c in cases]
    for p in preds:
        p["confidence"] = p["confidence"].astype(object).where(p["confidence"].notna(), None)
    images = pd.DataFrame({"image_id": ["i"], "path": ["/nonexistent/i.jpg"]})
    refs = fiftyone_reference(images, gt, preds)
    assert [ref["mAP"] is None for ref in refs] == [False, False, False, True]
    for pred, ref in zip(preds, refs):
        assert_same_as_fiftyone(evaluate(gt, pred, coco_standard=False), ref, images)


# ---- COCO-standard AP columns vs pycocotools ------------------------------------------------------


def rectangle_mask_predictions(gt: pd.DataFrame, images: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Predictions with pixel-aligned jittered boxes and rectangular masks (full-image RLE)."""
    rng = np.random.default_rng(seed)
    size = images.set_index("image_id")[["width", "height"]]
    labels = gt["label"].unique()
    rows = []
    for r in gt.itertuples():
        if rng.random() < 0.3:
            continue
        W, H = (int(v) for v in size.loc[r.image_id])
        j = rng.normal(0, 0.1, 4) * [r.w, r.h, r.w, r.h]
        x0 = int(np.clip(round((r.x + j[0]) * W), 0, W - 2))
        y0 = int(np.clip(round((r.y + j[1]) * H), 0, H - 2))
        x1 = int(np.clip(round((r.x + r.w + j[2]) * W), x0 + 1, W))
        y1 = int(np.clip(round((r.y + r.h + j[3]) * H), y0 + 1, H))
        mask = np.zeros((H, W), dtype=bool)
        mask[y0:y1, x0:x1] = True
        label = r.label if rng.random() > 0.1 else labels[rng.integers(len(labels))]
        rows.append({"image_id": r.image_id, "label": label, "x": x0 / W, "y": y0 / H, "w": (x1 - x0) / W, "h": (y1 - y0) / H,
                         "confidence": float(np.round(rng.random(), 2)), "mask": encode_rle(mask)})  # fmt: skip
    return pd.DataFrame(rows)


def pycocotools_stats(
    gt: pd.DataFrame, pred: pd.DataFrame, images: pd.DataFrame, iou_type: str
) -> np.ndarray:
    """Standard COCOeval (all area ranges, maxDets 1/10/100) in pixel coordinates -> ``stats``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # COCO's integer image ids (the file stems are zero-padded ids for COCO; 00001... for VLM-GIST):
    # pycocotools ranks equal scores by image id, so the ids must be the real ones.
    image_ids = {k: int(k) for k in images["image_id"]}
    size = images.set_index("image_id")[["width", "height"]]
    categories = {c: i + 1 for i, c in enumerate(sorted(set(gt["label"]) | set(pred["label"])))}

    def pixel_box(r):
        W, H = size.loc[r.image_id]
        return [r.x * W, r.y * H, r.w * W, r.h * H]

    anns = []
    for i, r in enumerate(gt.itertuples()):
        ann = {
            "id": i + 1,
            "image_id": image_ids[r.image_id],
            "category_id": categories[r.label],
            "bbox": pixel_box(r),
            "iscrowd": int(r.iscrowd),
        }
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        if iou_type == "segm":
            ann["segmentation"] = {"size": r.mask["size"], "counts": r.mask["counts"]}
        anns.append(ann)
    dts = []
    for r in pred.itertuples():
        dt = {"image_id": image_ids[r.image_id], "category_id": categories[r.label], "score": r.confidence}
        if iou_type == "segm":
            dt["segmentation"] = {"size": r.mask["size"], "counts": r.mask["counts"]}
        else:
            dt["bbox"] = pixel_box(r)
        dts.append(dt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {
            "images": [
                {"id": i, "width": int(size.loc[k, "width"]), "height": int(size.loc[k, "height"])}
                for k, i in image_ids.items()
            ],
            "categories": [{"id": i, "name": c} for c, i in categories.items()],
            "annotations": anns,
        }
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dts), iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("which", ["vlm_gist", "coco"])
def test_coco_standard_columns_match_pycocotools(which, vlm_gist_dataset, coco_dir):
    ds = vlm_gist_dataset if which == "vlm_gist" else load_dataset(coco_dir, crowd="keep")
    gt = ds.ground_truth
    pred = rectangle_mask_predictions(gt, ds.images, seed=31)
    ours = evaluate(gt, pred, image_sizes=ds.images)
    assert ours.coco_unavailable == {}
    for iou_type in ("bbox", "segm"):
        stats = pycocotools_stats(gt, pred, ds.images, iou_type)
        assert getattr(ours, f"coco_{iou_type}_AP") == pytest.approx(stats[0], abs=1e-9)
        assert getattr(ours, f"coco_{iou_type}_AP50") == pytest.approx(stats[1], abs=1e-9)
        assert getattr(ours, f"coco_{iou_type}_AP75") == pytest.approx(stats[2], abs=1e-9)
    # Rectangles are coarser than the GT masks: mask AP must come out lower than box AP here.
    assert ours.coco_segm_AP < ours.coco_bbox_AP


def test_coco_standard_columns_report_why_they_are_missing(vlm_gist_dataset):
    gt = vlm_gist_dataset.ground_truth
    pred = random_predictions(gt, seed=41, missing_confidence=0.05)
    ours = evaluate(gt, pred)
    assert np.isnan(ours.coco_bbox_AP) and "confidence" in ours.coco_unavailable["bbox"]
    pred = random_predictions(gt, seed=42)  # no mask column
    ours = evaluate(gt, pred)
    assert not np.isnan(ours.coco_bbox_AP)
    assert np.isnan(ours.coco_segm_AP) and "mask" in ours.coco_unavailable["segm"]
