"""Parquet storage for every asset: ``<base>/<asset>/<dataset>.parquet`` for per-dataset assets,
``<base>/<asset>/<dataset>/<model>.parquet`` for per-pair assets, ``<base>/<asset>.parquet`` otherwise.

The base path is a UPath, so ``s3://bucket/prefix`` works through fsspec. Local writes are atomic (temp
file in the same directory, then ``os.replace``): a crash never leaves a half-written Parquet file that a
later run would read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dagster._core.storage.upath_io_manager import escape_dotdot_segments, is_dict_type
from upath import UPath

from .. import paths
from ..files import atomic_path


def _is_local(path: UPath) -> bool:
    return getattr(path, "protocol", "") in ("", "file", "local")


def write_parquet(df: pd.DataFrame, path: UPath | Path | str) -> None:
    """Write ``df`` to ``path`` atomically where the filesystem allows it."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    upath = UPath(path)
    if _is_local(upath):
        with atomic_path(upath.path) as temporary:
            pq.write_table(table, temporary)
    else:  # object stores: a single PUT is already all-or-nothing
        with upath.open("wb") as f:
            pq.write_table(table, f)


def read_parquet(path: UPath | Path | str) -> pd.DataFrame:
    """Read a Parquet file; nested columns (RLE masks, lists) come back as plain Python objects, so a
    frame read back equals the frame written."""
    upath = UPath(path)
    if _is_local(upath):
        table = pq.read_table(upath.path)
    else:
        with upath.open("rb") as f:
            table = pq.read_table(f)
    df = table.to_pandas()
    for name, column in zip(table.column_names, table.columns):
        if (
            pa.types.is_struct(column.type)
            or pa.types.is_list(column.type)
            or pa.types.is_large_list(column.type)
        ):
            df[name] = pd.Series(column.to_pylist(), index=df.index, dtype=object)
    return df


class ParquetIOManager(dg.UPathIOManager):
    extension = ".parquet"

    def make_safe_partition_path(self, base_path: UPath, partition: str) -> UPath:
        return base_path / escape_dotdot_segments(partition.lstrip("/"))

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: the Parquet IO manager stores DataFrames, got {type(obj).__name__}"
            )
        write_parquet(obj, path)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        return read_parquet(path)

    def load_partitions(self, context: dg.InputContext) -> Any:
        # Dagster returns the bare object when exactly one upstream partition is mapped (dagster#28942);
        # an input annotated as a dict always gets a dict keyed by partition key.
        loaded = super().load_partitions(context)
        if is_dict_type(context.dagster_type.typing_type) and not isinstance(loaded, dict):
            return {context.asset_partition_keys[0]: loaded}
        return loaded

    def get_metadata(self, context: dg.OutputContext, obj: Any) -> dict[str, Any]:
        if isinstance(obj, pd.DataFrame):
            return {"dagster/row_count": len(obj)}
        return {}


class ParquetIOManagerFactory(dg.ConfigurableIOManagerFactory):
    """Parquet IO manager. ``base_path`` defaults to ``$VLM_GIST_ASSETS_DIR`` or ``data/assets``."""

    base_path: str | None = None

    def create_io_manager(self, context: dg.InitResourceContext) -> ParquetIOManager:
        return ParquetIOManager(base_path=UPath(self.base_path or paths.assets_dir()))
