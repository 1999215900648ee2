"""The whole benchmark graph through Dagster, on the simulator: two simulated VLMs (sim_strong,
sim_medium) on both datasets, in-process on a temp instance, as ``vlm-gist run`` runs it.

* The leaderboard's rows and text files equal the paper's evaluation run directly on the stored Parquet
  files (``protocol.evaluation.evaluate`` + ``protocol.columns.metadata_columns``, with the glue written
  here from docs/protocol/evaluation.md, not taken from ``stages.metrics``), and one pair's P/R/F1/TP/FP/FN/mAP
  equal FiftyOne's ``evaluate_detections`` (the paper's evaluation) on the stored predictions.
* The leaderboard's files (paper-format text, Markdown, CSV, PNG renderings, plots) are written.
* A backfill over the two model partitions launched with the real CLI (``dagster job backfill``, no
  daemon: the instance uses the synchronous run launcher) makes one run per (dataset, model) partition,
  reproduces the tables and makes no model or vision call (everything comes from the response cache).
* A pair without metrics (a failed run) is listed as missing and does not stop the leaderboard.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from PIL import Image

from vlm_gist_dagster.protocol.columns import metadata_columns
from vlm_gist_dagster.protocol.evaluation import evaluate

from ..deployment import DATASETS, PAIR_ASSETS, Deployment, pair_keys, run_inputs, run_job

MODELS = ("sim_strong", "sim_medium")
DISPLAY = {"sim_strong": "Sim strong (simulated)", "sim_medium": "Sim medium (simulated)"}
COLUMNS = ("f1", "rec", "prec", "map", "ins", "mat", "time", "fail", "ret")
#: Per-pair columns that measure wall-clock time or say where a value came from (network or cache): they
#: differ between two runs of the same pair.
TIMING = {"duration_s", "attempt_log_json", "from_cache"}
#: Without a daemon: the default (not queued) run coordinator launches submitted runs at once, and the
#: synchronous run launcher executes them in the submitting process (the CLI).
DAGSTER_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
run_launcher:
  module: dagster._core.launcher.sync_in_memory_run_launcher
  class: SyncInMemoryRunLauncher
"""
#: The code location the CLI loads: the project's definitions with the in-process executor, so that each
#: run executes its seven steps in one process (the default multiprocess executor starts a Python process
#: per step, ~1.5 s each here, which is all this test would measure).
CODE_LOCATION = """\
import dagster as dg

from vlm_gist_dagster.definitions import build_definitions

defs = dg.Definitions.merge(build_definitions(), dg.Definitions(executor=dg.in_process_executor))
"""


@pytest.fixture(scope="module")
def full_run(simulator, tmp_path_factory):
    deployment = Deployment.create(tmp_path_factory.mktemp("full"), MODELS)
    (deployment.home / "dagster.yaml").write_text(DAGSTER_YAML)
    instance = deployment.instance()
    try:
        defs = deployment.definitions()
        instance.add_dynamic_partitions("models", list(MODELS))
        run_inputs(defs, instance)
        for key in pair_keys(MODELS):
            run_job(defs, instance, "benchmark_pair_job", key)
        run_job(defs, instance, "leaderboard_job")
        yield deployment, instance
    finally:
        instance.dispose()


