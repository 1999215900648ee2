"""``review_dataset`` (issue 18 item 1): the FiftyOne review dataset as a per-dataset Dagster asset.

After a small simulated run (COCO sample, two simulated VLMs), materialising ``review_dataset[coco]``
builds ``vlm-gist-coco`` as ``vlm-gist review --no-launch`` does: its metadata names the models and the
sample count, its evaluation table holds FiftyOne's own TP/FP/FN (read back here from the FiftyOne
dataset, and equal to the stored ``metrics`` rows); the command and the asset share one incremental
state (a later build by either leaves unchanged models alone); nothing automates the asset.
"""

from __future__ import annotations

import dagster as dg
import pytest

from vlm_gist_dagster.cli import main
from vlm_gist_dagster.defs.io_manager import read_parquet
from vlm_gist_dagster.review import field_prefix

from .simulated_run import simulated_deployment

DATASET = "coco"
MODELS = ("sim_strong", "sim_weak")
NAME = f"vlm-gist-{DATASET}"


@pytest.fixture(scope="module")
def fiftyone():
    import fiftyone as fo

    fo.config.show_progress_bars = False
    if fo.dataset_exists(NAME):
        fo.delete_dataset(NAME)
    yield fo
    if fo.dataset_exists(NAME):
        fo.delete_dataset(NAME)


@pytest.fixture(scope="module")
def deployment(simulator, tmp_path_factory):
    return simulated_deployment(tmp_path_factory.mktemp("review_asset"), [DATASET], MODELS)


def materialize_review(deployment) -> dg.ExecuteInProcessResult:
    instance = deployment.instance()
    try:
        return dg.materialize(
            deployment.definitions().assets,
            selection=["review_dataset"],
            partition_key=DATASET,
            instance=instance,
            resources=deployment.resources(),
        )
    finally:
        instance.dispose()


def test_review_dataset_asset_builds_the_fiftyone_dataset_and_describes_it(deployment, fiftyone, capsys):
    result = materialize_review(deployment)
    assert result.success
    meta = result.asset_materializations_for_node("review_dataset")[0].metadata
    images = read_parquet(deployment.assets_dir / "dataset_images" / f"{DATASET}.parquet")
    assert meta["fiftyone_dataset"].value == NAME
    assert meta["samples"].value == len(images)
    assert meta["models"].value == list(MODELS)
    assert meta["models_built"].value == list(MODELS) and meta["models_unchanged"].value == []

    ds = fiftyone.load_dataset(NAME)
    assert len(ds) == len(images)
    records = {r.data["model"]: r.data for r in meta["evaluation"].value.records}
    assert sorted(records) == list(MODELS)
    types = {c.name: c.type for c in meta["evaluation"].value.schema.columns}
    assert (types["tp"], types["precision"], types["agrees_with_metrics"]) == ("int", "float", "bool")
    for model in MODELS:
        eval_key = f"eval_{field_prefix(model)}"
        assert ds.has_evaluation(eval_key)
        counts = tuple(int(ds.sum(f"{eval_key}_{t}")) for t in ("tp", "fp", "fn"))  # FiftyOne's own
        row = read_parquet(deployment.assets_dir / "metrics" / DATASET / f"{model}.parquet").iloc[0]
        assert counts == (row["tp"], row["fp"], row["fn"]) and counts[0] > 0
        record = records[model]
        assert (record["tp"], record["fp"], record["fn"]) == counts
        assert record["eval_key"] == eval_key and record["status"] == "built"
        assert record["agrees_with_metrics"] is True
        assert record["fscore"] == pytest.approx(row["f1"], abs=1e-12)

    # the command sees what the asset built: nothing to rebuild
    with deployment.activated():
        assert main(["review", "--dataset", DATASET, "--no-launch"]) == 0
    out = capsys.readouterr().out
    for model in MODELS:
        assert f"{model}" in out and "unchanged" in out.split(model, 1)[1].splitlines()[0], out

    # and a second materialisation leaves both alone
    again = materialize_review(deployment).asset_materializations_for_node("review_dataset")[0].metadata
    assert again["models_built"].value == [] and again["models_unchanged"].value == list(MODELS)


def test_review_dataset_is_per_dataset_reads_every_pair_and_is_not_automated():
    from vlm_gist_dagster.definitions import build_definitions

    graph = build_definitions().resolve_asset_graph()
    key = dg.AssetKey("review_dataset")
    node = graph.get(key)
    assert node.automation_condition is None
    assert sorted(node.partitions_def.get_partition_keys()) == ["coco", "vlm_gist"]
    parents = {k.to_user_string() for k in node.parent_keys}
    assert {"dataset_images", "ground_truth", "label_matches", "metrics", "masks"} <= parents
    # the pair partitions of one dataset (every model) feed that dataset's review
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", ["m1", "m2"])
        for parent in ("label_matches", "metrics"):
            parent_def = graph.get(dg.AssetKey(parent)).partitions_def
            mapped = graph.get_partition_mapping(
                key, dg.AssetKey(parent)
            ).get_upstream_mapped_partitions_result_for_partitions(
                node.partitions_def.subset_with_partition_keys(["coco"]),
                node.partitions_def,
                parent_def,
                dynamic_partitions_store=instance,
            )
            assert sorted(map(str, mapped.partitions_subset.get_partition_keys())) == ["coco|m1", "coco|m2"]
