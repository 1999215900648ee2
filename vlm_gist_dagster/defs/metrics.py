"""Stage E assets: ``metrics`` per (dataset, model) and the unpartitioned ``leaderboard``."""

import base64
from pathlib import Path

import dagster as dg
import pandas as pd

from ..datasets.provenance import DatasetProvenance, heading
from ..orchestration.metadata import column_schema, finite, frame_table
from ..protocol.leaderboard import COLUMNS
from ..stages.leaderboard import build_leaderboard, write_leaderboard
from ..stages.metrics import compute_metrics, metrics_markdown, metrics_statistics_markdown
from ..stages.statistics import EXTRA_METRICS, INTERVAL_COLUMNS
from ..stages.statistics import load_settings as load_statistics_settings
from ..stages.tables import LEADERBOARD, METRICS
from .automation import LEADERBOARD_CONDITION, STAGE_CONDITION
from .partitions import model_dataset_partitions, pair
from .resources import ModelsResource, ServicesResource, SettingsResource


@dg.asset(
    partitions_def=model_dataset_partitions,
    group_name="benchmark",
    kinds={"parquet"},
    automation_condition=STAGE_CONDITION,
    code_version="2",
    check_specs=[dg.AssetCheckSpec("metrics_in_range", asset="metrics")],
    description="Stage E: the paper's nine columns (F1, Rec., Prec., mAP, Ins., Mat., Time, Fail, Ret.) plus "
    "TP/FP/FN, mAR, COCO-standard bbox and mask AP (pycocotools), tokens and cost; not the paper's: bootstrap "
    "intervals of F1/Prec./Rec./mAP, mask-based and class-agnostic F1, F1@[.5:.95] (settings/statistics.json).",
)
def metrics(
    context: dg.AssetExecutionContext,
    dataset_images: pd.DataFrame,
    ground_truth: pd.DataFrame,
    descriptions: pd.DataFrame,
    detection_images: pd.DataFrame,
    label_matches: pd.DataFrame,
    models: ModelsResource,
    settings: SettingsResource,
):
    dataset, key = pair(context)
    _, model = models.load(key)
    row, result = compute_metrics(
        dataset=dataset,
        model=key,
        display_name=model.display_name,
        kind=model.kind,
        simulated=model.simulated,
        images=dataset_images,
        ground_truth=ground_truth,
        descriptions=descriptions,
        detection_images=detection_images,
        label_matches=label_matches,
        statistics=load_statistics_settings(settings.statistics_file()),
    )
    values = row.iloc[0]
    table = metrics_markdown(values)
    yield dg.Output(
        row,
        metadata={
            "dagster/row_count": len(row),
            "dagster/column_schema": column_schema(row, METRICS.descriptions),
            **{c: finite(values[c]) for c in COLUMNS},
            "tp": int(values["tp"]),
            "fp": int(values["fp"]),
            "fn": int(values["fn"]),
            "coco_bbox_ap": finite(values["coco_bbox_ap"]),
            "coco_segm_ap": finite(values["coco_segm_ap"]),
            "tokens_in": finite(values["tokens_in"]),
            "cost_usd": finite(values["cost_usd"]),
            "table": dg.MetadataValue.md(table),
            **{c: finite(values[c]) for c in (*INTERVAL_COLUMNS, *EXTRA_METRICS)},
            "bootstrap_resamples": int(values["bootstrap_resamples"]),
            "bootstrap_seed": int(values["bootstrap_seed"]),
            "statistics": dg.MetadataValue.md(metrics_statistics_markdown(values)),
            "row": frame_table(row[[c for c in ROW_COLUMNS if c in row.columns]], METRICS.descriptions),
            "intervals": interval_table(values),
        },
    )
    bad = [
        c
        for c in ("f1", "rec", "prec", "map", "mat", "fail")
        if finite(values[c]) is not None and not 0 <= values[c] <= 1
    ]
    yield dg.AssetCheckResult(
        check_name="metrics_in_range",
        passed=not bad,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"out_of_range": dg.MetadataValue.json(bad)},
    )


