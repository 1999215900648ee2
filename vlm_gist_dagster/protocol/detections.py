"""The one shape of detections in the pipeline: :class:`Detections`, the detections of one image as
parallel numpy arrays (one entry per detection), as Roboflow ``supervision``'s ``Detections``.

Every stage B path produces it: MM-Grounding-DINO's parsed response (labels are the prompts, i.e. the
description strings), a baseline's (Florence-2 / Kosmos-2 labels, no confidence), and the same
detections after SAM2 (masks, mask boxes, track ids). The stage tables are built from it and read back
into it (:meth:`Detections.from_table`, :meth:`Detections.table_columns`), so no stage converts boxes
by hand.

>>> d = Detections.from_boxes(["a red cup", "a cat"], [(0, 0, 4, 4), (5, 0, 9, 4)], [0.9, 0.8])
>>> len(d), d.label.tolist(), d.xyxy[1].tolist()
(2, ['a red cup', 'a cat'], [5, 0, 9, 4])
>>> d.relative_xywh(10, 8)[1].tolist()          # FiftyOne's [x/W, y/H, w/W, h/H]
[0.5, 0.0, 0.4, 0.5]
>>> d[d.confidence > 0.85].label.tolist()       # boolean, integer and slice indexing, as numpy's
['a red cup']
>>> d.has_mask.tolist(), d.track_id.tolist()    # not segmented yet: no mask, track id NO_TRACK
([False, False], [-1, -1])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .masks import RLE

__all__ = ["NO_TRACK", "BoxXYXY", "Detections", "relative_xywh"]

#: One pixel box ``(x1, y1, x2, y2)`` as the vision servers send it (ints).
BoxXYXY = tuple[int, int, int, int]
#: ``track_id`` (and every ``mask_xyxy`` coordinate) of a detection without a mask.
NO_TRACK = -1

#: The stage tables' box columns of the detector box and of the mask box.
BOX_COLUMNS = ("x1", "y1", "x2", "y2")
MASK_BOX_COLUMNS = ("mask_x1", "mask_y1", "mask_x2", "mask_y2")


def relative_xywh(box_xyxy: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """FiftyOne's relative box ``[x1/W, y1/H, (x2 − x1)/W, (y2 − y1)/H]`` of one box (docs/protocol/pipeline.md §4.5).

    >>> relative_xywh((10, 20, 30, 60), 100, 200)
    (0.1, 0.1, 0.2, 0.2)
    """
    x1, y1, x2, y2 = box_xyxy
    return (x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height)


def _object_array(values: Iterable[Any], n: int) -> np.ndarray:
    out = np.empty(n, dtype=object)
    out[:] = list(values) if n else []
    return out


@dataclass(frozen=True, eq=False)
class Detections:
    """The detections of one image, column-wise: entry ``j`` of every array is detection ``j`` (its
    index in the detector's response, which is also the ``object_id`` SAM2 was prompted with).

    * ``xyxy`` (N, 4) int64: the detector's pixel box ``[x1, y1, x2, y2]``.
    * ``label`` (N,) str: MM-Grounding-DINO's prompt (a description string) or a baseline's label.
    * ``confidence`` (N,) float64: the detector's score; NaN where the model gives none (baselines).
    * ``mask`` (N,) object: the SAM2 mask as a full-image COCO RLE, or None.
    * ``mask_xyxy`` (N, 4) int64: the mask's box as SAM2 sends it (inclusive max); ``NO_TRACK`` (-1)
      in every coordinate where there is no mask.
    * ``track_id`` (N,) int64: the SAM2 track the mask came from; ``NO_TRACK`` where there is none.
    """

    xyxy: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    mask: np.ndarray
    mask_xyxy: np.ndarray
    track_id: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.label)
        shapes = {
            "xyxy": (self.xyxy.shape, (n, 4)),
            "confidence": (self.confidence.shape, (n,)),
            "mask": (self.mask.shape, (n,)),
            "mask_xyxy": (self.mask_xyxy.shape, (n, 4)),
            "track_id": (self.track_id.shape, (n,)),
        }
        for name, (shape, expected) in shapes.items():
            if shape != expected:
                raise ValueError(f"Detections.{name} has shape {shape}, expected {expected} for {n} labels")

    # ---------------------------------------------------------------------------------- construction

    @classmethod
    def from_boxes(
        cls,
        labels: Sequence[str],
        boxes_xyxy: Sequence[Sequence[int]] | np.ndarray,
        confidences: Sequence[float | None] | np.ndarray | None = None,
    ) -> Detections:
        """Unsegmented detections from labels, pixel boxes and (optionally) confidences; a missing
        confidence (None) is NaN."""
        n = len(labels)
        xyxy = np.asarray(boxes_xyxy, dtype=np.int64).reshape(n, 4)
        if confidences is None:
            confidence = np.full(n, np.nan)
        else:
            confidence = np.array([np.nan if c is None else c for c in confidences], dtype=np.float64)
        return cls(
            xyxy=xyxy,
            label=_object_array(labels, n),
            confidence=confidence,
            mask=_object_array([None] * n, n),
            mask_xyxy=np.full((n, 4), NO_TRACK, dtype=np.int64),
            track_id=np.full(n, NO_TRACK, dtype=np.int64),
        )

    @classmethod
    def empty(cls) -> Detections:
        return cls.from_boxes([], np.zeros((0, 4), dtype=np.int64))

    def with_masks(self, masks: Sequence[tuple[int, BoxXYXY, RLE] | None]) -> Detections:
        """These detections with SAM2's results: per detection ``(track_id, mask box, full-image RLE)``
        or None (no mask)."""
        if len(masks) != len(self):
            raise ValueError(f"{len(masks)} mask entries for {len(self)} detections")
        track_id = np.array([NO_TRACK if m is None else m[0] for m in masks], dtype=np.int64)
        mask_xyxy = np.array([(NO_TRACK,) * 4 if m is None else m[1] for m in masks], dtype=np.int64).reshape(
            len(self), 4
        )
        return Detections(
            xyxy=self.xyxy,
            label=self.label,
            confidence=self.confidence,
            mask=_object_array([None if m is None else m[2] for m in masks], len(self)),
            mask_xyxy=mask_xyxy,
            track_id=track_id,
        )

    @classmethod
    def from_table(cls, table: pd.DataFrame, *, label: str) -> Detections:
        """One image's rows of a stage table (``detections`` / ``masks``: columns ``x1 … y2``, the label
        column ``label``, ``confidence``; with ``mask``, ``mask_x1 … mask_y2`` and ``track_id`` when the
        table has them), in row order."""
        n = len(table)
        detections = cls.from_boxes(
            table[label].tolist(),
            table[list(BOX_COLUMNS)].to_numpy(dtype=np.int64) if n else np.zeros((0, 4), dtype=np.int64),
            table["confidence"].to_numpy(dtype=np.float64) if "confidence" in table else None,
        )
        if "mask" not in table or "track_id" not in table:
            return detections
        has = table["track_id"].notna().to_numpy()
        tracks = table["track_id"].to_numpy(dtype=np.float64, na_value=np.nan)
        boxes = table[list(MASK_BOX_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
        masks = table["mask"].tolist()
        return detections.with_masks(
            [
                (int(tracks[j]), tuple(int(v) for v in boxes[j]), masks[j]) if has[j] else None  # type: ignore[misc]
                for j in range(n)
            ]
        )

    # ---------------------------------------------------------------------------------- access

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> Detections:
        """A subset (numpy indexing: an int, a slice, integer or boolean arrays); always Detections."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(
            xyxy=self.xyxy[index],
            label=self.label[index],
            confidence=self.confidence[index],
            mask=self.mask[index],
            mask_xyxy=self.mask_xyxy[index],
            track_id=self.track_id[index],
        )

    @property
    def has_mask(self) -> np.ndarray:
        """(N,) bool: whether SAM2 gave the detection a mask."""
        return self.track_id != NO_TRACK

    def preferred_xyxy(self, use_mask_box: bool = True) -> np.ndarray:
        """(N, 4) the box each detection is evaluated with: with ``use_mask_box`` (the settings'
        ``segmentation_use_bbox``) the mask box where there is a mask, else the detector box (§4.4)."""
        if not use_mask_box:
            return self.xyxy.copy()
        return np.where(self.has_mask[:, None], self.mask_xyxy, self.xyxy)

    def relative_xywh(self, width: int, height: int, *, use_mask_box: bool = False) -> np.ndarray:
        """(N, 4) float64 FiftyOne relative boxes ``[x/W, y/H, w/W, h/H]`` of :meth:`preferred_xyxy`."""
        boxes = self.preferred_xyxy(use_mask_box).astype(np.float64)
        scale = np.array([width, height, width, height], dtype=np.float64)
        out = boxes / scale
        out[:, 2:] = (boxes[:, 2:] - boxes[:, :2]) / scale[:2]
        return out

    def table_columns(self) -> dict[str, Any]:
        """The detections as stage-table columns: ``x1 … y2``, ``confidence``, ``mask``,
        ``mask_x1 … mask_y2`` and ``track_id`` (pandas nullable ``Int64``: missing where no mask)."""
        columns: dict[str, Any] = {c: self.xyxy[:, k] for k, c in enumerate(BOX_COLUMNS)}
        columns["confidence"] = self.confidence
        columns["mask"] = self.mask
        missing = ~self.has_mask
        for k, c in enumerate(MASK_BOX_COLUMNS):
            columns[c] = pd.array(np.where(missing, 0, self.mask_xyxy[:, k]), dtype="Int64")
            columns[c][missing] = pd.NA
        track = pd.array(np.where(missing, 0, self.track_id), dtype="Int64")
        track[missing] = pd.NA
        columns["track_id"] = track
        return columns

    def __repr__(self) -> str:
        rows = ", ".join(
            f"({self.label[j]!r}, {self.xyxy[j].tolist()}, {self.confidence[j]:.3g}"
            + (f", track {self.track_id[j]}" if self.has_mask[j] else "")
            + ")"
            for j in range(min(len(self), 3))
        )
        more = f", … {len(self) - 3} more" if len(self) > 3 else ""
        return f"Detections[{len(self)}]({rows}{more})"

    def equals(self, other: Detections) -> bool:
        """Same detections entry by entry (NaN confidences equal; masks compared as RLE dicts)."""
        return (
            len(self) == len(other)
            and np.array_equal(self.xyxy, other.xyxy)
            and self.label.tolist() == other.label.tolist()
            and np.array_equal(self.confidence, other.confidence, equal_nan=True)
            and np.array_equal(self.mask_xyxy, other.mask_xyxy)
            and np.array_equal(self.track_id, other.track_id)
            and [_plain(m) for m in self.mask] == [_plain(m) for m in other.mask]
        )


def _plain(mask: Mapping[str, Any] | None) -> Any:
    return None if mask is None else {"size": list(mask["size"]), "counts": mask["counts"]}
