"""Speed of the leaderboard's statistics (issue 17): the bootstrap of one (dataset, model) pair, and the
paired tests, rank ranges and groups of a 50-model leaderboard on both datasets.

    .venv/bin/python benchmarks/statistics_speed.py [--models 50] [--images 500] [--repeat 5]

Inputs (nothing is committed; everything is generated from a seed):
* a COCO-subset-sized dataset: ``--images`` synthetic images (Poisson(7.3) objects, 80 classes; see
  ``eval_speed.synthetic_coco``), and the real VLM-GIST ground truth (64 images, 1,178 objects);
* ``--models`` models per dataset: predictions made from the ground truth with a per-model quality
  (20-90 % of the objects found, 5-50 % false boxes, jittered boxes, wrong labels, tied confidences),
  each evaluated once (``protocol.evaluation.evaluate``, the paper's metrics).

Timed:
1. *Bootstrap of one pair* (target < 2 s for the 500-image subset): what the ``metrics`` asset adds for
   the intervals, i.e. the resample draws, P / R / F1 of every resample from per-image counts, and mAP of
   every resample from the sweep's entries (``settings/statistics.json``: 1,000 resamples). Median over
   ``--repeat`` runs, for the median-sized model and the largest one.
2. *Paired tests of 50 models x 2 datasets* (target < 60 s): ``stages.statistics.table_statistics`` for
   the COCO, VLM-GIST and weighted tables from the models' metrics rows, as the ``leaderboard`` asset
   runs it: intervals from the replicates, permutation tests of every pair (``"auto"`` permutations,
   Holm), rank ranges and letters.

Prints Markdown tables and the machine. (Not named ``statistics.py``: run as a script from this folder,
that name would shadow the standard library's ``statistics``, which this and ``eval_speed.py`` import.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import DATASET_DIRS, machine, markdown_table  # noqa: E402
from eval_speed import jittered_predictions, synthetic_coco  # noqa: E402

from vlm_gist_dagster.protocol.evaluation import evaluate  # noqa: E402
from vlm_gist_dagster.protocol.statistics import (  # noqa: E402
    StatisticsSettings,
    average_precision_replicates,
    count_replicates,
    resample_counts,
    seeded_generator,
)
from vlm_gist_dagster.stages.statistics import pair_statistics, table_statistics  # noqa: E402


def model_predictions(gt: pd.DataFrame, model: int, n_models: int) -> pd.DataFrame:
    """Model ``model`` of ``n_models``: quality from strong to weak, seeded by its index."""
    quality = model / max(n_models - 1, 1)
    return jittered_predictions(
        gt, seed=1000 + model, keep=0.9 - 0.7 * quality, false_fraction=0.05 + 0.45 * quality
    )


def bootstrap_once(result, image_ids: list[str], settings: StatisticsSettings, dataset: str) -> float:
    """The bootstrap part of ``pair_statistics``: draws, counts replicates, mAP replicates."""
    t0 = time.perf_counter()
    counts = result.per_image.set_index("image_id").reindex(image_ids, fill_value=0)
    weights = resample_counts(
        len(image_ids), settings.bootstrap_resamples, seeded_generator(settings.seed, "bootstrap", dataset)
    )
    count_replicates(counts["tp"], counts["fp"], counts["fn"], weights)
    column = pd.Index(image_ids).get_indexer(list(result.sweep.image_ids))
    average_precision_replicates(result.sweep, column, weights)
    return time.perf_counter() - t0


def metrics_row(
    dataset: str, model: str, gt: pd.DataFrame, pred: pd.DataFrame, ids: list[str], settings
) -> tuple[dict, object]:
    result = evaluate(gt, pred, coco_standard=False)
    row = {"dataset": dataset, "model": model, "f1": result.fscore}
    row.update(
        pair_statistics(
            dataset=dataset,
            image_ids=ids,
            ground_truth=gt,
            predictions=pred,
            result=result,
            settings=settings,
        )
    )
    return row, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    settings = StatisticsSettings()

    from vlm_gist_dagster.datasets import load_dataset

    coco_images, coco_gt = synthetic_coco(args.images, seed=0)
    vlm = load_dataset(DATASET_DIRS["vlm_gist"])
    datasets = {
        "coco": (sorted(coco_images["image_id"]), coco_gt),
        "vlm_gist": (sorted(vlm.images["image_id"]), vlm.ground_truth.drop(columns="mask")),
    }

    print(f"Machine: {machine()}\n", flush=True)
    rows: dict[str, list[dict]] = {}
    results: dict[str, list] = {}
    t_rows = time.perf_counter()
    for name, (ids, gt) in datasets.items():
        rows[name], results[name] = [], []
        for k in range(args.models):
            pred = model_predictions(gt, k, args.models)
            row, result = metrics_row(name, f"model_{k:02d}", gt, pred, ids, settings)
            rows[name].append(row)
            results[name].append((len(pred), result))
    t_rows = time.perf_counter() - t_rows

    # 1. Bootstrap of one pair
    table = []
    for name, (ids, gt) in datasets.items():
        sizes = [n for n, _ in results[name]]
        for label, k in (
            ("median model", int(np.argsort(sizes)[len(sizes) // 2])),
            ("largest model", int(np.argmax(sizes))),
        ):
            n_pred, result = results[name][k]
            times = [bootstrap_once(result, ids, settings, name) for _ in range(args.repeat)]
            table.append([
                f"{name} ({len(ids)} images, {len(gt):,} GT)", label, f"{n_pred:,}", f"{len(result.sweep.threshold):,}",
                f"{settings.bootstrap_resamples:,}", f"{statistics.median(times):.3f} s",
            ])  # fmt: skip
    print("### Bootstrap of one pair (target < 2 s for the 500-image subset)\n")
    print(
        markdown_table(
            ["dataset", "model", "predictions", "sweep entries", "resamples", "time (median)"], table
        )
    )

    # 2. Paired tests, ranks and groups of the leaderboard
    table = []
    total = 0.0
    names = [r["model"] for r in rows["coco"]]
    for label, per_dataset, weights in (
        ("coco", [rows["coco"]], [1.0]),
        ("vlm_gist", [rows["vlm_gist"]], [1.0]),
        ("weighted", [rows["coco"], rows["vlm_gist"]], [0.5, 0.5]),
    ):
        t0 = time.perf_counter()
        stats = table_statistics(label, per_dataset, weights, names, settings)
        elapsed = time.perf_counter() - t0
        total += elapsed
        pairs = len(stats.pairwise)
        table.append([
            label, args.models, f"{pairs:,}", f"{int(stats.pairwise['permutations'].iloc[0]):,}",
            int(stats.pairwise["significant"].sum()),
            f"{(stats.columns['rank_high'] - stats.columns['rank_low'] + 1).astype(float).mean():.1f}",
            len(set("".join(stats.columns["group"]))), f"{elapsed:.1f} s",
        ])  # fmt: skip
    print(f"\n### Paired tests, rank ranges and groups: {args.models} models x 2 datasets (target < 60 s)\n")
    print(markdown_table(
        ["table", "models", "pairs", "permutations per pair", "significant (Holm)", "mean rank-range width",
         "letters", "time"], table,
    ))  # fmt: skip
    print(
        f"\nAll three tables: {total:.1f} s. (Making the {2 * args.models} metrics rows, evaluation included: {t_rows:.0f} s, not timed above.)"
    )


if __name__ == "__main__":
    main()
