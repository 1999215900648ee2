"""Reader for COCO detection directories (``data/`` + ``labels.json``), as FiftyOne's
``COCODetectionDataset`` exports them and as the COCO download writes them.

Crowd annotations are removed by default, as the paper did for its COCO subset (docs/protocol/evaluation.md §2.1,
§7): a crowd region is neither a true positive nor a false negative there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import file_sha256
from ..protocol.masks import segmentation_to_rle
from ._common import (
    check_box,
    check_image_file,
    image_size,
    orientation_warning,
    read_json,
    size_mismatch_hint,
)
from .model import CrowdMode, Dataset, DatasetError, build_ground_truth_table, build_images_table


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
        if key in seen:
            raise DatasetError(
                labels_path,
                f"duplicate image name {file_name!r} (also images[{seen[key]}])",
                field=f"{where}.file_name",
            )
        seen[key] = i
        header_w, header_h = image_size(path)
        width, height = img.get("width", header_w), img.get("height", header_h)
        if (int(width), int(height)) != (header_w, header_h):
            hint = size_mismatch_hint(path, (int(width), int(height)), (header_w, header_h))
            raise DatasetError(
                labels_path,
                f"{file_name}: labels say {width}x{height} but the image is {header_w}x{header_h}{hint}",
                field=f"{where}.width",
            )
        warning = orientation_warning(path, labels_path, f"{where}.file_name", (header_w, header_h))
        if warning:
            warnings.append(warning)
        row = {
            "image_id": key,
            "file_name": Path(file_name).name,
            "path": str(path.resolve()),
            "width": int(width),
            "height": int(height),
            "sha256": file_sha256(path),
        }
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
        iscrowd = int(bool(ann.get("iscrowd", 0)))
        if iscrowd and crowd == "remove":
            continue
        if crowd == "fix":
            iscrowd = 0
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
        x, y, w, h = check_box(rel, labels_path, f"{where}.bbox", img["image_id"], warnings)
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
        instances.append(
            {
                "image_id": img["image_id"],
                "instance_id": str(ann.get("id", f"{img['image_id']}:{i}")),
                "label": label,
                "x": x,
                "y": y,
                "w": w,
                "h": h,
                "mask": mask,
                "iscrowd": iscrowd,
            }
        )

    return Dataset(
        name=name or root.name,
        root=root,
        format="coco",
        images=build_images_table(images),
        ground_truth=build_ground_truth_table(instances),
        warnings=tuple(warnings),
    )
