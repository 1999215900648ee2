"""The two tables every dataset is loaded into, and the errors loading can raise."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

#: One row per image. ``image_id`` is the file's stem (the paper keys everything by image basename).
IMAGE_COLUMNS: tuple[str, ...] = ("image_id", "file_name", "path", "width", "height", "sha256")

#: One row per ground-truth instance. ``x, y, w, h`` are relative to the image (top-left origin, as
#: FiftyOne stores them); ``mask`` is a COCO RLE dict over the full image, or None.
GROUND_TRUTH_COLUMNS: tuple[str, ...] = (
    "image_id",
    "instance_id",
    "label",
    "x",
    "y",
    "w",
    "h",
    "mask",
    "iscrowd",
)


#: What a loader does with crowd annotations (docs/protocol/evaluation.md §2.1, §7): "remove" drops them, "fix"
#: keeps them with ``iscrowd`` set to 0, "keep" leaves them marked.
CrowdMode = Literal["remove", "fix", "keep"]


class DatasetError(ValueError):
    """A dataset directory cannot be loaded. The message names the file and the field at fault."""

    def __init__(self, file: Path | str, message: str, *, field: str | None = None) -> None:
        self.file = str(file)
        self.field = field
        where = f"{self.file}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")


class DatasetDownloadError(RuntimeError):
    """A dataset is missing and could not be downloaded (offline, server error, checksum mismatch, or
    downloading is off). ``str()`` is the whole message with how to use a local copy; ``dataset`` and
    ``reason`` (what went wrong, without the advice) let a caller list several missing datasets at once.
    """

    def __init__(self, message: str, *, dataset: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.reason = reason


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: ``images`` and ``ground_truth`` tables (see the column constants).

    ``format`` is ``"fiftyone"`` or ``"coco"``; ``warnings`` lists recoverable oddities found while
    loading (e.g. boxes reaching outside their image), each naming file and field.
    """

    name: str
    root: Path
    format: str
    images: pd.DataFrame
    ground_truth: pd.DataFrame
    warnings: tuple[str, ...] = field(default=())

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_instances(self) -> int:
        return len(self.ground_truth)


def build_images_table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(IMAGE_COLUMNS))
    return df.astype({"width": "int64", "height": "int64"})


def build_ground_truth_table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(GROUND_TRUTH_COLUMNS))
    df["mask"] = df["mask"].astype(object)
    return df.astype({"x": "float64", "y": "float64", "w": "float64", "h": "float64", "iscrowd": "int64"})


def ground_truth_row(
    image_id: str,
    instance_id: str,
    label: str,
    box: tuple[float, float, float, float],
    mask: Any,
    iscrowd: int,
) -> dict[str, Any]:
    """One ground-truth row (:data:`GROUND_TRUTH_COLUMNS`); ``box`` is the relative ``x, y, w, h``."""
    x, y, w, h = box
    return {
        "image_id": image_id,
        "instance_id": instance_id,
        "label": label,
        "x": x,
        "y": y,
        "w": w,
        "h": h,
        "mask": mask,
        "iscrowd": iscrowd,
    }


def assemble_dataset(
    root: Path, name: str | None, format: str, images: list[dict], instances: list[dict], warnings: list[str]
) -> Dataset:
    """The :class:`Dataset` of a loader's image and ground-truth rows (named after ``root`` by default)."""
    return Dataset(
        name=name or root.name,
        root=root,
        format=format,
        images=build_images_table(images),
        ground_truth=build_ground_truth_table(instances),
        warnings=tuple(warnings),
    )