#: The columns of the ``row`` table of a ``metrics`` materialisation: the paper's nine, each rate with its
#: interval next to it, the counts and the extra metrics.
ROW_COLUMNS: tuple[str, ...] = (
    "display_name",
    "f1", "f1_low", "f1_high",
    "rec", "rec_low", "rec_high",
    "prec", "prec_low", "prec_high",
    "map", "map_low", "map_high",
    "ins", "mat", "time", "fail", "ret",
    "tp", "fp", "fn",
    *EXTRA_METRICS,
)  # fmt: skip


def interval_table(values: pd.Series) -> dg.TableMetadataValue:
    """One row per metric with an interval: value, low and high end (bootstrap, not the paper's)."""
    metrics = dict.fromkeys(c.rsplit("_", 1)[0] for c in INTERVAL_COLUMNS)
    frame = pd.DataFrame(
        [
            {
                "metric": m,
                "value": values.get(m),
                "low": values.get(f"{m}_low"),
                "high": values.get(f"{m}_high"),
            }
            for m in metrics
        ]
    ).astype({"value": float, "low": float, "high": float})
    level = finite(values.get("confidence_level"))
    return frame_table(
        frame,
        {"low": f"lower end of the {level:g} bootstrap interval" if level else "lower end of the bootstrap interval",
         "high": "upper end of the bootstrap interval"},
    )  # fmt: skip


def dataset_headings(instance: dg.DagsterInstance, metrics: pd.DataFrame) -> dict[str, str]:
    """Dataset → heading naming the data the metrics were computed on, from the latest ``dataset_images``
    materialisation (its directory and the download's provenance) when its image count is the one in
    the metrics rows; otherwise none (the leaderboard then names the image count only)."""
    out: dict[str, str] = {}
    for dataset in dict.fromkeys(metrics.get("dataset", [])):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("dataset_images"), asset_partitions=[dataset]),
            limit=1,
        ).records
        if not records or records[0].asset_materialization is None:
            continue
        meta = records[0].asset_materialization.metadata
        images = getattr(meta.get("dagster/row_count"), "value", None)
        counts = set(metrics.loc[metrics["dataset"] == dataset, "num_images"].dropna().astype(int))
        source = getattr(meta.get("source"), "path", None)
        if images is None or counts != {int(images)} or source is None:
            continue
        raw = getattr(meta.get("provenance"), "data", None)
        fields = DatasetProvenance.__dataclass_fields__
        provenance = (
            DatasetProvenance(**{k: v for k, v in raw.items() if k in fields})
            if isinstance(raw, dict)
            else None
        )
        out[dataset] = heading(dataset, images=int(images), root=Path(source), provenance=provenance)
    return out


#: Leaderboard columns that hold whole numbers (NaN when unknown, so stored as floats).
INT_COLUMNS = {"rank": "int", "rank_low": "int", "rank_high": "int"}
MISSING_DESCRIPTIONS = {
    "pair": "dataset|model partition of `metrics`",
    "status": "never launched, failed, canceled, in progress, or succeeded without metrics",
    "reason": "what happened to the partition's latest run",
    "run_id": "the latest run that planned it",
}


def missing_pairs(instance: dg.DagsterInstance, pairs: list[str]) -> list[dict[str, str | None]]:
    """Why each pair has no metrics, from its latest planned ``metrics`` run: never launched, failed (in
    which steps), canceled, still in progress, or a run that ended without materialising it."""
    out = []
    for pair_key in pairs:
        info = instance.get_latest_planned_materialization_info(dg.AssetKey("metrics"), pair_key)
        run = instance.get_run_by_id(info.run_id) if info is not None else None
        if run is None:
            status, reason, run_id = "not materialised", "never launched (materialise the partition)", None
        else:
            run_id = run.run_id
            if run.status == dg.DagsterRunStatus.FAILURE:
                steps = sorted(
                    {e.step_key for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
                     if e.step_key}
                )  # fmt: skip
                status = "failed"
                reason = f"run {run.run_id[:8]} failed" + (f" in {', '.join(steps)}" if steps else "")
            elif run.status == dg.DagsterRunStatus.CANCELED:
                status, reason = "canceled", f"run {run.run_id[:8]} was canceled"
            elif run.status in (dg.DagsterRunStatus.SUCCESS,):
                status, reason = "no metrics", f"run {run.run_id[:8]} succeeded without materialising metrics"
            else:
                status, reason = "in progress", f"run {run.run_id[:8]} is {run.status.value.lower()}"
        out.append({"pair": pair_key, "status": status, "reason": reason, "run_id": run_id})
    return out