def independent_metrics(deployment: Deployment, dataset: str, model: str) -> dict[str, float]:
    """The nine columns (and TP/FP/FN) from the stored Parquet files, as docs/protocol/evaluation.md §2 defines
    them: predictions = the label-matched detections, labelled with their dataset match (unmatched ones
    are dropped, docs/protocol/evaluation.md gotcha 1); Mat. counts accepted / rejected labels per label-matched image."""
    gt = deployment.read("ground_truth", dataset)
    descriptions = deployment.read("descriptions", dataset, model)
    detection_images = deployment.read("detection_images", dataset, model)
    matches = deployment.read("label_matches", dataset, model)
    matched = matches[matches["dataset_match"].notna()]
    predictions = pd.DataFrame(
        {
            "image_id": matched["image_id"],
            "label": matched["dataset_match"],
            "x": matched["x"],
            "y": matched["y"],
            "w": matched["w"],
            "h": matched["h"],
            "confidence": matched["confidence"],
        }
    ).reset_index(drop=True)
    result = evaluate(gt, predictions, coco_standard=False)
    considered = matches[~matches["skipped"].astype(bool)]
    per_image = (
        considered.assign(accepted=considered["dataset_match"].notna())
        .groupby("image_id")["accepted"]
        .agg(accepted="sum", total="size")
        .reset_index()
    )
    per_image["rejected"] = per_image["total"] - per_image["accepted"]
    per_image = per_image[["image_id", "accepted", "rejected"]]
    columns = metadata_columns(descriptions, detection_images, per_image)
    return {
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
    }


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def half_up(x: float, decimals: int) -> str:
    """The paper's rounding (nimbro_utils format_number): half-up on the shortest repr."""
    if math.isnan(x):
        return "nan"
    return str(Decimal(str(x)).quantize(Decimal(10) ** -decimals, rounding=ROUND_HALF_UP))


