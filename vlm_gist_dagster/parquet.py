"""Parquet files as the pipeline writes them: atomic local writes, object stores through UPath, and nested
columns (RLE masks, lists) read back as plain Python objects so a frame read back equals the frame written.

No Dagster here: the IO manager (``defs/io_manager.py``), the review and the tests all read assets with
:func:`read_parquet`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from .files import atomic_path

__all__ = ["read_parquet", "write_parquet"]


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
