"""The extra metric columns checked against FiftyOne, on the real VLM-GIST ground truth:

* mask-based P / R / F1 / mAP (``evaluate(..., use_masks=True)``) against FiftyOne's
  ``evaluate_detections(..., use_masks=True, compute_mAP=True)``, with predictions made by perturbing the
  ground-truth masks (shifted, grown, shrunk, noisy, cut by a smaller box, relabelled, duplicated) plus
  random false masks; every object's TP / FP / FN status and match must agree;
* F1 at other IoU thresholds (``fscore_per_iou``, averaged into F1@[.5:.95]) against FiftyOne run at
  those thresholds;
* class-agnostic F1 against FiftyOne on the relabelled objects (every label "object").

FiftyOne's dense mask IoU pastes full-size float canvases per pair, so the mask comparison runs on 44 of
the 64 images: the 42 AgiBot images (640x480), 00001 (1920x1080) and 00012 (3840x2160), every image size.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from vlm_gist_dagster.protocol.evaluation import IOU_THRESHOLDS, evaluate, evaluate_class_agnostic
from vlm_gist_dagster.protocol.evaluation.mask_iou import pixel_box
from vlm_gist_dagster.protocol.masks import decode_rle, encode_rle
from vlm_gist_dagster_tests.protocol.test_evaluation_vs_fiftyone import (
    assert_same_as_fiftyone,
    fiftyone_reference,
    random_predictions,
)

MASK_IMAGES = [f"{i:05d}" for i in range(13, 55)] + ["00001", "00012"]


def perturbed_mask_predictions(gt: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Predictions from the GT masks: 80 % of the objects, each mask shifted by up to 6 px, grown or
    shrunk by up to 3 px and with 3 % of its box's pixels flipped; its box is the new mask's pixel box
    (as the pipeline's SAM2 boxes), for 10 % a box 2 px smaller on every side (the mask is cut to it, as
    FiftyOne stores masks). 12 % another label of the image, 10 % duplicated, plus 15 % random false
    rectangles. Confidences with ties (one decimal) and zeros; rows shuffled."""
    rng = np.random.default_rng(seed)
    labels_of = gt.groupby("image_id")["label"].agg(list).to_dict()
    rows = []

    def add(image_id: str, label: str, mask: np.ndarray, shrink_box: bool) -> None:
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        if shrink_box and x2 - x1 > 6 and y2 - y1 > 6:
            x1, x2, y1, y2 = x1 + 2, x2 - 2, y1 + 2, y2 - 2
        H, W = mask.shape
        conf = float(np.round(rng.random(), 1)) if rng.random() < 0.6 else float(rng.random())
        rows.append({
            "image_id": image_id, "label": label, "x": x1 / W, "y": y1 / H, "w": (x2 - x1) / W, "h": (y2 - y1) / H,
            "confidence": 0.0 if rng.random() < 0.05 else conf, "mask": encode_rle(mask),
        })  # fmt: skip

    for r in gt.itertuples():
        if rng.random() < 0.2:
            continue
        mask = decode_rle(r.mask)
        H, W = mask.shape
        dy, dx = (int(v) for v in rng.integers(-6, 7, 2))
        mask = np.roll(mask, (dy, dx), axis=(0, 1))
        if dy > 0:
            mask[:dy] = False
        elif dy < 0:
            mask[dy:] = False
        if dx > 0:
            mask[:, :dx] = False
        elif dx < 0:
            mask[:, dx:] = False
        grow = int(rng.integers(-3, 4))
        if grow > 0:
            mask = ndimage.binary_dilation(mask, iterations=grow)
        elif grow < 0:
            mask = ndimage.binary_erosion(mask, iterations=-grow)
        x1, y1, x2, y2 = pixel_box([r.x, r.y, r.w, r.h], W, H)
        region = mask[y1:y2, x1:x2]
        region ^= rng.random(region.shape) < 0.03
        label = r.label if rng.random() > 0.12 else str(rng.choice(labels_of[r.image_id]))
        for _ in range(1 + int(rng.random() < 0.1)):
            add(r.image_id, label, mask, shrink_box=rng.random() < 0.1)
    images = gt["image_id"].unique()
    for _ in range(int(len(gt) * 0.15)):
        image_id = str(rng.choice(images))
        H, W = decode_rle(gt[gt["image_id"] == image_id]["mask"].iloc[0]).shape
        mask = np.zeros((H, W), dtype=bool)
        x, y = int(rng.integers(0, W - 20)), int(rng.integers(0, H - 20))
        mask[y : y + int(rng.integers(10, H // 3)), x : x + int(rng.integers(10, W // 3))] = True
        add(image_id, str(rng.choice(labels_of[image_id])), mask, shrink_box=False)
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def fiftyone_mask_reference(images: pd.DataFrame, gt: pd.DataFrame, pred: pd.DataFrame) -> dict:
    """FiftyOne's ``evaluate_detections(use_masks=True, compute_mAP=True)`` on the same objects, each
    mask stored as FiftyOne stores it: the crop of its box."""
    import fiftyone as fo
    from fiftyone.utils.iou import _float_to_pixel

    fo.config.show_progress_bars = False

    def detection(r, **kwargs):
        full = decode_rle(r.mask)
        H, W = full.shape
        x1, y1, x2, y2 = _float_to_pixel([r.x, r.y, r.w, r.h], W, H)
        return fo.Detection(
            label=r.label, bounding_box=[r.x, r.y, r.w, r.h], mask=full[y1:y2, x1:x2], **kwargs
        )

    dataset = fo.Dataset()
    gt_row_of_id, pred_row_of_id, samples = {}, {}, []
    gt_by = dict(tuple(gt.groupby("image_id", sort=False)))
    pred_by = dict(tuple(pred.groupby("image_id", sort=False)))
    for img in images.itertuples():
        sample = fo.Sample(filepath=img.path)
        dets = []
        g = gt_by.get(img.image_id, gt.iloc[:0])
        for pos, r in zip(gt.index.get_indexer(g.index), g.itertuples()):
            d = detection(r, iscrowd=0)
            gt_row_of_id[d.id] = int(pos)
            dets.append(d)
        sample["ground_truth"] = fo.Detections(detections=dets)
        dets = []
        p = pred_by.get(img.image_id, pred.iloc[:0])
        for pos, r in zip(pred.index.get_indexer(p.index), p.itertuples()):
            d = detection(r, confidence=r.confidence)
            pred_row_of_id[d.id] = int(pos)
            dets.append(d)
        sample["pred"] = fo.Detections(detections=dets)
        samples.append(sample)
    dataset.add_samples(samples)
    results = dataset.evaluate_detections(
        "pred", gt_field="ground_truth", eval_key="eval", use_masks=True, compute_mAP=True
    )
    ref = dict(results.metrics(), mAP=results.mAP(), mAR=results.mAR(), report=results.report())
    ref["tp"], ref["fp"], ref["fn"] = (dataset.sum(f"eval_{t}") for t in ("tp", "fp", "fn"))
    ref["per_image"] = {
        s.filepath: (s["eval_tp"], s["eval_fp"], s["eval_fn"])
        for s in dataset.select_fields(["eval_tp", "eval_fp", "eval_fn"])
    }
    pred_status, gt_status = {}, {}
    for s in dataset.select_fields(["ground_truth", "pred"]):
        for d in s["pred"].detections:
            pred_status[pred_row_of_id[d.id]] = (
                d["eval"],
                gt_row_of_id[d["eval_id"]] if d["eval_id"] else -1,
            )
        for d in s["ground_truth"].detections:
            gt_status[gt_row_of_id[d.id]] = (d["eval"], pred_row_of_id[d["eval_id"]] if d["eval_id"] else -1)
    ref["pred_status"], ref["gt_status"] = pred_status, gt_status
    dataset.delete()
    return ref


@pytest.fixture(scope="module")
def mask_case(vlm_gist_dataset):
    images = vlm_gist_dataset.images[vlm_gist_dataset.images["image_id"].isin(MASK_IMAGES)]
    gt = vlm_gist_dataset.ground_truth
    gt = gt[gt["image_id"].isin(MASK_IMAGES)].reset_index(drop=True)
    pred = perturbed_mask_predictions(gt, seed=51)
    return images, gt, pred, fiftyone_mask_reference(images, gt, pred)


def test_mask_metrics_match_fiftyone(mask_case):
    images, gt, pred, ref = mask_case
    assert len(images) == 44 and sorted(images.groupby(["width", "height"]).size().tolist()) == [1, 1, 42]
    ours = evaluate(gt, pred, use_masks=True, coco_standard=False)
    assert_same_as_fiftyone(ours, ref, images)
    # The perturbations matter: masks decide differently from boxes for some objects.
    boxes = evaluate(gt, pred.drop(columns="mask"), coco_standard=False)
    assert (boxes.prediction_matches["status"] != ours.prediction_matches["status"]).sum() > 10
    assert 0.3 < ours.fscore < 0.95 and ours.mAP_available


def test_mask_iou_keeps_a_mask_inside_its_box(mask_case):
    """Some predictions have a box smaller than their mask: the mask counts only inside it (FiftyOne
    keeps only the box's crop), which lowers the IoU against the uncut GT."""
    _, gt, pred, _ = mask_case
    cut = []
    for r in pred.itertuples():
        ys, xs = np.nonzero(decode_rle(r.mask))
        H, W = r.mask["size"]
        if xs.size and (xs.min() < round(r.x * W) or xs.max() + 1 > round(r.x * W) + round(r.w * W)):
            cut.append(r.Index)
    assert len(cut) > 5


def test_fscore_at_other_iou_thresholds_matches_fiftyone(vlm_gist_dataset):
    images, gt = vlm_gist_dataset.images, vlm_gist_dataset.ground_truth
    pred = random_predictions(gt, seed=61)
    ours = evaluate(gt, pred, coco_standard=False)
    assert len(ours.fscore_per_iou) == 10
    for k, threshold in enumerate(IOU_THRESHOLDS):
        assert ours.fscore_per_iou[k] == evaluate(gt, pred, iou=threshold, coco_standard=False).fscore
    assert ours.fscore_per_iou[0] == ours.fscore
    assert ours.fscore_50_95 == pytest.approx(np.mean(ours.fscore_per_iou), abs=1e-15)
    assert list(ours.fscore_per_iou) == sorted(ours.fscore_per_iou, reverse=True)  # stricter IoU, fewer TPs

    import fiftyone as fo

    fo.config.show_progress_bars = False
    dataset = fo.Dataset()
    by_image = {k: v for k, v in pred.groupby("image_id")}
    gt_by_image = {k: v for k, v in gt.groupby("image_id")}
    samples = []
    for img in images.itertuples():
        s = fo.Sample(filepath=img.path)
        s["ground_truth"] = fo.Detections(detections=[
            fo.Detection(label=r.label, bounding_box=[r.x, r.y, r.w, r.h]) for r in gt_by_image[img.image_id].itertuples()
        ])  # fmt: skip
        p = by_image.get(img.image_id, pred.iloc[:0])
        s["pred"] = fo.Detections(detections=[
            fo.Detection(label=r.label, bounding_box=[r.x, r.y, r.w, r.h], confidence=r.confidence) for r in p.itertuples()
        ])  # fmt: skip
        samples.append(s)
    dataset.add_samples(samples)
    for k in (5, 9):  # IoU 0.75 and 0.95
        results = dataset.evaluate_detections("pred", gt_field="ground_truth", iou=IOU_THRESHOLDS[k])
        assert ours.fscore_per_iou[k] == pytest.approx(results.metrics()["fscore"], abs=1e-12)
    dataset.delete()


def test_class_agnostic_matches_fiftyone_on_relabelled_objects(vlm_gist_dataset):
    images = vlm_gist_dataset.images.iloc[:32]  # half the images: FiftyOne takes ~0.3 s per image here
    gt = vlm_gist_dataset.ground_truth.drop(columns="mask")
    gt = gt[gt["image_id"].isin(images["image_id"])].reset_index(drop=True)
    pred = random_predictions(gt, seed=71)
    ours = evaluate_class_agnostic(gt, pred)
    (ref,) = fiftyone_reference(images, gt.assign(label="object"), [pred.assign(label="object")])
    for key in ("precision", "recall", "fscore"):
        assert getattr(ours, key) == pytest.approx(ref[key], abs=1e-9)
    assert (ours.tp, ours.fp, ours.fn) == (ref["tp"], ref["fp"], ref["fn"])
    # Ignoring the labels finds the objects whose label was wrong: more TPs than the paper's matching.
    assert ours.tp > evaluate(gt, pred, coco_standard=False).tp