def parse_text_table(text: str) -> dict[str, list[str]]:
    """``name -> [F1, Rec, Prec, mAP, Ins, Mat, Time, Fail, Ret]`` cells of a paper-format table."""
    lines = text.splitlines()
    assert lines[0].startswith("Model") and set(lines[1]) == {"-"}, text
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.replace("||", "|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_every_pair_and_the_leaderboard_were_materialised(full_run):
    deployment, instance = full_run
    for asset in PAIR_ASSETS:
        materialised = instance.get_materialized_partitions(dg.AssetKey(asset))
        assert materialised == set(pair_keys(MODELS)), asset
        for dataset in DATASETS:
            for model in MODELS:
                assert (deployment.assets_dir / asset / dataset / f"{model}.parquet").is_file()
    assert (deployment.assets_dir / "leaderboard.parquet").is_file()
    # every image of each dataset has one descriptions row and one detection_images row
    for dataset in DATASETS:
        images = set(deployment.read("dataset_images", dataset)["image_id"])
        for model in MODELS:
            assert set(deployment.read("descriptions", dataset, model)["image_id"]) == images
            assert set(deployment.read("detection_images", dataset, model)["image_id"]) == images


def test_every_asset_publishes_its_column_schema(full_run):
    """Each materialisation carries ``dagster/column_schema``: the stored table's columns, in order."""
    deployment, instance = full_run
    stored = {
        **{asset: (asset, "coco", "sim_strong") for asset in PAIR_ASSETS},
        "dataset_images": ("dataset_images", "coco", None),
        "ground_truth": ("ground_truth", "coco", None),
        "detection_settings": ("detection_settings", None, None),
        "label_matching_settings": ("label_matching_settings", "coco", None),
        "leaderboard": ("leaderboard", None, None),
    }
    for asset, where in stored.items():
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event is not None, asset
        schema = event.asset_materialization.metadata.get("dagster/column_schema")
        assert schema is not None, f"{asset} publishes no column schema"
        columns = [c.name for c in schema.schema.columns]
        partition = event.asset_materialization.partition
        if partition is not None and "|" in partition:  # the latest pair: read that one
            where = (asset, *partition.split("|"))
        elif partition is not None:
            where = (asset, partition, None)
        assert columns == list(deployment.read(*where).columns), asset
        assert all(
            c.description for c in schema.schema.columns if asset not in ("dataset_images", "ground_truth")
        )


def test_leaderboard_equals_the_evaluation_run_on_the_stored_parquet(full_run):
    deployment, _ = full_run
    board = deployment.read("leaderboard")
    expected = {(d, m): independent_metrics(deployment, d, m) for d in DATASETS for m in MODELS}
    assert sorted(board["table"].unique()) == ["coco", "vlm_gist", "weighted"]
    for dataset in DATASETS:
        rows = board[board["table"] == dataset].set_index("model")
        assert sorted(rows.index) == sorted(MODELS)
        for model in MODELS:
            assert rows.loc[model, "name"] == DISPLAY[model]
            for column in COLUMNS:
                value = expected[dataset, model][column]
                assert same(rows.loc[model, column], value), (dataset, model, column)
        # ranks follow F1, best first
        ranked = rows.sort_values("rank")
        assert list(ranked["rank"]) == [1, 2]
        assert ranked["f1"].iloc[0] >= ranked["f1"].iloc[1]
    # Weighted table: 0.5 * COCO + 0.5 * VLM-GIST of every unrounded column (docs/protocol/pipeline.md §3)
    weighted = board[board["table"] == "weighted"].set_index("model")
    for model in MODELS:
        for column in COLUMNS:
            value = 0.5 * expected["coco", model][column] + 0.5 * expected["vlm_gist", model][column]
            assert same(weighted.loc[model, column], value), (model, column)
    # sanity of the simulated models: strong beats medium on both datasets (recall 0.92 vs 0.75)
    for dataset in DATASETS:
        assert expected[dataset, "sim_strong"]["f1"] > expected[dataset, "sim_medium"]["f1"]
        assert 0 < expected[dataset, "sim_medium"]["f1"] < 1


def test_metrics_rows_carry_tp_fp_fn_of_the_evaluation(full_run):
    deployment, _ = full_run
    for dataset in DATASETS:
        for model in MODELS:
            row = deployment.read("metrics", dataset, model).iloc[0]
            expected = independent_metrics(deployment, dataset, model)
            assert (row["tp"], row["fp"], row["fn"]) == (expected["tp"], expected["fp"], expected["fn"])
            assert row["num_images"] == len(deployment.read("dataset_images", dataset))
            assert row["dataset"] == dataset and row["model"] == model


def test_leaderboard_text_files_show_the_recomputed_numbers(full_run):
    deployment, _ = full_run
    expected = {(d, m): independent_metrics(deployment, d, m) for d in DATASETS for m in MODELS}
    formats = {"f1": 3, "rec": 3, "prec": 3, "map": 3, "ins": 1, "mat": 2, "time": 1, "fail": 2, "ret": 2}
    for table in ("coco", "vlm_gist", "weighted"):
        text = (deployment.leaderboard_dir / f"{table}.txt").read_text()
        rows = parse_text_table(text)
        assert sorted(rows) == sorted(DISPLAY.values())
        for model in MODELS:
            if table == "weighted":
                coco, vlm_gist = expected["coco", model], expected["vlm_gist", model]
                values = {c: 0.5 * coco[c] + 0.5 * vlm_gist[c] for c in COLUMNS}
            else:
                values = expected[table, model]
            cells = dict(zip(COLUMNS, rows[DISPLAY[model]]))
            for column, decimals in formats.items():
                shown = cells[column].removesuffix("s") if column == "time" else cells[column]
                assert shown == half_up(values[column], decimals), (table, model, column, cells)
        # rows in descending F1 order (docs/protocol/pipeline.md §4: the table is sorted by F1)
        f1s = [float(cells[0]) for cells in rows.values()]
        assert f1s == sorted(f1s, reverse=True)


def test_leaderboard_files_are_written(full_run):
    deployment, _ = full_run
    directory = deployment.leaderboard_dir
    for name in ("coco.txt", "vlm_gist.txt", "weighted.txt", "leaderboard.md", "leaderboard.csv"):
        assert (directory / name).stat().st_size > 0, name
    markdown = (directory / "leaderboard.md").read_text()
    # Headings name the data used: the tests' 32-image COCO copy is not the paper's 500-image subset.
    for title in (
        "### COCO, local copy coco_val2017_32: 32 images",
        "### VLM-GIST, local copy vlm_gist: 64 images",
        "### Weighted: 0.5 COCO + 0.5 VLM-GIST",
    ):
        assert title in markdown
    assert "COCO minival" not in markdown
    assert all(name in markdown for name in DISPLAY.values())
    assert "Missing" not in markdown  # all four pairs have metrics
    csv = pd.read_csv(directory / "leaderboard.csv")
    assert len(csv) == 3 * len(MODELS)
    pngs = ("coco", "vlm_gist", "weighted", "f1_per_model", "precision_recall", "f1_time")
    for png in (f"{name}.png" for name in pngs):
        with Image.open(directory / png) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 50, png


def test_one_pair_agrees_with_fiftyone_evaluate_detections(full_run):
    """P/R/F1, TP/FP/FN and mAP of coco|sim_medium (the weaker model: more FPs and FNs) from FiftyOne's
    ``evaluate_detections(method="coco", compute_mAP=True)`` on the stored GT and matched predictions."""
    import fiftyone as fo

    deployment, _ = full_run
    dataset_name, model = "coco", "sim_medium"
    images = deployment.read("dataset_images", dataset_name)
    gt = deployment.read("ground_truth", dataset_name)
    matches = deployment.read("label_matches", dataset_name, model)
    matched = matches[matches["dataset_match"].notna()]
    row = deployment.read("metrics", dataset_name, model).iloc[0]

    fo.config.show_progress_bars = False
    dataset = fo.Dataset()
    try:
        samples = []
        for image in images.itertuples():
            sample = fo.Sample(filepath=image.path)
            sample["ground_truth"] = fo.Detections(
                detections=[
                    fo.Detection(label=r.label, bounding_box=[r.x, r.y, r.w, r.h], iscrowd=int(r.iscrowd))
                    for r in gt[gt["image_id"] == image.image_id].itertuples()
                ]
            )
            sample["predictions"] = fo.Detections(
                detections=[
                    fo.Detection(
                        label=r.dataset_match, bounding_box=[r.x, r.y, r.w, r.h], confidence=r.confidence
                    )
                    for r in matched[matched["image_id"] == image.image_id].itertuples()
                ]
            )
            samples.append(sample)
        dataset.add_samples(samples)
        results = dataset.evaluate_detections(
            "predictions", gt_field="ground_truth", eval_key="eval", method="coco", compute_mAP=True
        )
        reference = results.metrics()
        tp, fp, fn = (int(dataset.sum(f"eval_{k}")) for k in ("tp", "fp", "fn"))
        reference_map = results.mAP()
    finally:
        dataset.delete()
    assert (row["tp"], row["fp"], row["fn"]) == (tp, fp, fn)
    assert fp > 0 and fn > 0  # the comparison is not vacuous
    assert row["prec"] == pytest.approx(reference["precision"], abs=1e-12)
    assert row["rec"] == pytest.approx(reference["recall"], abs=1e-12)
    assert row["f1"] == pytest.approx(reference["fscore"], abs=1e-12)
    assert row["map"] == pytest.approx(reference_map, abs=1e-12)


def test_statistics_in_the_metrics_metadata_and_the_leaderboard(full_run):
    """Not the paper's (issue 17): each pair's materialisation shows its bootstrap intervals and extra
    metrics (mask-based from the simulated SAM2 masks, class-agnostic, F1@[.5:.95]); the leaderboard's
    Markdown and CSV carry intervals, rank ranges and groups, next to the pairwise tests and the plot."""
    deployment, instance = full_run
    for key in pair_keys(MODELS):
        dataset, model = key.split("|")
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("metrics"), asset_partitions=[key]), limit=1
        ).records
        meta = records[0].asset_materialization.metadata
        row = deployment.read("metrics", dataset, model).iloc[0]
        for column in ("f1_low", "f1_high", "prec_low", "rec_high", "map_low", "map_high", "mask_f1",
                       "mask_map", "agnostic_f1", "f1_50_95"):  # fmt: skip
            assert meta[column].value == pytest.approx(row[column]), (key, column)
        assert row["f1_low"] < row["f1"] < row["f1_high"] and row["map_low"] < row["map"] < row["map_high"]
        assert row["mask_unavailable_reason"] is None and 0 < row["mask_f1"] <= 1
        # predictions whose image's SAM2 call failed (a one-pixel mask is a 500, as on the real server)
        # enter the mask metrics with an empty mask, counted here
        matches = deployment.read("label_matches", dataset, model)
        kept = matches[matches["dataset_match"].notna()]
        assert row["masks_missing"] == int(kept["mask"].isna().sum())
        assert row["f1_50_95"] < row["f1"] and row["agnostic_f1"] >= row["f1"] - 0.05
        assert len(row["image_ids"]) == row["num_images"] and len(row["bootstrap_f1"]) == 1000
        assert "F1 (95 % CI)" in meta["statistics"].value and meta["bootstrap_resamples"].value == 1000
    csv = pd.read_csv(deployment.leaderboard_dir / "leaderboard.csv")
    assert csv["rank_low"].notna().all() and csv["group"].notna().all()
    assert ((csv["f1_low"] <= csv["f1"]) & (csv["f1"] <= csv["f1_high"])).all()
    assert (csv["rank_low"] <= csv["rank"]).all() and (csv["rank"] <= csv["rank_high"]).all()
    markdown = (deployment.leaderboard_dir / "leaderboard.md").read_text()
    assert markdown.count("Uncertainty and extra metrics (not in the paper)") == 3
    pairwise = pd.read_csv(deployment.leaderboard_dir / "pairwise_f1.csv")
    assert sorted(pairwise["table"]) == ["coco", "vlm_gist", "weighted"]  # one pair per table
    with Image.open(deployment.leaderboard_dir / "f1_intervals.png") as image:
        assert image.format == "PNG"
    leaderboard = instance.fetch_materializations(dg.AssetKey("leaderboard"), limit=1).records[0]
    assert "plot_f1_intervals" in leaderboard.asset_materialization.metadata


