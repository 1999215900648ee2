"""The paper's result tables: number formatting, the fixed-width text table, the weighted table,
plus a Markdown version and the PNG rendering's image (docs/protocol/evaluation.md §3, §4; gotchas 17-19).

A row is a mapping with the keys ``name, f1, rec, prec, map, ins, mat, time, fail, ret`` holding
*unrounded* values (NaN allowed); rounding happens only when printing.

>>> row = {"name": "Gemini 2.5 Pro (high)", "f1": 0.5405, "rec": 0.489, "prec": 0.606, "map": 0.338,
...        "ins": 11.4, "mat": 0.5, "time": 14.45, "fail": float("nan"), "ret": float("nan")}
>>> print(format_table([row]).splitlines()[2])
Gemini 2.5 Pro (high) | 0.541 | 0.489 | 0.606 | 0.338 || 11.4 | 0.50 |  14.5s ||  nan |  nan
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "COLUMNS",
    "COLUMN_FORMATS",
    "COLUMN_TITLES",
    "format_markdown",
    "format_number",
    "format_table",
    "make_row",
    "render_table_image",
    "sort_rows",
    "weighted",
]

#: The nine value columns in table order.
COLUMNS: tuple[str, ...] = ("f1", "rec", "prec", "map", "ins", "mat", "time", "fail", "ret")
#: ``(integers, decimals)`` per column, as the notebook calls ``format_number`` (docs/protocol/evaluation.md §2.10).
COLUMN_FORMATS: dict[str, tuple[int, int]] = {
    "f1": (1, 3), "rec": (1, 3), "prec": (1, 3), "map": (1, 3),
    "ins": (2, 1), "mat": (1, 2), "time": (3, 1), "fail": (1, 2), "ret": (1, 2),
}  # fmt: skip
#: Column titles of the Markdown table (the text header is fixed, see ``_HEADER_TAIL``).
COLUMN_TITLES: dict[str, str] = {
    "f1": "F1", "rec": "Rec.", "prec": "Prec.", "map": "mAP", "ins": "Ins.", "mat": "Mat.",
    "time": "Time", "fail": "Fail", "ret": "Ret.",
}  # fmt: skip
_HEADER_TAIL = " |  F1   |  Rec. | Prec. |  mAP  || Ins. | Mat. |  Time  || Fail | Ret."

# Console highlighting as in the notebook: best bold blue, worst bold red; Mat. never.
_BOLD, _BLUE, _RED, _END = "\x1b[1m", "\x1b[94m", "\x1b[91m", "\x1b[0m"
_BEST_IS_MAX = {
    "f1": True,
    "rec": True,
    "prec": True,
    "map": True,
    "ins": True,
    "time": False,
    "fail": False,
    "ret": False,
}


def format_number(x: float, integers: int, decimals: int) -> str:
    """nimbro_utils ``format_number(x, integers, decimals, signed=False)`` (docs/protocol/evaluation.md §4, gotcha 18).

    Rounds half-up on the *shortest repr* (``Decimal(str(x))``), not on the binary value, and
    right-aligns to width ``integers + 1 + decimals`` (``integers`` when ``decimals == 0``). NaN is the
    literal ``nan`` right-aligned (``inf`` likewise). Negative numbers, and numbers with more than
    ``integers`` integer digits after rounding, raise ``ValueError``.

    >>> format_number(0.5405, 1, 3), format_number(14.45, 3, 1), format_number(0.125, 1, 2)
    ('0.541', ' 14.5', '0.13')
    >>> format_number(float("nan"), 1, 2)
    ' nan'
    """
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"expected a real number, got {type(x).__name__}: {x!r}")
    if not isinstance(integers, int) or integers <= 0:
        raise ValueError(f"integers must be a positive int, got {integers!r}")
    if not isinstance(decimals, int) or decimals < 0:
        raise ValueError(f"decimals must be a non-negative int, got {decimals!r}")
    # Plain Python numbers, so that str() is the shortest repr (np.float32 would print differently).
    value: float | int = int(x) if isinstance(x, numbers.Integral) else float(x)
    if value < 0:
        raise ValueError(f"format_number is unsigned: got negative value {value!r}")
    width = integers + 1 + decimals if decimals > 0 else integers
    if isinstance(value, float) and math.isnan(value):
        text = "nan"
    elif isinstance(value, float) and math.isinf(value):
        text = "inf"
    else:
        # abs() as in the reference, so that -0.0 prints like 0.0.
        rounded = abs(Decimal(str(value))).quantize(Decimal(10) ** -decimals, rounding=ROUND_HALF_UP)
        if rounded >= Decimal(10) ** integers:
            raise ValueError(f"{value!r} rounds to {rounded}, more than {integers} integer digit(s)")
        text = format(rounded, f".{decimals}f") if decimals > 0 else str(int(rounded))
    return f"{text:>{width}}"


def _value(row: Mapping[str, Any], key: str) -> float:
    v = row[key]
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"row {row.get('name')!r}: column {key!r} must be a number, got {v!r}")
    return float(v)


def _check_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    names = set()
    for i, row in enumerate(rows):
        missing = [k for k in ("name", *COLUMNS) if k not in row]
        if missing:
            raise ValueError(f"row {i} ({row.get('name')!r}): missing key(s) {missing}")
        if not isinstance(row["name"], str):
            raise TypeError(f"row {i}: 'name' must be a string, got {row['name']!r}")
        if row["name"] in names:
            raise ValueError(f"row {i}: duplicate model name {row['name']!r}")
        names.add(row["name"])


def sort_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows by *unrounded* F1, highest first (docs/protocol/evaluation.md gotcha 19). The notebook uses ``np.argsort(-f1)`` whose
    tie order is unspecified; we sort stably (equal F1 keeps the input order) and put NaN last, as
    argsort does."""

    def key(row: Mapping[str, Any]) -> tuple[bool, float]:
        f1 = _value(row, "f1")
        return (True, 0.0) if math.isnan(f1) else (False, -f1)

    return sorted(rows, key=key)


