"""Uncertainty and extra metrics for the metrics rows and the leaderboard (not the paper's; extra columns).

Per (dataset, model) pair (``pair_statistics``, called by stage E): bootstrap intervals of F1, Prec.,
Rec. and mAP; mask-based F1 / Prec. / Rec. / mAP (FiftyOne's ``use_masks=True``); class-agnostic F1;
F1 averaged over IoU 0.50:0.05:0.95; and what the leaderboard needs to compare models: the per-image
TP / FP / FN and the bootstrap replicates.

Per table (``leaderboard_statistics``): the intervals (for the weighted table from both datasets'
replicates), paired permutation tests of F1 between all models, rank ranges and groups; a Markdown
table (``statistics_markdown``), the pairwise CSV and a plot of F1 with intervals (``plot_f1_intervals``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import paths
from ..files import atomic_path
from ..protocol.evaluation import EvaluationResult, evaluate, evaluate_class_agnostic
from ..protocol.leaderboard import format_number, sort_rows
from ..protocol.masks import encode_rle
from ..protocol.statistics import (
    PerImageResults,
    StatisticsSettings,
    average_precision_replicates,
    compact_letter_display,
    count_replicates,
    load_statistics_settings,
    paired_permutation_test,
    percentile_interval,
    rank_ranges,
    resample_counts,
    seeded_generator,
)

#: Metrics with bootstrap intervals: metrics column → replicate column.
INTERVAL_METRICS: dict[str, str] = {
    "f1": "bootstrap_f1",
    "prec": "bootstrap_prec",
    "rec": "bootstrap_rec",
    "map": "bootstrap_map",
}
#: Extra metrics (not the paper's).
EXTRA_METRICS: tuple[str, ...] = (
    "mask_f1",
    "mask_prec",
    "mask_rec",
    "mask_map",
    "agnostic_f1",
    "f1_50_95",
)
#: The interval columns, low and high per metric.
INTERVAL_COLUMNS: tuple[str, ...] = tuple(f"{m}_{end}" for m in INTERVAL_METRICS for end in ("low", "high"))
#: What a metrics row carries for the leaderboard's paired tests and the weighted intervals.
SAMPLE_COLUMNS: tuple[str, ...] = (
    "bootstrap_resamples",
    "bootstrap_seed",
    "confidence_level",
    "mask_unavailable_reason",
    "masks_missing",
    "image_ids",
    "image_tp",
    "image_fp",
    "image_fn",
    *INTERVAL_METRICS.values(),
)
#: The statistics columns of a leaderboard row (CSV), in order.
LEADERBOARD_COLUMNS: tuple[str, ...] = (*INTERVAL_COLUMNS, "rank_low", "rank_high", "group", *EXTRA_METRICS)


def statistics_settings_file() -> Path:
    """``settings/statistics.json`` (in ``$VLM_GIST_SETTINGS_DIR`` when set)."""
    return paths.settings_dir() / "statistics.json"


def load_settings(path: str | Path | None = None) -> StatisticsSettings:
    """The statistics settings from ``path`` (default ``statistics_settings_file()``); defaults when the
    file does not exist."""
    return load_statistics_settings(path if path is not None else statistics_settings_file())


# ---- per (dataset, model) pair ----------------------------------------------------------------------


def _with_empty_masks(ground_truth: pd.DataFrame, predictions: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``predictions`` where a detection without a mask (its image's SAM2 call failed for good) gets an
    empty mask of its image's size, and how many did.

    An empty mask overlaps nothing, so such a detection is a false positive of the mask metrics: a
    failed segmentation costs the model there, as a missing detection would, instead of dropping the
    mask columns of the whole pair. The size is taken from another mask of the same image (ground truth
    first); an image without any mask gets 1 × 1 (it has no ground-truth mask to be compared with).

    >>> gt = pd.DataFrame({"image_id": ["a"], "mask": [{"size": [4, 6], "counts": "0"}]})
    >>> pred = pd.DataFrame({"image_id": ["a", "b"], "mask": [None, None]})
    >>> filled, missing = _with_empty_masks(gt, pred)
    >>> missing, [m["size"] for m in filled["mask"]]
    (2, [[4, 6], [1, 1]])
    """
    missing = (
        predictions["mask"].isna().to_numpy()
        if "mask" in predictions.columns
        else np.ones(len(predictions), bool)
    )
    if not missing.any():
        return predictions, 0
    sizes: dict[str, list[int]] = {}
    for frame in (ground_truth, predictions):
        if "mask" not in frame.columns:
            continue
        for image_id, mask in zip(frame["image_id"].astype(str), frame["mask"]):
            if isinstance(mask, Mapping) and image_id not in sizes:
                sizes[image_id] = [int(v) for v in mask["size"]]
    filled = predictions.copy()
    masks = list(filled["mask"]) if "mask" in filled.columns else [None] * len(filled)
    for i in np.flatnonzero(missing):
        height, width = sizes.get(str(filled["image_id"].iloc[i]), [1, 1])
        masks[i] = encode_rle(np.zeros((height, width), dtype=bool))
    filled["mask"] = pd.Series(masks, index=filled.index, dtype=object)
    return filled, int(missing.sum())