def test_cli_backfill_over_two_model_partitions(full_run, simulator):
    """A user backfills both models from the command line (one run per (dataset, model) partition):

        dagster job backfill -m vlm_gist_dagster.definitions -j benchmark_pair_job \\
            --partitions "vlm_gist|sim_strong,coco|sim_strong,vlm_gist|sim_medium,coco|sim_medium" --noprompt

    With the default (not queued) run coordinator the CLI launches the runs itself (no daemon); this
    instance's synchronous run launcher executes them inside the CLI process. The code location is the
    project's definitions with the in-process executor (``CODE_LOCATION``). (``dg launch --job
    benchmark_pair_job --partition "coco|sim_strong"`` runs one partition.) The runs re-use the response
    cache of the first run: the simulator sees no chat, embeddings or vision inference request, and the
    tables are equal."""
    deployment, instance = full_run
    keys = pair_keys(MODELS)
    before = {(a, k): _pair_table(deployment, a, k) for a in PAIR_ASSETS for k in keys}
    mtimes = {k: _descriptions_file(deployment, k).stat().st_mtime_ns for k in keys}
    log_start = len(simulator.request_log)
    dagster_cli = Path(sys.executable).with_name("dagster")
    location = deployment.root / "code_location.py"
    location.write_text(CODE_LOCATION)
    completed = subprocess.run(
        [
            str(dagster_cli), "job", "backfill", "-f", str(location), "-j", "benchmark_pair_job",
            "--partitions", ",".join(keys), "--noprompt",
        ],
        env={**os.environ, **deployment.environ()},
        cwd=deployment.root,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    assert "Launched backfill job" in completed.stdout

    backfills = instance.get_backfills()
    assert len(backfills) == 1
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfills[0].backfill_id}))
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(keys)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [r.status for r in runs]
    assert all(r.job_name == "benchmark_pair_job" for r in runs)

    # the files were rewritten by the backfill and hold the same tables
    for key in keys:
        assert _descriptions_file(deployment, key).stat().st_mtime_ns > mtimes[key]
    for (asset, key), table in before.items():
        pd.testing.assert_frame_equal(_pair_table(deployment, asset, key), table, obj=f"{asset} {key}")
    # no new model work: only the vision servers' /status probes (none at all when the cache answers),
    # and SAM2 asked again for exactly the images whose masks failed: a mask one pixel wide is a 500 on the
    # real server (sim/sam2.py), and a failure is not cached, so a re-run tries it again
    records = simulator.request_log.snapshot()[log_start:]
    new = Counter((r.server, r.path) for r in records)
    work = ("/v1/chat/completions", "/v1/embeddings", "/infer", "/update")
    paid = {k: n for k, n in new.items() if k[1] in work}
    assert set(paid) <= {("sam2_realtime", "/update")}, new
    failed = {
        f"{key.split('|')[0]}/{image_id}"
        for key in keys
        for image_id in _pair_table(deployment, "masks", key).dropna(subset=["segmentation_error"])[
            "image_id"
        ]
    }
    assert {r.image_key for r in records if r.path == "/update"} == failed