def missing_markdown(missing: list[dict], expected: int) -> str:
    """The missing pairs and why, or that none is missing."""
    if not missing:
        return f"None: all {expected} pairs have metrics."
    lines = [f"{len(missing)} of {expected} pairs have no metrics (left out of the tables):", ""]
    lines += [f"- `{m['pair']}`: {m['reason']}" for m in missing]
    return "\n".join(lines)


def _png_md(path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"![{path.stem}](data:image/png;base64,{encoded})"


@dg.asset(
    ins={
        "metrics": dg.AssetIn(
            partition_mapping=dg.AllPartitionMapping(), metadata={"allow_missing_partitions": True}
        )
    },
    group_name="benchmark",
    kinds={"parquet", "markdown"},
    automation_condition=LEADERBOARD_CONDITION,
    code_version="2",
    description="The paper's three tables (COCO, VLM-GIST, weighted) from every pair's metrics, in the paper's "
    "text format, Markdown, PNG and plots; written to data/leaderboard/. In the materialisation: one table per "
    "leaderboard table (`table_coco`, `table_vlm_gist`, `table_weighted`), the paper-format text, the plots, "
    "and `missing`: every pair without metrics and why (never launched, failed in which step, in progress); "
    "missing pairs are left out, not fatal. "
    "Not the paper's: intervals, paired F1 tests, rank ranges and groups, extra metrics (leaderboard.md/.csv, "
    "pairwise_f1.csv, f1_intervals.png).",
)
def leaderboard(
    context: dg.AssetExecutionContext,
    metrics: dict[str, pd.DataFrame],
    services: ServicesResource,
    settings: SettingsResource,
) -> dg.Output[pd.DataFrame]:
    expected = [
        str(k) for k in model_dataset_partitions.get_partition_keys(dynamic_partitions_store=context.instance)
    ]
    frames = [m for m in metrics.values() if len(m)]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    board = build_leaderboard(
        list(metrics.values()),
        expected_pairs=expected,
        statistics=load_statistics_settings(settings.statistics_file()),
        headings=dataset_headings(context.instance, frame),
    )
    missing = missing_pairs(context.instance, board.missing)
    if missing:
        context.log.warning(
            f"{len(missing)} pairs have no metrics: "
            + "; ".join(f"{m['pair']} ({m['reason']})" for m in missing)
        )
    directory = services.leaderboard_dir()
    written = write_leaderboard(board, directory)
    metadata: dict = {
        "dagster/row_count": len(board.rows),
        "dagster/column_schema": column_schema(board.rows, LEADERBOARD.descriptions),
        "directory": dg.MetadataValue.path(str(directory)),
        "pairs": len(metrics),
        "missing": dg.MetadataValue.md(missing_markdown(missing, len(expected))),
        "missing_pairs": dg.MetadataValue.json(board.missing),
    }
    # One table per leaderboard table, typed columns (the UI shows them whole, not as cut-off text).
    for name in board.texts:
        rows = board.rows[board.rows["table"] == name].drop(columns=["table"])
        metadata[f"table_{name}"] = frame_table(
            rows.reset_index(drop=True), LEADERBOARD.descriptions, types=INT_COLUMNS
        )
    if missing:
        metadata["missing_table"] = frame_table(pd.DataFrame(missing), MISSING_DESCRIPTIONS)
    metadata["tables"] = dg.MetadataValue.md(board.markdown or "_(no metrics yet)_")
    metadata["headings"] = dg.MetadataValue.json(board.headings)
    for name, text in board.texts.items():
        metadata[f"{name}_text"] = dg.MetadataValue.md(f"```\n{text}\n```")
        metadata[f"{name}_text_file"] = dg.MetadataValue.path(str(written[f"{name}.txt"]))
    metadata["significant_pairs"] = int(board.pairwise["significant"].sum()) if len(board.pairwise) else 0
    for key in ("f1", "precision_recall", "f1_time", "f1_intervals"):
        if key in written:
            metadata[f"plot_{key}"] = dg.MetadataValue.md(_png_md(written[key]))
    return dg.Output(board.rows, metadata=metadata)


__all__ = ["leaderboard", "metrics"]
