"""The evaluation's input tables: their checks and the columns read from them (docs/protocol/evaluation.md §2.2).

Two DataFrames, one row per object: ground truth ``image_id, label, x, y, w, h`` (relative to the image,
top-left origin), optional ``iscrowd`` and ``mask``; predictions the same, optional ``confidence``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

GT_REQUIRED = ("image_id", "label", "x", "y", "w", "h")
PRED_REQUIRED = ("image_id", "label", "x", "y", "w", "h")


def check_frame(df: pd.DataFrame, required: tuple[str, ...], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; need {list(required)}")
    if len(df) == 0:
        return
    labels = df["label"]
    if isinstance(labels.dtype, pd.StringDtype):  # pandas' string dtype: only missing values can be bad
        bad = labels.isna().to_numpy()
    else:
        bad = labels.isna().to_numpy() | ~labels.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what}: row {df.index[i]!r} (image {df['image_id'].iloc[i]!r}), field 'label': expected a string, got {labels.iloc[i]!r}"
        )
    if df["image_id"].isna().any():
        i = int(np.flatnonzero(df["image_id"].isna().to_numpy())[0])
        raise ValueError(f"{what}: row {df.index[i]!r}, field 'image_id' is missing")
    box = df[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
    finite = np.isfinite(box).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"{what}: row {df.index[i]!r} (image {df['image_id'].iloc[i]!r}), fields 'x, y, w, h': non-finite box {box[i].tolist()}"
        )
    # docs/protocol/evaluation.md §2.2: the paper asserts w > 0 and h > 0 for every box and aborts the evaluation otherwise.
    positive = (box[:, 2] > 0) & (box[:, 3] > 0)
    if not positive.all():
        i = int(np.flatnonzero(~positive)[0])
        raise ValueError(
            f"{what}: row {df.index[i]!r} (image {df['image_id'].iloc[i]!r}), fields 'w, h': the paper requires "
            f"w > 0 and h > 0 (docs/protocol/evaluation.md §2.2), got {box[i].tolist()}"
        )


def confidences(pred: pd.DataFrame) -> np.ndarray:
    """Confidences as float64 with NaN for missing (None and NaN are the same here)."""
    if "confidence" not in pred.columns:
        return np.full(len(pred), np.nan)
    conf = pd.to_numeric(pred["confidence"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    raw_missing = pred["confidence"].isna().to_numpy()
    coerced = np.isnan(conf) & ~raw_missing
    if coerced.any():
        i = int(np.flatnonzero(coerced)[0])
        raise ValueError(
            f"predictions: row {pred.index[i]!r}, field 'confidence': not a number: {pred['confidence'].iloc[i]!r}"
        )
    return conf


def crowd_flags(gt: pd.DataFrame) -> np.ndarray:
    if "iscrowd" not in gt.columns:
        return np.zeros(len(gt), dtype=bool)
    return gt["iscrowd"].fillna(0).astype(bool).to_numpy()


def pixel_scale(df: pd.DataFrame, image_sizes: pd.DataFrame, what: str) -> np.ndarray:
    """Per row ``[W, H, W, H]`` from an ``image_id, width, height`` table."""
    missing_cols = [c for c in ("image_id", "width", "height") if c not in image_sizes.columns]
    if missing_cols:
        raise ValueError(f"image_sizes: missing column(s) {missing_cols}")
    sizes = (
        image_sizes.drop_duplicates("image_id").set_index("image_id")[["width", "height"]].astype(np.float64)
    )
    wh = sizes.reindex(df["image_id"]).to_numpy()
    unknown = np.isnan(wh).any(axis=1)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise ValueError(
            f"{what}: row {df.index[i]!r}: image {df['image_id'].iloc[i]!r} is not in image_sizes"
        )
    return np.concatenate([wh, wh], axis=1)