def _descriptions_file(deployment: Deployment, key: str) -> Path:
    dataset, model = key.split("|")
    return deployment.assets_dir / "descriptions" / dataset / f"{model}.parquet"


def _pair_table(deployment: Deployment, asset: str, key: str) -> pd.DataFrame:
    dataset, model = key.split("|")
    table = deployment.read(asset, dataset, model)
    return table.drop(columns=[c for c in table.columns if c in TIMING])


@pytest.mark.parametrize("missing", [["coco|sim_medium"], pair_keys(MODELS)])
def test_leaderboard_lists_missing_pairs_and_ranks_the_others(full_run, tmp_path, missing):
    """A pair whose metrics are missing (its run failed) does not stop the leaderboard: it is listed as
    missing, the other pairs are ranked, and the weighted table keeps only models present on both
    datasets. With no metrics at all the leaderboard still materialises (and says so)."""
    from vlm_gist_dagster.definitions import build_definitions

    deployment, _ = full_run
    partial = Deployment.create(tmp_path / "partial", MODELS)
    for key in pair_keys(MODELS):
        if key not in missing:
            dataset, model = key.split("|")
            target = partial.assets_dir / "metrics" / dataset / f"{model}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(
                (deployment.assets_dir / "metrics" / dataset / f"{model}.parquet").read_bytes()
            )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", list(MODELS))
        result = dg.materialize(
            build_definitions().assets,
            selection=["leaderboard"],
            instance=instance,
            resources=partial.resources(),
        )
        assert result.success
        metadata = result.asset_materializations_for_node("leaderboard")[0].metadata
    assert metadata["missing_pairs"].value == sorted(missing)
    markdown = (partial.leaderboard_dir / "leaderboard.md").read_text()
    assert all(f"`{key}`" in markdown for key in missing)
    board = partial.read("leaderboard")
    present = {(t, m) for t, m in zip(board["table"], board["model"])}
    if len(missing) == 1:
        assert present == {
            ("vlm_gist", "sim_strong"),
            ("vlm_gist", "sim_medium"),
            ("coco", "sim_strong"),
            ("weighted", "sim_strong"),
        }
        full = deployment.read("leaderboard").set_index(["table", "model"])
        for row in board.itertuples():
            if row.table != "weighted":  # the per-dataset rows are the full run's
                assert row.f1 == full.loc[(row.table, row.model), "f1"]
        coco = parse_text_table((partial.leaderboard_dir / "coco.txt").read_text())
        assert coco.keys() == {DISPLAY["sim_strong"]}
    else:
        assert present == set()
        assert "no metrics yet" in metadata["tables"].value