def _cells(row: Mapping[str, Any]) -> dict[str, str]:
    cells = {k: format_number(_value(row, k), *COLUMN_FORMATS[k]) for k in COLUMNS}
    cells["time"] += "s"
    return cells


def _extremes(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[float | None, float | None]:
    """(best, worst) unrounded value of a column, or (None, None) for an all-NaN column."""
    values = np.array([_value(r, key) for r in rows], dtype=np.float64)
    if values.size == 0 or np.isnan(values).all():
        return None, None
    hi, lo = float(np.nanmax(values)), float(np.nanmin(values))
    return (hi, lo) if _BEST_IS_MAX[key] else (lo, hi)


def format_table(rows: Sequence[Mapping[str, Any]], *, highlight: bool = False) -> str:
    """The paper's text table (docs/protocol/evaluation.md §4), without a trailing newline (the published ``.txt`` files have
    none).

    Header ``"Model" + (longest - 5) spaces + " |  F1   |  Rec. | ..."``, a rule of ``len(header)``
    dashes, then one row per model sorted by ``sort_rows``: the name left-justified to the longest
    name, then ``" | F1 | Rec | Prec | mAP || Ins | Mat | Time || Fail | Ret"`` with ``format_number``
    cells (99 characters per line for a 28-character longest name).

    ``highlight=True`` adds the notebook's console colours (ANSI): per column the best value bold
    blue, else the worst bold red, compared on unrounded values (all ties highlighted); Mat. never.
    Files must be written without it.
    """
    _check_rows(rows)
    longest = max((len(r["name"]) for r in rows), default=0)
    header = "Model" + " " * (longest - len("model")) + _HEADER_TAIL
    lines = [header, "-" * len(header)]
    extremes = {k: _extremes(rows, k) for k in _BEST_IS_MAX} if highlight else {}
    for row in sort_rows(rows):
        cells = _cells(row)
        for key, (best, worst) in extremes.items():
            if best is None:
                continue
            v = _value(row, key)
            if v == best:
                cells[key] = f"{_BOLD}{_BLUE}{cells[key]}{_END}"
            elif v == worst:
                cells[key] = f"{_BOLD}{_RED}{cells[key]}{_END}"
        name = row["name"] + " " * (longest - len(row["name"]))
        lines.append(
            f"{name} | {cells['f1']} | {cells['rec']} | {cells['prec']} | {cells['map']} || "
            f"{cells['ins']} | {cells['mat']} | {cells['time']} || {cells['fail']} | {cells['ret']}"
        )
    return "\n".join(lines)


def format_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The same table as GitHub Markdown (same order, same rounding; numbers right-aligned). A value
    that does not exist (NaN: a baseline's description time, an unavailable mAP) is an empty cell, not
    the text table's ``nan`` (``nans`` in the Time column).

    >>> print(format_markdown([{"name": "M", "f1": 0.5, "rec": 0.5, "prec": 0.5, "map": float("nan"),
    ...                          "ins": 3, "mat": 1, "time": float("nan"), "fail": 0, "ret": 0}]))
    | Model | F1 | Rec. | Prec. | mAP | Ins. | Mat. | Time | Fail | Ret. |
    |:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|
    | M | 0.500 | 0.500 | 0.500 |  | 3.0 | 1.00 |  | 0.00 | 0.00 |
    """
    _check_rows(rows)
    lines = [
        "| Model | " + " | ".join(COLUMN_TITLES[k] for k in COLUMNS) + " |",
        "|:--|" + "--:|" * len(COLUMNS),
    ]
    for row in sort_rows(rows):
        cells = {k: "" if math.isnan(_value(row, k)) else v.strip() for k, v in _cells(row).items()}
        name = row["name"].replace("|", "\\|")
        lines.append(f"| {name} | " + " | ".join(cells[k] for k in COLUMNS) + " |")
    return "\n".join(lines)


def weighted(
    rows_by_dataset: Sequence[Sequence[Mapping[str, Any]]] | Mapping[str, Sequence[Mapping[str, Any]]],
    weights: Sequence[float] | Mapping[str, float],
) -> list[dict[str, Any]]:
    """The "Weighted" table's rows (docs/protocol/evaluation.md §3, gotcha 17).

    Models are those of the first dataset whose name occurs *exactly* (same string, trailing spaces
    included) in every other dataset, in the first dataset's order. Weights are normalised to sum 1.
    Every column is ``sum_j w_j * x_j`` over the unrounded per-dataset values, accumulated in dataset
    order from 0 as the notebook does: F1 is the mean of the F1s (not recomputed from P and R), Time
    a mean of medians, Mat. a mean of ratios; NaN in any dataset gives NaN.

    Both arguments may be sequences (parallel) or mappings keyed by dataset name (same keys; order
    of ``rows_by_dataset``).

    >>> a = [{"name": "M", "f1": 0.541, "rec": 0.5, "prec": 0.6, "map": 0.3, "ins": 11.0, "mat": 0.5,
    ...       "time": 14.0, "fail": 0.0, "ret": 0.1}]
    >>> b = [{**a[0], "f1": 0.460, "fail": float("nan")}]
    >>> w = weighted([a, b], [1, 1])[0]
    >>> round(w["f1"], 4), w["fail"]
    (0.5005, nan)
    """
    if isinstance(rows_by_dataset, Mapping):
        if not isinstance(weights, Mapping) or set(weights) != set(rows_by_dataset):
            raise ValueError(
                f"weights must be a mapping with the same datasets as rows_by_dataset ({list(rows_by_dataset)})"
            )
        datasets = list(rows_by_dataset)
        tables = [rows_by_dataset[d] for d in datasets]
        w = [float(weights[d]) for d in datasets]
    else:
        if isinstance(weights, Mapping):
            raise TypeError("weights must be a sequence when rows_by_dataset is a sequence")
        tables, w = list(rows_by_dataset), [float(x) for x in weights]
    if not tables:
        raise ValueError("no datasets given")
    if len(tables) != len(w):
        raise ValueError(f"{len(tables)} datasets but {len(w)} weights")
    if any(x < 0 or math.isnan(x) for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {w}")
    total = sum(w)
    w = [x / total for x in w]
    by_name = []
    for t in tables:
        _check_rows(t)
        by_name.append({r["name"]: r for r in t})
    out: list[dict[str, Any]] = []
    for row in tables[0]:
        name = row["name"]
        if not all(name in other for other in by_name[1:]):
            continue
        combined: dict[str, Any] = {"name": name}
        for key in COLUMNS:
            acc = 0.0
            for table, wj in zip(by_name, w):
                acc += _value(table[name], key) * wj
            combined[key] = acc
        out.append(combined)
    return out


def make_row(name: str, metrics: Mapping[str, Any], columns: Any) -> dict[str, Any]:
    """A table row from an evaluation's ``EvaluationResult.performance_metrics()`` (the paper's
    ``evaluation.json`` block) and a ``columns.MetadataColumns``. A missing mAP (``None``) becomes NaN."""

    def num(v: Any) -> float:
        return math.nan if v is None else float(v)

    extra = columns.as_row() if hasattr(columns, "as_row") else dict(columns)
    return {
        "name": name,
        "f1": num(metrics["fscore"]),
        "rec": num(metrics["recall"]),
        "prec": num(metrics["precision"]),
        "map": num(metrics["mAP"]) if metrics.get("mAP_available", True) else math.nan,
        **{k: num(extra[k]) for k in ("ins", "mat", "time", "fail", "ret")},
    }


def render_table_image(text: str, font_file: str | os.PathLike[str]) -> Image.Image:
    """A table as the notebook's ``save_results`` renders it: white monospaced 22 pt text on a black
    canvas 1315 px wide and ``round(lines * 24.8)`` px high (1315x1414 for 57 lines), RGB. ANSI colour
    codes are stripped first. ``font_file`` is a TrueType file (the paper's is LiberationMono-Regular);
    a font too wide for 99 characters in 1315 px is shrunk until the longest line fits.

    >>> from vlm_gist_dagster.stages.leaderboard import table_font_file   # where the font is: not here
    >>> font = table_font_file()
    >>> render_table_image("Model |  F1\\n-----------\\nM     | 0.541", font).size   # round(3 * 24.8)
    (1315, 74)
    """
    plain = re.sub(r"\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])", "", text)
    lines = text.splitlines()
    height = round(len(lines) * 24.8)
    image = Image.new("RGB", (1315, max(height, 1)), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    size = 22
    font = ImageFont.truetype(os.fspath(font_file), size)
    longest = max(plain.splitlines(), key=len, default="")
    while size > 8 and font.getlength(longest) > 1315:
        size -= 1
        font = ImageFont.truetype(os.fspath(font_file), size)
    for i, line in enumerate(plain.splitlines()):
        draw.text((0, round(i * 24.8)), line, fill=(255, 255, 255), font=font)
    return image