def _mask_metrics(
    ground_truth: pd.DataFrame, predictions: pd.DataFrame
) -> tuple[EvaluationResult | None, str | None, int]:
    """The mask-based evaluation (or None and why not) and the number of predictions without a mask."""
    if len(ground_truth) and ("mask" not in ground_truth.columns or ground_truth["mask"].isna().any()):
        return None, "ground truth: not every object has a mask", 0
    predictions, missing = _with_empty_masks(ground_truth, predictions)
    if "mask" not in ground_truth.columns:
        return None, "no masks", missing
    return evaluate(ground_truth, predictions, use_masks=True, coco_standard=False), None, missing


def pair_statistics(
    *,
    dataset: str,
    image_ids: Sequence[str],
    ground_truth: pd.DataFrame,
    predictions: pd.DataFrame,
    result: EvaluationResult,
    settings: StatisticsSettings,
) -> dict[str, Any]:
    """The statistics columns of one metrics row (``INTERVAL_COLUMNS``, ``EXTRA_METRICS`` and
    ``SAMPLE_COLUMNS``).

    The bootstrap resamples the dataset's images (all of them, sorted by id) with the generator of
    ``(settings.seed, "bootstrap", dataset)``: every model of a dataset sees the same resamples.
    """
    ids = sorted(str(i) for i in image_ids)
    per_image = result.per_image.assign(image_id=result.per_image["image_id"].astype(str))
    unknown = sorted(set(per_image["image_id"]) - set(ids))
    if unknown:
        raise ValueError(f"{dataset}: objects of images that are not in the dataset: {unknown[:5]}")
    counts = per_image.set_index("image_id").reindex(ids, fill_value=0)
    tp, fp, fn = (counts[c].to_numpy(dtype=np.int64) for c in ("tp", "fp", "fn"))
    weights = resample_counts(
        len(ids), settings.bootstrap_resamples, seeded_generator(settings.seed, "bootstrap", dataset)
    )
    replicates = count_replicates(tp, fp, fn, weights)
    if result.mAP_available and result.sweep is not None:
        column = pd.Index(ids).get_indexer([str(i) for i in result.sweep.image_ids])
        map_replicates = average_precision_replicates(result.sweep, column, weights)
    else:
        map_replicates = np.full(settings.bootstrap_resamples, np.nan)
    samples = {
        "f1": replicates.fscore,
        "prec": replicates.precision,
        "rec": replicates.recall,
        "map": map_replicates,
    }
    out: dict[str, Any] = {}
    for metric, values in samples.items():
        out[f"{metric}_low"], out[f"{metric}_high"] = percentile_interval(values, settings.confidence_level)

    mask_result, mask_reason, masks_missing = _mask_metrics(ground_truth, predictions)
    out["mask_f1"] = mask_result.fscore if mask_result else math.nan
    out["mask_prec"] = mask_result.precision if mask_result else math.nan
    out["mask_rec"] = mask_result.recall if mask_result else math.nan
    out["mask_map"] = mask_result.mAP if mask_result and mask_result.mAP_available else math.nan
    if mask_result is not None and not mask_result.mAP_available:
        mask_reason = f"mask mAP: {mask_result.mAP_unavailable_reason}"
    out["agnostic_f1"] = evaluate_class_agnostic(ground_truth, predictions).fscore
    out["f1_50_95"] = result.fscore_50_95

    out.update(
        bootstrap_resamples=int(settings.bootstrap_resamples),
        bootstrap_seed=int(settings.seed),
        confidence_level=float(settings.confidence_level),
        mask_unavailable_reason=mask_reason,
        masks_missing=masks_missing,
        image_ids=ids,
        image_tp=tp.tolist(),
        image_fp=fp.tolist(),
        image_fn=fn.tolist(),
        **{INTERVAL_METRICS[m]: v.tolist() for m, v in samples.items()},
    )
    return out


