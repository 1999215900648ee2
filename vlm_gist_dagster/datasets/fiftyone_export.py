"""Reader for FiftyOne dataset exports (``fo.types.FiftyOneDataset``): ``data/``, ``samples.json``,
``metadata.json``. The file is parsed directly, so loading needs no MongoDB.

Instance masks in ``samples.json`` are BSON binaries: base64 → zlib → ``numpy.save`` bytes of a bool
array the size of the box in pixels. They are pasted at the box position into a full-image COCO RLE.
"""

from __future__ import annotations

import base64
import io
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..protocol.masks import encode_rle, paste_box_mask
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


def is_fiftyone_export(root: Path) -> bool:
    return (root / "samples.json").is_file() and (root / "metadata.json").is_file()


def decode_fiftyone_mask(value: Any) -> np.ndarray:
    """Decode FiftyOne's serialised numpy array (``{"$binary": {"base64": ...}}`` or raw base64)."""
    if isinstance(value, dict):
        value = value.get("$binary", value)
        value = value.get("base64") if isinstance(value, dict) else value
    if not isinstance(value, str):
        raise ValueError(f"expected a base64 string, got {type(value).__name__}")
    raw = zlib.decompress(base64.b64decode(value))
    arr = np.load(io.BytesIO(raw), allow_pickle=False)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def _crowd_flag(det: dict[str, Any]) -> int:
    value = det.get("iscrowd")
    if value is None:
        attr = (det.get("attributes") or {}).get("iscrowd")
        value = attr.get("value") if isinstance(attr, dict) else attr
    try:
        return int(bool(value))
    except (TypeError, ValueError):
        return 0


def load_fiftyone_export(
    root: Path, *, name: str | None = None, gt_field: str = "ground_truth", crowd: CrowdMode = "fix"
) -> Dataset:
    """Load a FiftyOne export directory. ``crowd`` follows the paper's ``load_dataset``: "fix" (default)
    keeps crowd instances with ``iscrowd`` set to 0, "remove" drops them, "keep" leaves them marked."""
    samples_path = root / "samples.json"
    document = read_json(samples_path)
    read_json(root / "metadata.json")  # must exist and parse, as FiftyOne requires
    if not isinstance(document, dict) or not isinstance(document.get("samples"), list):
        raise DatasetError(samples_path, "expected an object with a 'samples' list", field="samples")

    images: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    warnings: list[str] = []
    seen: dict[str, int] = {}
    for index, sample in enumerate(document["samples"]):
        where = f"samples[{index}]"
        if not isinstance(sample, dict):
            raise DatasetError(samples_path, "sample is not an object", field=where)
        filepath = sample.get("filepath")
        if not isinstance(filepath, str) or not filepath:
            raise DatasetError(samples_path, "missing file path", field=f"{where}.filepath")
        path = Path(filepath)
        path = path if path.is_absolute() else root / path
        check_image_file(path, samples_path, f"{where}.filepath")
        file_name = path.name
        image_key = path.stem
        register_image_name(seen, image_key, file_name, index, samples_path, "samples", f"{where}.filepath")
        header = image_size(path)
        metadata = sample.get("metadata") or {}
        width, height = metadata.get("width"), metadata.get("height")
        if width is not None and height is not None:
            check_labelled_size(
                path, file_name, (width, height), header, samples_path, "metadata says", f"{where}.metadata"
            )
        images.append(image_row(path, image_key, header, samples_path, f"{where}.filepath", warnings))
        width, height = header

        labels = sample.get(gt_field)
        if labels is None:
            continue
        detections = labels.get("detections") if isinstance(labels, dict) else None
        if not isinstance(detections, list):
            raise DatasetError(samples_path, "expected a Detections object", field=f"{where}.{gt_field}")
        for j, det in enumerate(detections):
            field = f"{where}.{gt_field}.detections[{j}]"
            if not isinstance(det, dict):
                raise DatasetError(samples_path, "detection is not an object", field=field)
            iscrowd = apply_crowd_mode(_crowd_flag(det), crowd)
            if iscrowd is None:
                continue
            label = det.get("label")
            if not isinstance(label, str):
                raise DatasetError(samples_path, f"image {image_key}: missing label", field=f"{field}.label")
            box = check_box(
                det.get("bounding_box"), samples_path, f"{field}.bounding_box", image_key, warnings
            )
            x, y, _, _ = box
            mask_rle = None
            if det.get("mask") is not None:
                try:
                    box_mask = decode_fiftyone_mask(det["mask"])
                except Exception as exc:  # noqa: BLE001 - any decoding failure is a located data error
                    raise DatasetError(
                        samples_path, f"image {image_key}: undecodable mask ({exc})", field=f"{field}.mask"
                    ) from exc
                full = paste_box_mask(box_mask, round(x * width), round(y * height), height, width)
                mask_rle = encode_rle(full)
            oid = det.get("_id")
            instance_id = (
                oid.get("$oid")
                if isinstance(oid, dict)
                else (str(oid) if oid is not None else f"{image_key}:{j}")
            )
            instances.append(ground_truth_row(image_key, str(instance_id), label, box, mask_rle, iscrowd))

    return assemble_dataset(root, name, "fiftyone", images, instances, warnings)
