"""The leaderboard's non-detection columns (Ins., Mat., Time, Fail, Ret.) and the token / cost totals,
with the paper's per-image statistics and NaN rules (docs/protocol/evaluation.md §2.7, §2.10; gotchas 14-16).

Three small per-image tables feed them (the pipeline reads them from its Parquet assets):

``descriptions`` - one row per image of the dataset (stage A):
    ``image_id``; ``success`` (bool: a valid structured description was obtained);
    ``num_described`` (instances in it; ignored when not ``success``); ``failed_attempts`` (int: failed
    structured-description attempts, 0-3 with the paper's 4 attempts; a completely failed image has 3);
    ``duration_s`` (seconds of the *successful* attempt only, NaN when none); optional ``tokens_in``,
    ``tokens_out``, ``cost_usd`` (per image, NaN when unknown).
``detections`` - one row per image (stage B): ``image_id``, ``num_prompts``, ``num_detections``.
    As in the paper's ``detections.json``, only images with at least one prompt have a detection
    count; rows with ``num_prompts == 0`` are ignored.
``label_matches`` - one row per image that went through label matching (stage D; images without
    detections are skipped there): ``image_id``, ``accepted``, ``rejected``.

>>> import pandas as pd
>>> d = pd.DataFrame({"image_id": ["a", "b"], "success": [True, False], "num_described": [4, None],
...                   "failed_attempts": [1, 3], "duration_s": [2.0, None]})
>>> det = pd.DataFrame({"image_id": ["a", "b"], "num_prompts": [4, 0], "num_detections": [4, 0]})
>>> lm = pd.DataFrame({"image_id": ["a"], "accepted": [2], "rejected": [2]})
>>> c = metadata_columns(d, det, lm)
>>> c.ins, c.mat, c.time, c.fail, c.ret        # 4/1; 2/4; median(2.0); 1 of 2 failed; (1+3)/2
(4.0, 0.5, 2.0, 0.5, 2.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DESCRIPTION_COLUMNS",
    "DETECTION_COLUMNS",
    "LABEL_MATCH_COLUMNS",
    "ImageStats",
    "MetadataColumns",
    "image_stats",
    "metadata_columns",
]

DESCRIPTION_COLUMNS: tuple[str, ...] = (
    "image_id",
    "success",
    "num_described",
    "failed_attempts",
    "duration_s",
)
DESCRIPTION_OPTIONAL_COLUMNS: tuple[str, ...] = ("tokens_in", "tokens_out", "cost_usd")
DETECTION_COLUMNS: tuple[str, ...] = ("image_id", "num_prompts", "num_detections")
LABEL_MATCH_COLUMNS: tuple[str, ...] = ("image_id", "accepted", "rejected")


@dataclass(frozen=True)
class ImageStats:
    """The paper's ``add_results`` block for one per-image list: the NaN fraction and the
    nan-ignoring median / mean / population std / max / min."""

    nan_fraction: float
    median: float
    mean: float
    std: float
    max: float
    min: float

    def as_dict(self, key: str) -> dict[str, float]:
        """The ``evaluation.json`` ``images`` entries: ``<key>_NaN``, ``<key>_median``, ..."""
        return {
            f"{key}_NaN": self.nan_fraction,
            f"{key}_median": self.median,
            f"{key}_mean": self.mean,
            f"{key}_std": self.std,
            f"{key}_max": self.max,
            f"{key}_min": self.min,
        }


def image_stats(values: Sequence[float] | np.ndarray | pd.Series) -> ImageStats | None:
    """``add_results`` (docs/protocol/evaluation.md §2.7): ``None`` when the list is empty or all NaN (the paper skips the key,
    which later reads as NaN - or 0.0 for Fail); otherwise NaN fraction over ``max(len, 1)`` and the
    nan-ignoring statistics (std with ddof=0).

    >>> image_stats([1.0, float("nan"), 3.0])
    ImageStats(nan_fraction=0.3333333333333333, median=2.0, mean=2.0, std=1.0, max=3.0, min=1.0)
    >>> image_stats([float("nan")]) is None
    True
    """
    arr = pd.to_numeric(pd.Series(values), errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    if arr.size == 0 or np.isnan(arr).all():
        return None
    return ImageStats(
        nan_fraction=float(np.isnan(arr).sum() / max(arr.size, 1)),
        median=float(np.nanmedian(arr)),
        mean=float(np.nanmean(arr)),
        std=float(np.nanstd(arr)),
        max=float(np.nanmax(arr)),
        min=float(np.nanmin(arr)),
    )


@dataclass(frozen=True)
class MetadataColumns:
    """The five metadata columns of one (model, dataset) table row plus totals.

    ``ins`` = mean detections per image (over images with >= 1 prompt); ``mat`` = mean accepted labels
    (over label-matched images) / ``ins``, a ratio of means (docs/protocol/evaluation.md gotcha 14); ``time`` = median duration of
    the successful description attempt; ``fail`` = fraction of images without a valid description;
    ``ret`` = mean failed attempts per image. NaN where the paper's table shows ``nan``.
    ``tokens_in`` / ``tokens_out`` / ``cost_usd`` are nan-sums over images (NaN if all unknown).
    ``images`` holds the ``evaluation.json`` ``images`` block for the lists we have; ``skipped`` names
    the lists the paper would skip (empty or all NaN, its warning).
    """

    ins: float
    mat: float
    time: float
    fail: float
    ret: float
    num_images: int
    tokens_in: float
    tokens_out: float
    cost_usd: float
    inf_retries: bool = False
    images: dict[str, float] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    def as_row(self) -> dict[str, Any]:
        return {"ins": self.ins, "mat": self.mat, "time": self.time, "fail": self.fail, "ret": self.ret}


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; need {list(columns)}")
    if df["image_id"].duplicated().any():
        dup = df["image_id"][df["image_id"].duplicated()].iloc[0]
        raise ValueError(f"{what}: image_id {dup!r} appears more than once (one row per image)")


def _numeric(df: pd.DataFrame, column: str, what: str) -> np.ndarray:
    try:
        return pd.to_numeric(df[column], errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: field {column!r} must be numeric ({exc})") from None


def _nansum(values: np.ndarray, as_int: bool) -> float:
    """The totals' nansum: NaN when every value is NaN (or there are none)."""
    if values.size == 0 or np.isnan(values).all():
        return math.nan
    total = float(np.nansum(values))
    return float(round(total)) if as_int else total


