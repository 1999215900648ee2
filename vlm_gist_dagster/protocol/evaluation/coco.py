"""COCO-standard AP from pycocotools' ``COCOeval`` on the same objects: an extra column, not the paper's
metric (its tie order and crowd handling differ from FiftyOne's).
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..masks import compress_rle, rle_area
from .inputs import confidences, crowd_flags, pixel_scale


@dataclass(frozen=True)
class CocoStandardAP:
    """COCO-standard AP@[.5:.95], AP50 and AP75 (area "all", 100 detections per image and category);
    NaN with ``reason`` saying why when they cannot be computed."""

    AP: float = math.nan
    AP50: float = math.nan
    AP75: float = math.nan
    reason: str | None = None


def coco_standard_ap(
    ground_truth: pd.DataFrame,
    predictions: pd.DataFrame,
    iou_type: str = "bbox",
    *,
    image_sizes: pd.DataFrame | None = None,
) -> CocoStandardAP:
    """COCO-standard AP@[.5:.95], AP50 and AP75 (area "all", 100 detections per image and category)
    from pycocotools' ``COCOeval`` on the same objects: categories = labels, crowd GT = ignore regions,
    masks as COCO RLE for ``iou_type="segm"``.

    Boxes are evaluated in pixels (``x * width`` ...) when ``image_sizes`` (``image_id, width,
    height``, e.g. the dataset's images table) is given, as COCO does; otherwise in relative
    coordinates. IoU is scale-free, but pixel-aligned boxes often hit a threshold exactly (e.g. IoU
    0.75) and the relative-coordinate rounding can then fall on the other side of it.

    Differs from the paper's FiftyOne mAP in the tie order (pycocotools ranks equal scores by image id,
    then detection order; FiftyOne puts TPs first) and in crowd handling (ignore regions). Values are NaN and ``reason`` says why
    when it cannot be computed (missing confidences or masks, no ground truth).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    gt, pred = ground_truth, predictions
    if len(gt) == 0:
        return CocoStandardAP(reason="no ground truth")
    conf = confidences(pred)
    if np.isnan(conf).any():
        return CocoStandardAP(reason="a prediction has no confidence (COCOeval needs scores)")
    if iou_type == "segm":
        for what, df in (("ground truth", gt), ("predictions", pred)):
            if len(df) and ("mask" not in df.columns or df["mask"].isna().any()):
                return CocoStandardAP(reason=f"{what}: not every object has a mask")

    dataset, results = _coco_json(gt, pred, conf, iou_type, image_sizes)
    if not results:
        if crowd_flags(gt).all():
            return CocoStandardAP(reason="no ground truth")
        return CocoStandardAP(AP=0.0, AP50=0.0, AP75=0.0)
    return _cocoeval(dataset, results, iou_type)


def _coco_json(
    gt: pd.DataFrame, pred: pd.DataFrame, conf: np.ndarray, iou_type: str, image_sizes: pd.DataFrame | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The COCO ground-truth dataset and the detection results for pycocotools: images numbered in
    sorted ``image_id`` order, categories = labels, boxes (pixels with ``image_sizes``) or masks."""
    # Image ids in sorted image_id order: pycocotools breaks score ties across images by image id, and
    # for COCO's zero-padded file names this is the order of the official integer ids.
    image_codes, _ = pd.factorize(pd.concat([gt["image_id"], pred["image_id"]], ignore_index=True), sort=True)
    labels = sorted(set(gt["label"].tolist()) | set(pred["label"].tolist()))
    cat_of = {label: i + 1 for i, label in enumerate(labels)}
    gt_img, pred_img = image_codes[: len(gt)] + 1, image_codes[len(gt) :] + 1
    crowd = crowd_flags(gt)
    gt_box = gt[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
    pred_box = pred[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
    if image_sizes is not None:
        gt_box = gt_box * pixel_scale(gt, image_sizes, "ground_truth")
        pred_box = pred_box * pixel_scale(pred, image_sizes, "predictions")
    gt_masks = gt["mask"].tolist() if iou_type == "segm" else [None] * len(gt)
    pred_masks = pred["mask"].tolist() if iou_type == "segm" else [None] * len(pred)

    annotations = []
    for i, (img, label, box, is_crowd, mask) in enumerate(
        zip(gt_img.tolist(), gt["label"].tolist(), gt_box.tolist(), crowd.tolist(), gt_masks)
    ):
        ann = {
            "id": i + 1,
            "image_id": img,
            "category_id": cat_of[label],
            "bbox": box,
            "iscrowd": int(is_crowd),
        }
        if iou_type == "segm":
            ann["segmentation"] = compress_rle(mask)
            ann["area"] = float(rle_area(mask))
        else:
            ann["area"] = box[2] * box[3]
        annotations.append(ann)
    images: list[dict[str, int]] = [{"id": int(i)} for i in range(1, int(image_codes.max()) + 2)]
    if iou_type == "segm":
        # pycocotools reads the image size for every mask; all masks of one image must agree on it.
        for img, mask, what, row in [
            *zip(gt_img.tolist(), gt_masks, ["ground_truth"] * len(gt), gt.index),
            *zip(pred_img.tolist(), pred_masks, ["predictions"] * len(pred), pred.index),
        ]:
            height, width = (int(v) for v in mask["size"])
            entry = images[img - 1]
            if entry.setdefault("height", height) != height or entry.setdefault("width", width) != width:
                raise ValueError(
                    f"{what}: row {row!r}, field 'mask': size {[height, width]} differs from another mask of the "
                    f"same image ({[entry['height'], entry['width']]})"
                )
    dataset = {
        "images": images,
        "categories": [{"id": c, "name": label} for label, c in cat_of.items()],
        "annotations": annotations,
    }
    results = []
    for img, label, box, score, mask in zip(
        pred_img.tolist(), pred["label"].tolist(), pred_box.tolist(), conf.tolist(), pred_masks
    ):
        det = {"image_id": img, "category_id": cat_of[label], "score": score}
        if iou_type == "segm":
            det["segmentation"] = compress_rle(mask)
        else:
            det["bbox"] = box
        results.append(det)
    return dataset, results


def _cocoeval(dataset: dict[str, Any], results: list[dict[str, Any]], iou_type: str) -> CocoStandardAP:
    """``COCOeval`` for area "all" and 100 detections; AP, AP50, AP75 from its precision array."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        # Only area "all" and maxDets 100 are reported: evaluating one area range instead of four
        # gives the same numbers for it (ranges are evaluated independently) at a quarter of the cost.
        ev.params.areaRng = [[0**2, 1e5**2]]
        ev.params.areaRngLbl = ["all"]
        ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, 0]  # (T, R, K)

    def mean_valid(a: np.ndarray) -> float:
        v = a[a > -1]
        return float(np.mean(v)) if v.size else math.nan

    iou_thrs = ev.params.iouThrs
    ap = mean_valid(precision)
    if math.isnan(ap):
        return CocoStandardAP(reason="no non-crowd ground truth")
    return CocoStandardAP(
        AP=ap,
        AP50=mean_valid(precision[np.flatnonzero(np.isclose(iou_thrs, 0.5))]),
        AP75=mean_valid(precision[np.flatnonzero(np.isclose(iou_thrs, 0.75))]),
    )
