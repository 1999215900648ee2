"""Helpers shared by the dataset readers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..files import file_sha256
from .model import CrowdMode, DatasetError

#: How far (relative to the image size) a box may reach past the border before we warn about it.
BOX_TOLERANCE = 1e-6


def read_json(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(path, "file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"not valid JSON ({exc})") from exc


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header (no full decode), after checking the file is an image."""
    try:
        with Image.open(path) as img:
            return int(img.width), int(img.height)
    except FileNotFoundError:
        raise DatasetError(path, "image file is missing") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(path, f"not a readable image ({exc})") from exc


#: EXIF orientations whose display is rotated by 90° or 270° (width and height swap).
TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def exif_orientation(path: Path) -> int:
    """The image's EXIF orientation tag (1 when absent or unreadable), from the header only."""
    try:
        with Image.open(path) as img:
            value = img.getexif().get(0x0112, 1)
        return int(value) if value in range(1, 9) else 1
    except Exception:  # noqa: BLE001 - no readable tag means no rotation
        return 1


def size_mismatch_hint(path: Path, labelled: tuple[int, int], stored: tuple[int, int]) -> str:
    """An explanation to append when the labelled size is the *displayed* size of an EXIF-rotated image.

    The vision servers decode with PIL, which ignores EXIF orientation (docs/protocol/pipeline.md gotcha 15), so
    detections come in the stored pixel frame and ground-truth boxes must be given in that frame too.
    """
    orientation = exif_orientation(path)
    if orientation in TRANSPOSING_ORIENTATIONS and tuple(labelled) == (stored[1], stored[0]):
        return (
            f" (the file carries EXIF orientation {orientation}, so viewers show it rotated as "
            f"{stored[1]}x{stored[0]}; the benchmark works in the stored pixel frame, as the vision servers read "
            "it: give sizes and boxes in that frame, or save the image upright, e.g. with PIL.ImageOps.exif_transpose)"
        )
    return ""


def orientation_warning(path: Path, source: Path, field: str, stored: tuple[int, int]) -> str | None:
    """A warning for an image whose EXIF orientation is not the identity (its boxes are taken as given,
    in the stored pixel frame)."""
    orientation = exif_orientation(path)
    if orientation == 1:
        return None
    return (
        f"{source}, field {field!r}: {path.name} has EXIF orientation {orientation}; its boxes are taken in the "
        f"stored pixel frame ({stored[0]}x{stored[1]}), as the vision servers read the image"
    )


def check_image_file(path: Path, source: Path, field: str) -> None:
    if not path.is_file():
        raise DatasetError(source, f"image file {path} is missing", field=field)


def check_box(
    box: Any, source: Path, field: str, image_key: str, warnings: list[str]
) -> tuple[float, float, float, float]:
    """Validate a relative ``[x, y, w, h]`` box: four finite numbers, positive size, not wholly outside.

    Boxes that merely reach past the border are kept unchanged (FiftyOne and the paper evaluate them as
    they are) and reported in ``warnings``.
    """
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise DatasetError(source, f"image {image_key}: expected [x, y, w, h], got {box!r}", field=field)
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise DatasetError(source, f"image {image_key}: non-numeric box {box!r}", field=field) from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise DatasetError(source, f"image {image_key}: non-finite box {box!r}", field=field)
    if w <= 0 or h <= 0:
        raise DatasetError(source, f"image {image_key}: box {box!r} has a non-positive size", field=field)
    if x >= 1 or y >= 1 or x + w <= 0 or y + h <= 0:
        raise DatasetError(source, f"image {image_key}: box {box!r} lies outside the image", field=field)
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > 1 + BOX_TOLERANCE or y + h > 1 + BOX_TOLERANCE:
        warnings.append(
            f"{source}, field {field!r}: image {image_key}: box {box!r} reaches past the image border"
        )
    return x, y, w, h


def register_image_name(
    seen: dict[str, int],
    image_key: str,
    file_name: str,
    index: int,
    source: Path,
    collection: str,
    field: str,
) -> None:
    """Record that ``collection[index]`` holds the image keyed ``image_key``; a second one is an error
    (images are keyed by file stem, as the paper keys them)."""
    if image_key in seen:
        raise DatasetError(
            source, f"duplicate image name {file_name!r} (also {collection}[{seen[image_key]}])", field=field
        )
    seen[image_key] = index


def check_labelled_size(
    path: Path,
    name: str,
    labelled: tuple[Any, Any],
    stored: tuple[int, int],
    source: Path,
    says: str,
    field: str,
) -> None:
    """The size the labels give (``says``: "labels say") must be the stored image's, else a located error."""
    width, height = labelled
    if (int(width), int(height)) != stored:
        hint = size_mismatch_hint(path, (int(width), int(height)), stored)
        raise DatasetError(
            source,
            f"{name}: {says} {width}x{height} but the image is {stored[0]}x{stored[1]}{hint}",
            field=field,
        )


def image_row(
    path: Path, image_key: str, stored: tuple[int, int], source: Path, field: str, warnings: list[str]
) -> dict[str, Any]:
    """The images-table row of the checked image at ``path`` (``stored``: its header size); a rotated
    image's warning goes to ``warnings``."""
    warning = orientation_warning(path, source, field, stored)
    if warning:
        warnings.append(warning)
    return {
        "image_id": image_key,
        "file_name": path.name,
        "path": str(path.resolve()),
        "width": stored[0],
        "height": stored[1],
        "sha256": file_sha256(path),
    }


def apply_crowd_mode(iscrowd: int, crowd: CrowdMode) -> int | None:
    """``iscrowd`` after the loader's crowd mode: None when the instance is dropped ("remove"), 0 for
    every instance with "fix", unchanged with "keep"."""
    if iscrowd and crowd == "remove":
        return None
    return 0 if crowd == "fix" else iscrowd
