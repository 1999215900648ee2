"""Reader for COCO detection directories (``data/`` + ``labels.json``), as FiftyOne's
``COCODetectionDataset`` exports them and as the COCO download writes them.

Crowd annotations are removed by default, as the paper did for its COCO subset (docs/protocol/evaluation.md §2.1,
§7): a crowd region is neither a true positive nor a false negative there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..protocol.masks import segmentation_to_rle
from ._common import (
    apply_crowd_mode,
    check_box,
    check_image_file,
    check_labelled_size,
    image_row,
    image_size,
    read_json,
    register_image_name,
)
from .model import CrowdMode, Dataset, DatasetError, assemble_dataset, ground_truth_row


def is_coco_directory(root: Path) -> bool:
    return (root / "labels.json").is_file() and (root / "data").is_dir()


def load_coco_directory(root: Path, *, name: str | None = None, crowd: CrowdMode = "remove") -> Dataset:
    labels_path = root / "labels.json"
    document = read_json(labels_path)
    if not isinstance(document, dict):
        raise DatasetError(labels_path, "expected a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise DatasetError(labels_path, "expected a list", field=key)

    categories: dict[int, str] = {}
    for i, cat in enumerate(document["categories"]):
        try:
            categories[int(cat["id"])] = str(cat["name"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                labels_path, "category needs 'id' and 'name'", field=f"categories[{i}]"
            ) from None

    images: list[dict[str, Any]] = []
    warnings: list[str] = []
    by_id: dict[int, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    for i, img in enumerate(document["images"]):
        where = f"images[{i}]"
        try:
            image_id, file_name = int(img["id"]), str(img["file_name"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(labels_path, "image needs 'id' and 'file_name'", field=where) from None
        path = root / "data" / file_name
        check_image_file(path, labels_path, f"{where}.file_name")
        key = Path(file_name).stem
        register_image_name(seen, key, file_name, i, labels_path, "images", f"{where}.file_name")
        header_w, header_h = image_size(path)
        width, height = img.get("width", header_w), img.get("height", header_h)
        check_labelled_size(
            path,
            file_name,
            (width, height),
            (header_w, header_h),
            labels_path,
            "labels say",
            f"{where}.width",
        )
        row = image_row(path, key, (header_w, header_h), labels_path, f"{where}.file_name", warnings)
        if image_id in by_id:
            raise DatasetError(labels_path, f"duplicate image id {image_id}", field=f"{where}.id")
        by_id[image_id] = row
        images.append(row)

    instances: list[dict[str, Any]] = []
    for i, ann in enumerate(document["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise DatasetError(labels_path, "annotation is not an object", field=where)
        try:
            img = by_id[int(ann["image_id"])]
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                labels_path, f"unknown image_id {ann.get('image_id')!r}", field=f"{where}.image_id"
            ) from None
        try:
            label = categories[int(ann["category_id"])]
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                labels_path, f"unknown category_id {ann.get('category_id')!r}", field=f"{where}.category_id"
            ) from None
        iscrowd = apply_crowd_mode(int(bool(ann.get("iscrowd", 0))), crowd)
        if iscrowd is None:
            continue
        width, height = img["width"], img["height"]
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DatasetError(
                labels_path,
                f"image {img['image_id']}: expected [x, y, w, h], got {bbox!r}",
                field=f"{where}.bbox",
            )
        try:
            rel = [
                float(bbox[0]) / width,
                float(bbox[1]) / height,
                float(bbox[2]) / width,
                float(bbox[3]) / height,
            ]
        except (TypeError, ValueError):
            raise DatasetError(
                labels_path, f"image {img['image_id']}: non-numeric box {bbox!r}", field=f"{where}.bbox"
            ) from None
        box = check_box(rel, labels_path, f"{where}.bbox", img["image_id"], warnings)
        mask = None
        segmentation = ann.get("segmentation")
        if segmentation not in (None, [], {}):
            try:
                mask = segmentation_to_rle(segmentation, height, width)
            except Exception as exc:  # noqa: BLE001 - any malformed segmentation is a located data error
                raise DatasetError(
                    labels_path,
                    f"image {img['image_id']}: bad segmentation ({exc})",
                    field=f"{where}.segmentation",
                ) from exc
        instance_id = str(ann.get("id", f"{img['image_id']}:{i}"))
        instances.append(ground_truth_row(img["image_id"], instance_id, label, box, mask, iscrowd))

    return assemble_dataset(root, name, "coco", images, instances, warnings)
