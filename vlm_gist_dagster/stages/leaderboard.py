"""The leaderboard: the paper's per-dataset and weighted tables from the ``metrics`` rows of every
(dataset, model) pair, written in the paper's text format, as Markdown, as PNG renderings and with plots
(spec/evaluation.md §3, §4)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..datasets.provenance import SHORT_TITLES
from ..datasets.provenance import heading as dataset_heading
from ..protocol.leaderboard import COLUMNS, format_markdown, format_table, render_png, sort_rows, weighted

#: The weights of the paper's weighted table (COCO and VLM-GIST, 0.5 each).
DEFAULT_WEIGHTS: Mapping[str, float] = {"coco": 0.5, "vlm_gist": 0.5}
#: The datasets in the paper's table order, with their short names.
DATASET_TITLES: Mapping[str, str] = {"coco": SHORT_TITLES["coco"], "vlm_gist": SHORT_TITLES["vlm_gist"]}


@dataclass
class Leaderboard:
    rows: pd.DataFrame  # one row per (table, model): table, name + the nine columns + extras
    texts: dict[str, str] = field(default_factory=dict)  # table → paper-format text
    markdown: str = ""
    missing: list[str] = field(default_factory=list)  # "dataset|model" pairs without metrics
    #: Table → heading naming the data actually used ("COCO, local copy coco_val2017_32: 32 images").
    headings: dict[str, str] = field(default_factory=dict)


def row_name(metrics_row: Mapping) -> str:
    """The display name; simulated models are always labelled as such."""
    name = str(metrics_row.get("display_name") or metrics_row["model"])
    if metrics_row.get("simulated") and "simulat" not in name.lower():
        name += " (simulated)"
    return name


def default_headings(frame: pd.DataFrame) -> dict[str, str]:
    """Headings from the metrics rows alone: the dataset's short name and the number of images its
    metrics were computed on (several counts, when pairs were computed on different copies)."""
    out: dict[str, str] = {}
    for dataset in dict.fromkeys(frame.get("dataset", [])):
        values = frame.loc[frame["dataset"] == dataset, "num_images"] if "num_images" in frame else []
        counts = sorted({int(n) for n in pd.Series(values, dtype=float).dropna()})
        title = DATASET_TITLES.get(dataset, dataset)
        if len(counts) == 1:
            out[dataset] = dataset_heading(dataset, images=counts[0], root=None, provenance=None)
        elif counts:
            out[dataset] = f"{title}: {' / '.join(map(str, counts))} images (pairs computed on different copies)"
        else:
            out[dataset] = title
    return out


def weighted_heading(weights: Mapping[str, float]) -> str:
    """ "Weighted: 0.5 COCO + 0.5 VLM-GIST" (the datasets' own headings say which copies)."""
    total = sum(weights.values()) or 1.0
    return "Weighted: " + " + ".join(f"{weights[d] / total:g} {DATASET_TITLES.get(d, d)}" for d in weights)


def build_leaderboard(
    metrics: Sequence[pd.DataFrame] | pd.DataFrame,
    *,
    expected_pairs: Sequence[str] = (),
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    headings: Mapping[str, str] | None = None,
) -> Leaderboard:
    """The tables from every pair's metrics rows. ``headings`` (dataset → heading) name the data used,
    e.g. from the dataset assets' metadata; missing ones are derived from the rows' image counts."""
    frame = (
        metrics
        if isinstance(metrics, pd.DataFrame)
        else (pd.concat(list(metrics), ignore_index=True) if len(metrics) else pd.DataFrame())
    )
    have = {f"{d}|{m}" for d, m in zip(frame.get("dataset", []), frame.get("model", []))}
    missing = sorted(set(expected_pairs) - have)
    tables: dict[str, list[dict]] = {}
    for dataset in [d for d in DATASET_TITLES if d in set(frame.get("dataset", []))] + sorted(
        set(frame.get("dataset", [])) - set(DATASET_TITLES)
    ):
        sub = frame[frame["dataset"] == dataset]
        tables[dataset] = [
            {"name": row_name(r), "model": r["model"], **{k: float(r[k]) for k in COLUMNS}}
            for r in sub.to_dict("records")
        ]
    if set(weights) <= set(tables) and tables:
        tables["weighted"] = weighted({d: tables[d] for d in weights}, dict(weights))
        by_name = {r["name"]: r["model"] for d in weights for r in tables[d]}
        for r in tables["weighted"]:
            r["model"] = by_name.get(r["name"])
    texts = {name: format_table(rows) for name, rows in tables.items() if rows}
    titles = {**default_headings(frame), **(headings or {})}
    if "weighted" in tables:
        titles["weighted"] = weighted_heading(weights)
    titles = {name: titles.get(name, name) for name in tables}
    markdown = []
    for name, rows in tables.items():
        if rows:
            markdown.append(f"### {titles[name]}\n\n{format_markdown(rows)}\n")
    if missing:
        markdown.append("Missing (no metrics yet, or failed): " + ", ".join(f"`{p}`" for p in missing) + "\n")
    records = [
        {"table": name, "rank": i + 1, **row}
        for name, rows in tables.items()
        for i, row in enumerate(sort_rows(rows))
    ]
    out = pd.DataFrame(records, columns=["table", "rank", "name", "model", *COLUMNS])
    return Leaderboard(rows=out, texts=texts, markdown="\n".join(markdown), missing=missing, headings=titles)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def plot_files(board: Leaderboard, directory: Path) -> dict[str, Path]:
    """F1 per model, precision vs recall, F1 vs median time (one PNG each, a panel per table)."""
    from .plots import write_plots

    return write_plots(board.rows, board.headings, directory)


def write_leaderboard(board: Leaderboard, directory: Path) -> dict[str, Path]:
    """``<table>.txt`` in the paper's format (no trailing newline, like the published files), PNG
    renderings of them, ``leaderboard.md``, ``leaderboard.csv`` and the plots."""
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, text in board.texts.items():
        path = directory / f"{name}.txt"
        _atomic_text(path, text)
        written[f"{name}.txt"] = path
        written[f"{name}.png"] = render_png(text, directory / f"{name}.png")
    md = directory / "leaderboard.md"
    _atomic_text(md, "# Leaderboard\n\n" + board.markdown)
    written["leaderboard.md"] = md
    csv = directory / "leaderboard.csv"
    board.rows.to_csv(csv, index=False)
    written["leaderboard.csv"] = csv
    for key, path in plot_files(board, directory).items():
        written[key] = path
    return written