def metadata_columns(
    descriptions: pd.DataFrame,
    detections: pd.DataFrame | None = None,
    label_matches: pd.DataFrame | None = None,
    *,
    inf_retries: bool = False,
) -> MetadataColumns:
    """Ins., Mat., Time, Fail and Ret. for one (model, dataset) run, exactly as the paper derives them.

    ``inf_retries=True`` reproduces the notebook's hard-coded override for runs made with unlimited
    retries: Fail and Ret. become NaN whatever the data says (docs/protocol/evaluation.md §2.10).

    NaN rules (docs/protocol/evaluation.md §2.7 ``add_results`` and §2.10 ``.get`` defaults): a statistic whose per-image list
    is empty or all NaN is missing and shows as NaN, except Fail, which then defaults to 0.0 - so a run
    where *every* image failed shows Fail 0.00, as in the paper (docs/protocol/evaluation.md gotcha 16). Mat. is NaN when Ins. is
    NaN or 0 (the paper would divide by zero).
    """
    _require(descriptions, DESCRIPTION_COLUMNS, "descriptions")
    success = descriptions["success"].fillna(False).astype(bool).to_numpy()
    described = np.where(success, _numeric(descriptions, "num_described", "descriptions"), np.nan)
    # ``len(failed_structured_description_completions)``, 0 when the key is absent (docs/protocol/evaluation.md §2.7).
    failures = np.nan_to_num(_numeric(descriptions, "failed_attempts", "descriptions"), nan=0.0)
    # The duration is written only on success (docs/protocol/evaluation.md §2.7: timing of a description attempt).
    duration = np.where(success, _numeric(descriptions, "duration_s", "descriptions"), np.nan)

    images: dict[str, float] = {}
    skipped: list[str] = []

    def add(key: str, values: np.ndarray) -> ImageStats | None:
        stats = image_stats(values)
        if stats is None:
            skipped.append(key)
        else:
            images.update(stats.as_dict(key))
        return stats

    described_stats = add("described_instances", described)
    failure_stats = add("failures_structured_description", failures)

    detected_stats = None
    if detections is not None:
        _require(detections, DETECTION_COLUMNS, "detections")
        prompts = _numeric(detections, "num_prompts", "detections")
        # detections.json has an entry only for images with >= 1 prompt (docs/protocol/evaluation.md §2.7, gotcha 14).
        detected_stats = add(
            "detected_instances", _numeric(detections, "num_detections", "detections")[prompts >= 1]
        )

    accept_stats = None
    if label_matches is not None:
        _require(label_matches, LABEL_MATCH_COLUMNS, "label_matches")
        accept_stats = add("label_matching_accept", _numeric(label_matches, "accepted", "label_matches"))
        add("label_matching_reject", _numeric(label_matches, "rejected", "label_matches"))

    time_stats = add("time_description", duration)

    tokens = {}
    for column, key in (
        ("tokens_in", "tokens_in_description"),
        ("tokens_out", "tokens_out_description"),
        ("cost_usd", "dollars_description"),
    ):
        values = (
            _numeric(descriptions, column, "descriptions")
            if column in descriptions.columns
            else np.full(len(descriptions), np.nan)
        )
        if not np.isnan(values).all():
            add(key, values)
        tokens[column] = _nansum(values, as_int=column != "cost_usd")

    ins = detected_stats.mean if detected_stats is not None else math.nan
    accept_mean = accept_stats.mean if accept_stats is not None else math.nan
    # Mat. = accept_mean / detected_mean: a ratio of means over different image sets (docs/protocol/evaluation.md gotcha 14).
    mat = accept_mean / ins if (not math.isnan(ins) and ins != 0) else math.nan
    time = time_stats.median if time_stats is not None else math.nan
    # Fail = images.get("described_instances_NaN", 0.0); Ret. = .get("failures_..._mean", NaN).
    fail = described_stats.nan_fraction if described_stats is not None else 0.0
    ret = failure_stats.mean if failure_stats is not None else math.nan
    if inf_retries:
        fail = ret = math.nan

    return MetadataColumns(
        ins=float(ins),
        mat=float(mat),
        time=float(time),
        fail=float(fail),
        ret=float(ret),
        num_images=len(descriptions),
        tokens_in=tokens["tokens_in"],
        tokens_out=tokens["tokens_out"],
        cost_usd=tokens["cost_usd"],
        inf_retries=inf_retries,
        images=images,
        skipped=tuple(skipped),
    )