# ---- per leaderboard table --------------------------------------------------------------------------


@dataclass
class TableStatistics:
    """One table's statistics: ``columns`` (index: model key; ``LEADERBOARD_COLUMNS``), the pairwise tests
    (one row per pair) and a legend saying how they were computed."""

    columns: pd.DataFrame
    pairwise: pd.DataFrame = field(default_factory=pd.DataFrame)
    legend: str = ""


PAIRWISE_COLUMNS = (
    "table", "model_a", "name_a", "model_b", "name_b", "f1_a", "f1_b", "difference", "p_value",
    "p_adjusted", "significant", "permutations", "exact", "correction",
)  # fmt: skip


def _number(value: Any) -> float:
    """A numeric cell as float; NaN for None / missing."""
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _array(value: Any) -> np.ndarray | None:
    """A list-valued cell as an array; None for a missing cell (rows from before these columns)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return np.asarray(value)


def _per_image(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str] | None, PerImageResults | None, str]:
    """The models' per-image counts on their common image list, or None and why not."""
    maybe_ids = [_array(r.get("image_ids")) for r in rows]
    ids = [i for i in maybe_ids if i is not None]
    if len(ids) != len(maybe_ids):
        missing = [r["model"] for r, i in zip(rows, maybe_ids) if i is None]
        return (
            None,
            None,
            f"no per-image results for {', '.join(map(str, missing))} (metrics from an older version)",
        )
    first = ids[0]
    if any(len(i) != len(first) or bool((i != first).any()) for i in ids[1:]):
        return None, None, "the models were evaluated on different image lists"
    tp, fp, fn = (
        np.stack([np.asarray(r[c], dtype=np.int64) for r in rows])
        for c in ("image_tp", "image_fp", "image_fn")
    )
    try:
        return [str(i) for i in first], PerImageResults.from_counts(tp, fp, fn), ""
    except ValueError as exc:
        return None, None, str(exc)


