"""The Parquet IO manager: paths per partition layout, atomic writes, equal reloads."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from vlm_gist_dagster.defs.io_manager import ParquetIOManagerFactory, read_parquet, write_parquet
from vlm_gist_dagster.defs.partitions import (
    InvalidModelKey,
    model_dataset_partitions,
    model_partitions,
    pair_key,
    split_pair_key,
    validate_model_key,
)


def test_round_trip_keeps_nested_masks(tmp_path):
    df = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "x": [0.1, 0.2],
            "mask": [{"size": [4, 5], "counts": "abc"}, None],
            "objects": [[{"object_name": "chair"}], []],
        }
    )
    write_parquet(df, tmp_path / "t.parquet")
    back = read_parquet(tmp_path / "t.parquet")
    assert back["mask"].tolist() == [{"size": [4, 5], "counts": "abc"}, None]
    assert back["objects"].tolist() == [[{"object_name": "chair"}], []]
    assert back["x"].tolist() == [0.1, 0.2]


def test_failed_write_leaves_the_old_file_and_no_temp_files(tmp_path, monkeypatch):
    """A writer that dies half-way (disk full, killed worker) leaves the old file as it was and removes
    its partial temporary file."""
    path = tmp_path / "t.parquet"
    write_parquet(pd.DataFrame({"a": [1]}), path)
    partial_files: list[Path] = []

    def write_half_then_fail(table, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        partial_files.append(Path(where))
        raise OSError("No space left on device")

    monkeypatch.setattr("vlm_gist_dagster.parquet.pq.write_table", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_parquet(pd.DataFrame({"a": [2]}), path)
    monkeypatch.undo()
    # the write reached the temporary file (so the cleanup branch ran), and that file is gone
    assert len(partial_files) == 1 and partial_files[0] != path and partial_files[0].parent == tmp_path
    assert not partial_files[0].exists()
    assert read_parquet(path)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_unconvertible_frame_is_refused_before_any_file_is_touched(tmp_path):
    path = tmp_path / "t.parquet"
    write_parquet(pd.DataFrame({"a": [1]}), path)
    with pytest.raises(Exception):
        write_parquet(pd.DataFrame({"a": [object()]}), path)  # pyarrow cannot convert this
    assert read_parquet(path)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


@pytest.mark.parametrize("key", ["gpt_5_high", "sim-strong", "qwen.3", "a"])
def test_valid_model_keys(key):
    assert validate_model_key(key) == key


@pytest.mark.parametrize("key", ["Qwen", "a|b", "a,b", "a/b", "", "..", "a b", "é"])
def test_invalid_model_keys(key):
    with pytest.raises(InvalidModelKey):
        validate_model_key(key)


def test_pair_keys_are_dataset_first():
    key = pair_key("coco", "gpt_5_high")
    assert str(key) == "coco|gpt_5_high"
    assert split_pair_key("coco|gpt_5_high") == ("coco", "gpt_5_high")
    assert split_pair_key(key) == ("coco", "gpt_5_high")
    with pytest.raises(ValueError):
        pair_key("imagenet", "m")


def test_per_pair_paths_and_dict_loading(tmp_path):
    """A per-pair asset lands at <asset>/<dataset>/<model>.parquet; an unpartitioned consumer gets a dict
    keyed by partition of the partitions that exist."""

    @dg.asset(partitions_def=model_dataset_partitions)
    def pair_table(context: dg.AssetExecutionContext) -> pd.DataFrame:
        dataset, model = split_pair_key(context.partition_key)
        return pd.DataFrame({"dataset": [dataset], "model": [model]})

    # the leaderboard's pattern: read whatever partitions exist
    @dg.asset(ins={"pair_table": dg.AssetIn(metadata={"allow_missing_partitions": True})})
    def summary(pair_table: dict[str, pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(pair_table.values(), ignore_index=True)

    io_manager = ParquetIOManagerFactory(base_path=str(tmp_path))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(model_partitions.name, ["m1"])
        result = dg.materialize(
            [pair_table, summary],
            selection=[pair_table],
            partition_key="coco|m1",
            instance=instance,
            resources={"io_manager": io_manager},
        )
        assert result.success
        assert (tmp_path / "pair_table" / "coco" / "m1.parquet").is_file()
        result = dg.materialize(
            [pair_table, summary],
            selection=[summary],
            instance=instance,
            resources={"io_manager": io_manager},
        )
        assert result.success
        assert read_parquet(tmp_path / "summary.parquet").to_dict("records") == [
            {"dataset": "coco", "model": "m1"}
        ]


def test_single_upstream_partition_still_loads_as_dict(tmp_path):
    """Dagster hands over the bare object when exactly one upstream partition is mapped (dagster#28942);
    an input annotated as a dict gets a dict anyway."""
    one = dg.StaticPartitionsDefinition(["only"])

    @dg.asset(partitions_def=one)
    def part() -> pd.DataFrame:
        return pd.DataFrame({"a": [1]})

    @dg.asset
    def combined(part: dict[str, pd.DataFrame]) -> pd.DataFrame:
        assert isinstance(part, dict) and list(part) == ["only"]
        return part["only"]

    resources = {"io_manager": ParquetIOManagerFactory(base_path=str(tmp_path))}
    with dg.instance_for_test() as instance:
        assert dg.materialize(
            [part, combined], selection=[part], partition_key="only", instance=instance, resources=resources
        ).success
        assert dg.materialize(
            [part, combined], selection=[combined], instance=instance, resources=resources
        ).success
