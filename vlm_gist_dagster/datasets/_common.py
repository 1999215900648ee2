"""Helpers shared by the dataset readers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .model import DatasetError

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
