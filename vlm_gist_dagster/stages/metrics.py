"""Stage E, evaluation, for one (model, dataset) pair: the paper's nine table columns plus TP/FP/FN, mAR,
COCO-standard bbox and mask AP (pycocotools), tokens and cost (docs/protocol/evaluation.md §2), and the statistics
columns of ``stages/statistics.py`` (bootstrap intervals, mask-based and class-agnostic metrics)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..protocol.columns import metadata_columns
from ..protocol.evaluation import EvaluationResult, evaluate
from ..protocol.leaderboard import COLUMNS, format_markdown
from ..protocol.statistics import StatisticsSettings
from .leaderboard import row_name
from .statistics import EXTRA_METRICS, INTERVAL_COLUMNS, TableStatistics, pair_statistics, statistics_markdown
from .tables import METRICS

#: Column names of the one-row table (meaning: ``stages.tables.METRICS``).
METRIC_COLUMNS = METRICS.names


def predictions_from_label_matches(label_matches: pd.DataFrame) -> pd.DataFrame:
    """The evaluated predictions: label-matched detections with their dataset target as label; unmatched
    ones are dropped, not counted as false positives (docs/protocol/evaluation.md gotcha 1)."""
    kept = label_matches[label_matches["dataset_match"].notna()]
    return pd.DataFrame(
        {
            "image_id": kept["image_id"].to_numpy(),
            "label": kept["dataset_match"].astype(str).to_numpy(),
            "x": kept["x"].to_numpy(dtype=float),
            "y": kept["y"].to_numpy(dtype=float),
            "w": kept["w"].to_numpy(dtype=float),
            "h": kept["h"].to_numpy(dtype=float),
            "confidence": kept["confidence"].to_numpy(dtype=float),
            "mask": kept["mask"].to_numpy(dtype=object),
        }
    )


def per_image_matches(label_matches: pd.DataFrame) -> pd.DataFrame:
    """Accepted / rejected labels per label-matched image (the ``label_matches.json`` entries).

    >>> lm = pd.DataFrame({"image_id": ["a", "a", "b"], "skipped": [False, False, True],
    ...                    "dataset_match": ["cup", None, None]})
    >>> per_image_matches(lm).to_dict("records")
    [{'image_id': 'a', 'accepted': 1, 'rejected': 1}]
    >>> len(per_image_matches(lm.iloc[:0]))   # a model that described nothing
    0
    """
    matched = label_matches[~label_matches["skipped"].fillna(False).astype(bool)]
    accepted = matched["dataset_match"].notna().groupby(matched["image_id"], sort=False).sum()
    total = matched.groupby("image_id", sort=False).size()
    return pd.DataFrame(
        {
            "image_id": total.index.to_numpy(dtype=object),
            "accepted": accepted.reindex(total.index).to_numpy(dtype=np.int64),
            "rejected": (total - accepted.reindex(total.index)).to_numpy(dtype=np.int64),
        }
    )


def metrics_markdown(metrics_row: Mapping[str, Any]) -> str:
    """One ``metrics`` row as the leaderboard's Markdown table: the paper's columns, rounded half-up as
    the paper's tables are (``format_number``), under the row's name in the tables.

    >>> row = {"model": "m", "display_name": "M", "simulated": True, "f1": 0.1245, "rec": 0.5,
    ...        "prec": 0.5, "map": float("nan"), "ins": 3, "mat": 1, "time": 2.25, "fail": 0, "ret": 0}
    >>> print(metrics_markdown(row).splitlines()[2])
    | M (simulated) | 0.125 | 0.500 | 0.500 |  | 3.0 | 1.00 | 2.3s | 0.00 | 0.00 |
    """
    return format_markdown([{"name": row_name(metrics_row), **{k: float(metrics_row[k]) for k in COLUMNS}}])


def metrics_statistics_markdown(metrics_row: Mapping[str, Any]) -> str:
    """One ``metrics`` row's intervals and extra metrics as the leaderboard's statistics table (without
    rank and group, which need the other models)."""
    model = str(metrics_row["model"])
    columns = pd.DataFrame(
        {c: [metrics_row.get(c, math.nan)] for c in (*INTERVAL_COLUMNS, *EXTRA_METRICS)},
        index=pd.Index([model], name="model"),
    ).astype(float)
    columns["rank_low"] = pd.array([pd.NA], dtype="Int64")
    columns["rank_high"] = pd.array([pd.NA], dtype="Int64")
    columns["group"] = ""
    level = float(metrics_row.get("confidence_level") or 0.95)
    legend = (
        f"Intervals: {level * 100:g} % percentile bootstrap over images "
        f"({int(metrics_row.get('bootstrap_resamples') or 0):,} resamples, seed {metrics_row.get('bootstrap_seed')})."
    )
    row = {"name": row_name(metrics_row), "model": model, **{k: float(metrics_row[k]) for k in COLUMNS}}
    return statistics_markdown([row], TableStatistics(columns=columns, legend=legend))


def compute_metrics(
    *,
    dataset: str,
    model: str,
    display_name: str,
    kind: str,
    simulated: bool,
    images: pd.DataFrame,
    ground_truth: pd.DataFrame,
    descriptions: pd.DataFrame,
    detection_images: pd.DataFrame,
    label_matches: pd.DataFrame,
    coco_standard: bool = True,
    statistics: StatisticsSettings | None = None,
) -> tuple[pd.DataFrame, EvaluationResult]:
    """One metrics row and the full evaluation result (per-class report etc.). ``statistics`` sets the
    bootstrap (default: ``StatisticsSettings()``)."""
    with_masks = predictions_from_label_matches(label_matches)
    predictions = with_masks
    if not ground_truth["mask"].notna().all() or not predictions["mask"].notna().all():
        # pycocotools' segm AP needs masks on both sides; boxes only otherwise.
        predictions = predictions.drop(columns="mask")
    result = evaluate(
        ground_truth,
        predictions,
        coco_standard=coco_standard,
        image_sizes=images[["image_id", "width", "height"]],
    )
    extras = pair_statistics(
        dataset=dataset,
        image_ids=images["image_id"].tolist(),
        ground_truth=ground_truth,
        predictions=with_masks,
        result=result,
        settings=statistics or StatisticsSettings(),
    )
    columns = metadata_columns(descriptions, detection_images, per_image_matches(label_matches))
    row = {
        "dataset": dataset,
        "model": model,
        "display_name": display_name,
        "kind": kind,
        "simulated": bool(simulated),
        "f1": result.fscore,
        "rec": result.recall,
        "prec": result.precision,
        "map": result.mAP if result.mAP_available else math.nan,
        "ins": columns.ins,
        "mat": columns.mat,
        "time": columns.time,
        "fail": columns.fail,
        "ret": columns.ret,
        "tp": result.tp,
        "fp": result.fp,
        "fn": result.fn,
        "mar": result.mAR if result.mAP_available else math.nan,
        "accuracy": result.accuracy,
        "support": result.support,
        "num_images": int(len(images)),
        "num_predictions": int(len(predictions)),
        "coco_bbox_ap": result.coco_bbox_AP,
        "coco_bbox_ap50": result.coco_bbox_AP50,
        "coco_segm_ap": result.coco_segm_AP,
        "tokens_in": columns.tokens_in,
        "tokens_out": columns.tokens_out,
        "cost_usd": columns.cost_usd,
        "map_unavailable_reason": result.mAP_unavailable_reason,
        **extras,
    }
    return METRICS.from_rows([row]), result
