"""The leaderboard as the Dagster UI shows it (issue 18 item 2), read from the materialisation metadata
after a small simulated run (both datasets, two simulated VLMs) plus two pairs without metrics: one
whose run failed (a model partition without a settings file) and one never launched.

* one typed table per leaderboard table (COCO, VLM-GIST, weighted), every model in it, the per-dataset
  numbers those of the stored ``metrics`` rows;
* the paper-format text as a code block and as a file;
* the missing pairs with why: failed in which step, never launched;
* each ``metrics`` materialisation shows its row (the paper's columns with their intervals) and an
  interval table.
"""

from __future__ import annotations

import dagster as dg
import pytest

from vlm_gist_dagster.defs.partitions import pair_key

from ..deployment import run_job
from ..review.simulated_run import simulated_deployment

MODELS = ("sim_strong", "sim_weak")
DATASETS = ("vlm_gist", "coco")
FAILED = "coco|no_such_model"  # a model partition whose settings file does not exist
NEVER = "vlm_gist|no_such_model"


@pytest.fixture(scope="module")
def run(simulator, tmp_path_factory):
    deployment = simulated_deployment(tmp_path_factory.mktemp("leaderboard_ui"), DATASETS, MODELS)
    instance = deployment.instance()
    defs = deployment.definitions()
    instance.add_dynamic_partitions("models", ["no_such_model"])
    failed = defs.resolve_job_def("benchmark_pair_job").execute_in_process(
        partition_key=FAILED, instance=instance, raise_on_error=False
    )
    assert not failed.success
    run_job(defs, instance, "leaderboard_job")
    yield deployment, instance
    instance.dispose()


def latest(instance, asset: str, partition: str | None = None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None
        ),
        limit=1,
    ).records
    return records[0].asset_materialization.metadata


def test_one_typed_table_per_leaderboard_table_with_every_model(run):
    deployment, instance = run
    meta = latest(instance, "leaderboard")
    for table in ("coco", "vlm_gist", "weighted"):
        value = meta[f"table_{table}"].value
        types = {c.name: c.type for c in value.schema.columns}
        assert types["name"] == "string" and types["rank"] == "int" and types["rank_low"] == "int"
        assert all(
            types[c] == "float" for c in ("f1", "rec", "prec", "map", "ins", "time", "f1_low", "f1_high")
        )
        records = [r.data for r in value.records]
        assert sorted(r["model"] for r in records) == sorted(MODELS), table
        assert [r["rank"] for r in records] == [1, 2]
        assert records[0]["f1"] >= records[1]["f1"]
        if table == "weighted":
            continue
        for record in records:  # the numbers of the pair's stored metrics row (4 decimals in the UI)
            row = deployment.read("metrics", table, record["model"]).iloc[0]
            for column in ("f1", "prec", "rec", "map", "fail", "f1_low", "f1_high"):
                assert record[column] == pytest.approx(row[column], abs=1e-4), (table, column)
            assert record["f1_low"] <= record["f1"] <= record["f1_high"]


def test_paper_text_as_code_block_and_file(run):
    deployment, instance = run
    meta = latest(instance, "leaderboard")
    for table in ("coco", "vlm_gist", "weighted"):
        text = (deployment.leaderboard_dir / f"{table}.txt").read_text()
        assert meta[f"{table}_text"].value == f"```\n{text}\n```"
        assert meta[f"{table}_text_file"].value == str(deployment.leaderboard_dir / f"{table}.txt")
    for plot in ("f1", "precision_recall", "f1_time"):
        assert (
            meta[f"plot_{plot}"].value.startswith("![")
            and "data:image/png;base64," in meta[f"plot_{plot}"].value
        )


def test_missing_pairs_say_why(run):
    _, instance = run
    meta = latest(instance, "leaderboard")
    assert meta["missing_pairs"].value == sorted([FAILED, NEVER])
    rows = {r.data["pair"]: r.data for r in meta["missing_table"].value.records}
    assert rows[FAILED]["status"] == "failed"
    assert "failed in descriptions" in rows[FAILED]["reason"] and rows[FAILED]["run_id"]
    assert rows[NEVER] == {
        "pair": NEVER,
        "status": "not materialised",
        "reason": "never launched (materialise the partition)",
        "run_id": None,
    }
    text = meta["missing"].value
    assert text.startswith("2 of 6 pairs have no metrics")
    assert f"`{FAILED}`: run " in text and f"`{NEVER}`: never launched" in text


def test_each_metrics_materialisation_shows_its_row_with_intervals(run):
    deployment, instance = run
    for dataset in DATASETS:
        for model in MODELS:
            meta = latest(instance, "metrics", str(pair_key(dataset, model)))
            stored = deployment.read("metrics", dataset, model).iloc[0]
            (row,) = [r.data for r in meta["row"].value.records]
            columns = [c.name for c in meta["row"].value.schema.columns]
            assert columns[:4] == ["display_name", "f1", "f1_low", "f1_high"]
            for column in ("f1", "f1_low", "f1_high", "prec_low", "map_high", "ret"):
                assert row[column] == pytest.approx(stored[column], abs=1e-4), column
            assert (row["tp"], row["fp"], row["fn"]) == (stored["tp"], stored["fp"], stored["fn"])
            intervals = {r.data["metric"]: r.data for r in meta["intervals"].value.records}
            assert sorted(intervals) == ["f1", "map", "prec", "rec"]
            assert intervals["rec"]["low"] == pytest.approx(stored["rec_low"], abs=1e-4)
            assert intervals["rec"]["low"] <= intervals["rec"]["value"] <= intervals["rec"]["high"]
