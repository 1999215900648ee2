"""Helpers shared by the dataset readers."""

from __future__ import annotations

import hashlib
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


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header (no full decode), after checking the file is an image."""
    try:
        with Image.open(path) as img:
            return int(img.width), int(img.height)
    except FileNotFoundError:
        raise DatasetError(path, "image file is missing") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(path, f"not a readable image ({exc})") from exc


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
        warnings.append(f"{source}, field {field!r}: image {image_key}: box {box!r} reaches past the image border")
    return x, y, w, h