def _weighted_sum(weights: Sequence[float], arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``sum(w * a)`` over paired weights and equal-shape arrays, as float64."""
    total = np.zeros(np.shape(arrays[0]), dtype=np.float64)
    for weight, array in zip(weights, arrays):
        total = total + weight * np.asarray(array, dtype=np.float64)
    return total


def _interval_columns(
    replicates_by_dataset: Sequence[Sequence[Mapping[str, Any]]],
    weights: Sequence[float],
    level: float,
) -> dict[str, list[float]]:
    """Per model, the intervals of the weighted sum of the datasets' replicates (one dataset: its own).
    The datasets were resampled independently, so replicate b of one and replicate b of another form one
    draw of the combined resample."""
    n_models = len(replicates_by_dataset[0])
    out: dict[str, list[float]] = {c: [] for c in INTERVAL_COLUMNS}
    for k in range(n_models):
        for metric, column in INTERVAL_METRICS.items():
            maybe_arrays = [_array(rows[k].get(column)) for rows in replicates_by_dataset]
            arrays = [a for a in maybe_arrays if a is not None]
            if len(arrays) != len(maybe_arrays) or len({len(a) for a in arrays}) != 1:
                low = high = math.nan
            else:
                low, high = percentile_interval(_weighted_sum(weights, arrays), level)
            out[f"{metric}_low"].append(low)
            out[f"{metric}_high"].append(high)
    return out


def table_statistics(
    table: str,
    rows_by_dataset: Sequence[Sequence[Mapping[str, Any]]],
    weights: Sequence[float],
    names: Sequence[str],
    settings: StatisticsSettings,
) -> TableStatistics:
    """Statistics of one table. ``rows_by_dataset[d][k]`` is model k's metrics row on dataset d (one
    dataset for a dataset's table, every weighted dataset for the weighted table), ``names`` the table's
    names of the models. Columns of a combined table are the weighted sums, as the paper's weighted
    table (F1 included: a mean of the F1s)."""
    models = [str(r["model"]) for r in rows_by_dataset[0]]
    total = float(sum(weights))
    w = [float(x) / total for x in weights]
    columns: dict[str, Any] = _interval_columns(rows_by_dataset, w, settings.confidence_level)
    for metric in EXTRA_METRICS:
        columns[metric] = [
            sum(wd * _number(rows[k].get(metric)) for wd, rows in zip(w, rows_by_dataset))
            for k in range(len(models))
        ]
    frame = pd.DataFrame(columns, index=pd.Index(models, name="model"))
    frame["rank_low"] = pd.array([pd.NA] * len(models), dtype="Int64")
    frame["rank_high"] = pd.array([pd.NA] * len(models), dtype="Int64")
    frame["group"] = ""

    per_dataset = [_per_image(rows) for rows in rows_by_dataset]
    reasons = [reason for _, _, reason in per_dataset if reason]
    level = f"{settings.confidence_level * 100:g} %"
    legend = (
        f"Intervals: {level} percentile bootstrap over images ({settings.bootstrap_resamples:,} resamples, "
        f"seed {settings.seed}{', each dataset resampled on its own' if len(w) > 1 else ''})."
    )
    pairwise = pd.DataFrame(columns=list(PAIRWISE_COLUMNS))
    if reasons:
        legend += f" No paired tests: {'; '.join(reasons)}."
    elif len(models) >= 1:
        data: list[PerImageResults] = []
        for _, results, _ in per_dataset:
            assert results is not None, "_per_image gives a reason whenever it gives no results"
            data.append(results)
        pairs = len(models) * (len(models) - 1) // 2
        tests = paired_permutation_test(
            data, w, permutations=settings.permutations_for(pairs),
            rng=seeded_generator(settings.seed, "permutation", table),
            confidence_level=settings.confidence_level, correction=settings.multiple_comparisons,
        )  # fmt: skip
        better = tests.better()
        low, high = rank_ranges(better)
        frame["rank_low"] = pd.array(low.tolist(), dtype="Int64")
        frame["rank_high"] = pd.array(high.tolist(), dtype="Int64")
        scores = _weighted_sum(w, [d.fscore() for d in data])
        letters = compact_letter_display(scores, better | better.T)
        frame["group"] = letters if letters is not None else [""] * len(models)
        f1 = np.asarray(scores)
        pairwise = pd.DataFrame(
            {
                "table": table,
                "model_a": [models[i] for i in tests.first], "name_a": [names[i] for i in tests.first],
                "model_b": [models[j] for j in tests.second], "name_b": [names[j] for j in tests.second],
                "f1_a": f1[tests.first], "f1_b": f1[tests.second], "difference": tests.difference,
                "p_value": tests.p_value, "p_adjusted": tests.p_adjusted, "significant": tests.significant,
                "permutations": tests.permutations, "exact": tests.exact, "correction": tests.correction,
            },
            columns=list(PAIRWISE_COLUMNS),
        )  # fmt: skip
        how = "all swaps enumerated" if tests.exact else f"{tests.permutations:,} random swaps"
        correction = (
            f"Holm-corrected over {pairs:,} pairs"
            if tests.correction == "holm"
            else f"not corrected for the {pairs:,} pairs"
        )
        legend += (
            f" Rank: the ranks a model could hold at {level}; Group: models that share a letter are not "
            f"distinguishable. Both from paired permutation tests of F1 on the same images ({how}, "
            f"{correction}{', per dataset on its own images' if len(w) > 1 else ''})."
        )
        if letters is None:
            legend += " Groups not shown: too irregular a pattern of differences for letters."
    return TableStatistics(columns=frame, pairwise=pairwise, legend=legend)


def _interval_cell(value: float, low: float, high: float) -> str:
    cell = format_number(float(value), 1, 3).strip()
    if math.isnan(low) or math.isnan(high):
        return cell
    return f"{cell} ({format_number(low, 1, 3).strip()}–{format_number(high, 1, 3).strip()})"


def statistics_markdown(rows: Sequence[Mapping[str, Any]], stats: TableStatistics) -> str:
    """The table's statistics as Markdown, rows in the paper table's order (by F1): the paper's four
    metrics with intervals, rank range, group, and the extra metrics; then the legend.

    ``rows`` are the paper table's rows (``name``, ``model`` and the paper's columns).
    """
    header = (
        "| Model | F1 (95 % CI) | Prec. (95 % CI) | Rec. (95 % CI) | mAP (95 % CI) | Rank | Group | Mask F1 | "
        "Mask Prec. | Mask Rec. | Mask mAP | Class-agn. F1 | F1@[.5:.95] |"
    )
    if stats.legend and "95 %" not in stats.legend:  # another level: say so in the header
        level = stats.legend.split("Intervals: ", 1)[1].split(" percentile", 1)[0]
        header = header.replace("95 % CI", f"{level} CI")
    lines = [header, "|:--|" + "--:|" * 4 + ":-:|:--|" + "--:|" * 6]
    cols = stats.columns
    for row in sort_rows(rows):
        model = row.get("model")
        extra = cols.loc[model] if model in cols.index else None

        # Called within this iteration only, so the closure's late binding of `extra` is harmless.
        def get(key: str) -> float:
            return float(extra[key]) if extra is not None and not pd.isna(extra[key]) else math.nan  # noqa: B023

        cells = [_interval_cell(row[m], get(f"{m}_low"), get(f"{m}_high")) for m in INTERVAL_METRICS]
        low, high = (extra["rank_low"], extra["rank_high"]) if extra is not None else (pd.NA, pd.NA)
        rank = "" if pd.isna(low) else (f"{low}" if low == high else f"{low}–{high}")
        group = str(extra["group"]) if extra is not None else ""
        numbers = [format_number(get(m), 1, 3).strip() for m in EXTRA_METRICS]
        name = str(row["name"]).replace("|", "\\|")
        lines.append("| " + " | ".join([name, *cells, rank, group, *numbers]) + " |")
    return "\n".join(lines) + ("\n\n" + stats.legend if stats.legend else "")


def leaderboard_statistics(
    frame: pd.DataFrame,
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    weights: Mapping[str, float],
    settings: StatisticsSettings,
) -> dict[str, TableStatistics]:
    """Statistics of every table of the leaderboard: a dataset's table from that dataset's metrics rows,
    the ``"weighted"`` table from the rows of every dataset in ``weights``."""
    out: dict[str, TableStatistics] = {}
    records = {
        (str(r["dataset"]), str(r["model"])): r for r in frame.to_dict("records")
    } if len(frame) else {}  # fmt: skip
    for table, rows in tables.items():
        if not rows:
            continue
        datasets = list(weights) if table == "weighted" else [table]
        w = [float(weights[d]) for d in datasets] if table == "weighted" else [1.0]
        models = [str(r["model"]) for r in rows]
        rows_by_dataset = [[records[(d, m)] for m in models] for d in datasets]
        out[table] = table_statistics(table, rows_by_dataset, w, [str(r["name"]) for r in rows], settings)
    return out


def plot_f1_intervals(rows: pd.DataFrame, directory: Path) -> Path | None:
    """``f1_intervals.png``: per table, every model's F1 with its interval, best at the top, labelled with
    its rank range and group. None without rows."""
    if rows.empty or "f1_low" not in rows.columns:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = list(rows["table"].unique())
    height = 0.35 * rows.groupby("table").size().max() + 1.6
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), height), squeeze=False)
    for ax, table in zip(axes[0], tables):
        sub = rows[rows["table"] == table].iloc[::-1]  # best at the top
        y = np.arange(len(sub))
        f1 = sub["f1"].to_numpy(dtype=float)
        low = sub["f1_low"].to_numpy(dtype=float)
        high = sub["f1_high"].to_numpy(dtype=float)
        err = np.vstack([np.nan_to_num(f1 - low), np.nan_to_num(high - f1)])
        ax.errorbar(f1, y, xerr=err, fmt="o", color="#4c72b0", ecolor="#8da0cb", capsize=3)
        labels = []
        for r in sub.itertuples():
            rank = (
                ""
                if pd.isna(r.rank_low)
                else (f"#{r.rank_low}" if r.rank_low == r.rank_high else f"#{r.rank_low}–{r.rank_high}")
            )
            extra = " ".join(part for part in (rank, str(r.group or "")) if part)
            labels.append(f"{r.name}  [{extra}]" if extra else r.name)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("F1 (95 % interval)")
        ax.set_title(f"F1 with intervals — {table}")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = directory / "f1_intervals.png"
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=100, format="png")
    plt.close(fig)
    return path
