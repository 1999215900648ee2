"""Parquet storage for every asset: ``<base>/<asset>/<dataset>.parquet`` for per-dataset assets,
``<base>/<asset>/<dataset>/<model>.parquet`` for per-pair assets, ``<base>/<asset>.parquet`` otherwise.

The base path is a UPath, so ``s3://bucket/prefix`` works through fsspec. Local writes are atomic (temp
file in the same directory, then ``os.replace``): a crash never leaves a half-written Parquet file that a
later run would read.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

import dagster as dg
import pandas as pd
from upath import UPath

from ..parquet import read_parquet, write_parquet

__all__ = ["ParquetIOManager", "ParquetIOManagerFactory", "read_parquet", "write_parquet"]


def _escape_parent_segments(partition: str) -> str:
    """A partition key as a relative path: a whole ``..`` segment becomes ``%2E%2E``, so a model named
    ``..`` cannot write above its asset's folder (``my..model`` stays as it is)."""
    return "/".join("%2E%2E" if part == ".." else part for part in partition.lstrip("/").split("/"))


def _is_dict_annotation(annotation: Any) -> bool:
    return annotation is dict or typing.get_origin(annotation) in (dict, Mapping)


class ParquetIOManager(dg.UPathIOManager):
    extension = ".parquet"

    @property
    def base_path(self) -> UPath:
        """Where the assets are stored (``review_dataset`` reads the pair assets from here, as
        ``vlm-gist review`` does)."""
        return self._base_path

    def make_safe_partition_path(self, base_path: UPath, partition: str) -> UPath:
        return base_path / _escape_parent_segments(partition)

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
        if _is_dict_annotation(context.dagster_type.typing_type) and not isinstance(loaded, dict):
            return {context.asset_partition_keys[0]: loaded}
        return loaded

    def get_metadata(self, context: dg.OutputContext, obj: Any) -> dict[str, Any]:
        if isinstance(obj, pd.DataFrame):
            return {"dagster/row_count": len(obj)}
        return {}


class ParquetIOManagerFactory(dg.ConfigurableIOManagerFactory):
    """Parquet IO manager under ``base_path`` (``$VLM_GIST_ASSETS_DIR``, default ``data/assets``: see
    ``defs.resources.resources_from_environment``)."""

    base_path: str

    def create_io_manager(self, context: dg.InitResourceContext) -> ParquetIOManager:
        return ParquetIOManager(base_path=UPath(self.base_path))
