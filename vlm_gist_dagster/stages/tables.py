"""The stage tables: every column of every per-pair asset, in order, with its dtype and what it holds.

One :class:`TableSpec` per table is the single place a column is named: the stages build their frames
through it (:meth:`TableSpec.from_rows`, :meth:`TableSpec.conform`: column order and dtype casts), and
the assets publish it as their column schema (``dagster/column_schema``, built in ``defs``).

>>> DETECTIONS.names[:4]
('image_id', 'detection_index', 'prompt', 'object_name')
>>> DETECTIONS.from_rows([]).dtypes["x1"], DETECTIONS.from_rows([]).dtypes["instance_index"]
(dtype('int64'), Int64Dtype())
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

__all__ = [
    "DESCRIPTIONS",
    "DETECTIONS",
    "DETECTION_IMAGES",
    "LABEL_MATCHES",
    "LEADERBOARD",
    "MASKS",
    "METRICS",
    "VALIDATIONS",
    "Column",
    "TableSpec",
]


@dataclass(frozen=True)
class Column:
    """One column: its name, the dtype it is cast to (None: as built, e.g. Python objects or bools
    that may be missing), and what it holds."""

    name: str
    dtype: str | None
    description: str


@dataclass(frozen=True)
class TableSpec:
    """A table's columns in order."""

    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def descriptions(self) -> dict[str, str]:
        return {c.name: c.description for c in self.columns}

    def __add__(self, other: TableSpec) -> TableSpec:
        return TableSpec(other.name, self.columns + other.columns)

    def conform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with exactly these columns in this order (missing ones are added empty) and each
        cast to its dtype (numeric columns through ``pd.to_numeric``: None becomes NaN / NA)."""
        out = frame.reindex(columns=list(self.names))
        for column in self.columns:
            if column.dtype is None:
                continue
            if column.dtype == "object":
                out[column.name] = out[column.name].astype(object)
            else:
                out[column.name] = pd.to_numeric(out[column.name]).astype(column.dtype)
        return out

    def from_rows(self, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
        """A frame from row dicts (keys not in the spec are dropped, missing ones are empty)."""
        return self.conform(pd.DataFrame(list(rows), columns=list(self.names)))


def _columns(*spec: tuple[str, str | None, str]) -> tuple[Column, ...]:
    return tuple(Column(*c) for c in spec)


_BOX_DOC = "pixel coordinate of the detector's box ({}; ints, as the server sends them)"

DESCRIPTIONS = TableSpec(
    "descriptions",
    _columns(
        ("image_id", None, "the dataset's image id"),
        ("kind", None, "vlm, or baseline (no description stage: docs/protocol/pipeline.md §6)"),
        ("success", None, "a valid structured description was obtained"),
        ("objects", "object", "the validated objects (object_name, description, ...); null when failed"),
        ("num_described", "Int64", "number of described objects"),
        ("attempts", None, "attempts made (at most 1 + retry)"),
        ("failed_attempts", None, "failed attempts followed by a retry: the paper's Ret. per image"),
        ("failed_attempts_total", None, "every failed attempt, the last one of a failed image included"),
        ("duration_s", "float64", "seconds of the successful attempt (the paper's Time); NaN when failed"),
        ("tokens_in", "Int64", "input tokens over all attempts"),
        ("tokens_in_cached", "Int64", "cached input tokens over all attempts"),
        ("tokens_out", "Int64", "output tokens over all attempts"),
        ("cost_usd", "float64", "USD over all attempts (settings/prices.json); NaN when unpriced"),
        ("http_retries", None, "transport retries (429, 5xx, connection errors), outside the attempt budget"),
        ("from_cache", None, "answered from the response cache"),
        ("error", None, "why the last attempt failed (a reason code); null on success"),
        ("error_message", None, "the failure in words"),
        ("image_sha256", None, "hash of the image bytes sent"),
        ("attempt_log_json", None, "every attempt's raw output, reasoning, reason and timing, as JSON"),
    ),
)

DETECTIONS = TableSpec(
    "detections",
    _columns(
        ("image_id", None, "the dataset's image id"),
        ("detection_index", "int64", "position in the detector's response (SAM2's object_id)"),
        ("prompt", None, "the detector prompt: the description string it grounds (null for baselines)"),
        ("object_name", None, "the described object's name (a baseline's label)"),
        ("description", None, "the described object's description (null for baselines)"),
        ("instance_index", "Int64", "position of that object in the image's description"),
        ("x1", "int64", _BOX_DOC.format("left")),
        ("y1", "int64", _BOX_DOC.format("top")),
        ("x2", "int64", _BOX_DOC.format("right")),
        ("y2", "int64", _BOX_DOC.format("bottom")),
        ("confidence", "float64", "the detector's score; NaN for baselines"),
        (
            "is_over_detection",
            None,
            "not the direct detection of a prompt (docs/protocol/pipeline.md §4.4); null for baselines",
        ),
    ),
)

DETECTION_IMAGES = TableSpec(
    "detection_images",
    _columns(
        ("image_id", None, "the dataset's image id"),
        ("num_prompts", None, "prompts sent (baselines: 1 per answered image, for Ins.)"),
        ("num_detections", None, "detections returned"),
        ("prompts", None, "the prompts, in description order, duplicates kept"),
        ("missing_prompts", None, "prompts without a detection (multiset difference)"),
        ("over_detections", None, "detection labels beyond the prompts (multiset difference)"),
        ("duration_s", None, "seconds of the detector call"),
        ("error", None, "why the image failed; null on success"),
    ),
)

_SEGMENTATION = TableSpec(
    "masks",
    _columns(
        ("mask", "object", "SAM2 mask as a full-image COCO RLE (pycocotools); null without a track"),
        ("mask_x1", "Int64", "left of the mask box (SAM2, inclusive max)"),
        ("mask_y1", "Int64", "top of the mask box"),
        ("mask_x2", "Int64", "right of the mask box"),
        ("mask_y2", "Int64", "bottom of the mask box"),
        ("track_id", "Int64", "the SAM2 track the mask came from"),
        ("box_x1", "int64", "left of the evaluated box: the mask box when segmentation_use_bbox, else x1"),
        ("box_y1", "int64", "top of the evaluated box"),
        ("box_x2", "int64", "right of the evaluated box"),
        ("box_y2", "int64", "bottom of the evaluated box"),
        ("x", "float64", "evaluated box, FiftyOne's relative x (x1 / width)"),
        ("y", "float64", "evaluated box, relative y"),
        ("w", "float64", "evaluated box, relative width"),
        ("h", "float64", "evaluated box, relative height"),
        ("segmentation_error", None, "why SAM2 failed for the image; null on success"),
    ),
)
MASKS = DETECTIONS + _SEGMENTATION

VALIDATIONS = MASKS + TableSpec(
    "validations",
    _columns(
        ("validation_outcome", None, "keep, update, reject or error (off: validation not run)"),
        ("validation_action", None, "the decision in the reference's words"),
        ("validated_object_name", None, "the object name after validation; null when dropped"),
        ("validation_answer", None, "the validation VLM's answer, matched to an object name or n/a"),
        ("validation_error", None, "why the crop got no answer"),
        ("kept", None, "goes on to label matching"),
    ),
)

LABEL_MATCHES = TableSpec(
    "label_matches",
    _columns(
        ("image_id", None, "the dataset's image id"),
        ("detection_index", None, "the detection's index in its image"),
        ("label", None, "the detection's (validated) object name"),
        ("description", None, "its description"),
        ("label_norm", None, "the label as normalised for matching"),
        ("best_target", None, "the best-scoring target"),
        ("score", "float64", "the best target's similarity score"),
        ("match", None, "the matched target"),
        ("mapping_rule_applied", None, "an augmented target was mapped to a dataset target"),
        ("dataset_match", None, "the dataset target it counts as; null: dropped before evaluation"),
        ("levenshtein_match", None, "matched by edit distance before embeddings"),
        ("skipped", None, "the image was skipped by label matching"),
        ("confidence", "float64", "the detector's score"),
        ("x", "float64", "evaluated box, relative x"),
        ("y", "float64", "evaluated box, relative y"),
        ("w", "float64", "evaluated box, relative width"),
        ("h", "float64", "evaluated box, relative height"),
        ("mask", "object", "SAM2 mask (COCO RLE) or null"),
    ),
)

_NINE = {
    "f1": "F1 at IoU 0.5, pooled over the images (FiftyOne's evaluate_detections)",
    "rec": "recall (Rec.)",
    "prec": "precision (Prec.)",
    "map": "FiftyOne's mAP; NaN when unavailable (e.g. predictions without confidence)",
    "ins": "mean detections per image with prompts (Ins.)",
    "mat": "mean accepted labels per label-matched image over Ins. (Mat.)",
    "time": "median seconds of the successful description attempt (Time)",
    "fail": "fraction of images without a valid description (Fail)",
    "ret": "mean failed attempts per image (Ret.)",
}

#: Not the paper's (issue 17, ``stages.statistics``): intervals and extra metrics, in the metrics rows and
#: the leaderboard's rows.
_STATISTICS = (
    *(
        (
            f"{key}_{end}",
            None,
            f"{end} end of the 95 % bootstrap interval of {title} (settings/statistics.json)",
        )
        for key, title in (("f1", "F1"), ("prec", "Prec."), ("rec", "Rec."), ("map", "mAP"))
        for end in ("low", "high")
    ),
    ("mask_f1", None, "F1 with the SAM2 masks matched to the ground truth's (FiftyOne's use_masks=True)"),
    ("mask_prec", None, "precision with masks"),
    ("mask_rec", None, "recall with masks"),
    ("mask_map", None, "mAP with masks"),
    ("agnostic_f1", None, "F1 with labels ignored in the matching (class-agnostic)"),
    ("f1_50_95", None, "F1 averaged over IoU 0.50:0.05:0.95"),
)

METRICS = TableSpec(
    "metrics",
    _columns(
        ("dataset", None, "dataset partition"),
        ("model", None, "model partition (the model file's key)"),
        ("display_name", None, "the name in the tables"),
        ("kind", None, "vlm or baseline"),
        ("simulated", None, "answered by the simulator"),
        *((name, None, doc) for name, doc in _NINE.items()),
        ("tp", None, "true positives"),
        ("fp", None, "false positives"),
        ("fn", None, "false negatives"),
        ("mar", None, "FiftyOne's mAR"),
        ("accuracy", None, "tp / (tp + fp + fn)"),
        ("support", None, "tp + fn"),
        ("num_images", None, "images of the dataset"),
        ("num_predictions", None, "evaluated predictions (label-matched detections)"),
        ("coco_bbox_ap", None, "COCO-standard box AP@[.5:.95] (pycocotools), an extra column"),
        ("coco_bbox_ap50", None, "COCO-standard box AP50"),
        ("coco_segm_ap", None, "COCO-standard mask AP@[.5:.95]"),
        ("tokens_in", None, "input tokens of the descriptions"),
        ("tokens_out", None, "output tokens of the descriptions"),
        ("cost_usd", None, "USD of the descriptions"),
        ("map_unavailable_reason", None, "why mAP is NaN"),
        *_STATISTICS,
        ("bootstrap_resamples", None, "bootstrap resamples of the images (settings/statistics.json)"),
        ("bootstrap_seed", None, "seed of the resampling (settings/statistics.json)"),
        ("confidence_level", None, "level of the intervals (settings/statistics.json)"),
        ("mask_unavailable_reason", None, "why the mask columns are NaN"),
        (
            "masks_missing",
            None,
            "evaluated predictions without a mask (SAM2 failed): empty masks in the mask columns",
        ),
        ("image_ids", None, "the dataset's image ids, sorted: the order of the image_* lists"),
        ("image_tp", None, "true positives per image (for the leaderboard's paired tests)"),
        ("image_fp", None, "false positives per image"),
        ("image_fn", None, "false negatives per image"),
        ("bootstrap_f1", None, "F1 of every bootstrap resample (for the weighted table's intervals)"),
        ("bootstrap_prec", None, "precision of every bootstrap resample"),
        ("bootstrap_rec", None, "recall of every bootstrap resample"),
        ("bootstrap_map", None, "mAP of every bootstrap resample"),
    ),
)

LEADERBOARD = TableSpec(
    "leaderboard",
    _columns(
        ("table", None, "coco, vlm_gist or weighted"),
        ("rank", None, "rank in the table, by unrounded F1"),
        ("name", None, "the model's name in the tables"),
        ("model", None, "model partition"),
        *((name, None, doc) for name, doc in _NINE.items()),
        *_STATISTICS[:8],
        ("rank_low", None, "best rank the model could hold at 95 % (paired permutation tests of F1, Holm)"),
        ("rank_high", None, "worst rank the model could hold at 95 %"),
        ("group", None, "letters: models sharing one are not distinguishable"),
        *_STATISTICS[8:],
    ),
)
