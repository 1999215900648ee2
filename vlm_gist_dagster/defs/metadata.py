"""Materialisation metadata helpers: previews and summaries users look at in the Dagster UI."""

from __future__ import annotations

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
