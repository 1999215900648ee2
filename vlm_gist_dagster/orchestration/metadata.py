"""Materialisation metadata helpers: previews and summaries users look at in the Dagster UI."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg
import pandas as pd

#: Metadata key under which ``descriptions`` records the sha256 of the model settings file it used (the
#: nightly schedule compares it with the file's current hash).
SETTINGS_SHA_KEY = "settings_sha256"

#: Columns whose values are too large to show in a preview (masks, raw completions).
_BULKY = ("mask", "masks", "raw", "completion")


def preview(df: pd.DataFrame, rows: int = 10, drop: Iterable[str] = ()) -> dg.MetadataValue:
    """The first rows as a Markdown table, bulky columns shortened."""
    head = df.head(rows).drop(columns=[c for c in drop if c in df.columns]).copy()
    for column in head.columns:
        if any(b in column for b in _BULKY) or head[column].dtype == object:
            head[column] = head[column].map(_short)
    return dg.MetadataValue.md(head.to_markdown(index=False) if len(head) else "_(empty)_")


def finite(value: Any) -> float | None:
    """A float for metadata (None when NaN/None).

    >>> finite("0.5"), finite(float("nan")), finite(None)
    (0.5, None, None)
    """
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _short(value: Any, limit: int = 60) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, Mapping) and "counts" in value and "size" in value:
        return f"RLE {list(value['size'])}"
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def column_schema(df: pd.DataFrame, descriptions: Mapping[str, str] | None = None) -> dg.TableSchema:
    descriptions = descriptions or {}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=str(c), type=str(df[c].dtype), description=descriptions.get(str(c)))
            for c in df.columns
        ]
    )


def counts_table(counts: Mapping[str, int | float], key: str, value: str) -> dg.MetadataValue:
    lines = [f"| {key} | {value} |", "| --- | ---: |"] + [f"| {k} | {v} |" for k, v in counts.items()]
    return dg.MetadataValue.md("\n".join(lines))


def _column_type(series: pd.Series) -> str:
    """The Dagster column type (``TableColumn.type``) of a frame column."""
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "string"


def _cell(value: Any, kind: str, digits: int | None) -> str | int | float | bool | None:
    if value is None or (not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(value)
    if kind == "float":
        return round(float(value), digits) if digits is not None else float(value)
    return str(value)


def frame_table(
    df: pd.DataFrame,
    descriptions: Mapping[str, str] | None = None,
    *,
    types: Mapping[str, str] | None = None,
    digits: int | None = 4,
) -> dg.TableMetadataValue:
    """``df`` as Dagster table metadata (``MetadataValue.table``): one record per row, typed columns
    (``types`` overrides the type read from the dtype: ``"int"`` for a float column holding ranks), NaN as
    null, floats rounded to ``digits`` so that the UI's cells stay narrow.

    >>> table = frame_table(pd.DataFrame({"name": ["a"], "f1": [0.123456], "rank": [1.0]}), types={"rank": "int"})
    >>> [(c.name, c.type) for c in table.schema.columns], table.records[0].data
    ([('name', 'string'), ('f1', 'float'), ('rank', 'int')], {'name': 'a', 'f1': 0.1235, 'rank': 1})
    """
    descriptions = descriptions or {}
    kinds = {str(c): (types or {}).get(str(c)) or _column_type(df[c]) for c in df.columns}
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name=c, type=kinds[c], description=descriptions.get(c)) for c in kinds]
    )
    records = [
        dg.TableRecord({str(c): _cell(v, kinds[str(c)], digits) for c, v in row.items()})
        for row in df.to_dict("records")
    ]
    return dg.MetadataValue.table(records=records, schema=schema)
