"""The leaderboard: the paper's per-dataset and weighted tables from the ``metrics`` rows of every
(dataset, model) pair, written in the paper's text format, as Markdown, as PNG renderings and with plots
(docs/protocol/evaluation.md §3, §4)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..datasets.provenance import SHORT_TITLES
from ..datasets.provenance import heading as dataset_heading
from ..files import atomic_path, atomic_write
from ..protocol.leaderboard import (
    COLUMNS,
    format_markdown,
    format_table,
    render_table_image,
    sort_rows,
    weighted,
)
from ..protocol.statistics import StatisticsSettings
from .statistics import leaderboard_statistics, plot_f1_intervals, statistics_markdown
from .tables import LEADERBOARD

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
    pairwise: pd.DataFrame = field(default_factory=pd.DataFrame)  # paired F1 tests, one row per pair
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
            out[dataset] = (
                f"{title}: {' / '.join(map(str, counts))} images (pairs computed on different copies)"
            )
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
    statistics: StatisticsSettings | None = None,
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
    # Not the paper's: intervals, paired tests, rank ranges, extra metrics (stages/statistics.py).
    stats = leaderboard_statistics(frame, tables, weights, statistics or StatisticsSettings())
    markdown = []
    for name, rows in tables.items():
        if rows:
            markdown.append(f"### {titles[name]}\n\n{format_markdown(rows)}\n")
            if name in stats:
                markdown.append(
                    f"Uncertainty and extra metrics (not in the paper):\n\n{statistics_markdown(rows, stats[name])}\n"
                )
    if missing:
        markdown.append("Missing (no metrics yet, or failed): " + ", ".join(f"`{p}`" for p in missing) + "\n")
    records = [
        {"table": name, "rank": i + 1, **row, **_statistics_of(stats, name, row.get("model"))}
        for name, rows in tables.items()
        for i, row in enumerate(sort_rows(rows))
    ]
    out = pd.DataFrame(records, columns=list(LEADERBOARD.names))
    pairwise = [s.pairwise for s in stats.values() if len(s.pairwise)]
    return Leaderboard(
        rows=out, texts=texts, markdown="\n".join(markdown), missing=missing, headings=titles,
        pairwise=pd.concat(pairwise, ignore_index=True) if pairwise else pd.DataFrame(),
    )  # fmt: skip


def _statistics_of(stats: Mapping, table: str, model: object) -> dict:
    """A leaderboard row's statistics columns (empty when the table has none for the model)."""
    table_stats = stats.get(table)
    if table_stats is None or model not in table_stats.columns.index:
        return {}
    return table_stats.columns.loc[model].to_dict()


#: The paper's table font, where Debian's fonts-liberation puts it.
LIBERATION_MONO = (
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationMono-Regular.ttf",
)


def table_font_file() -> str:
    """LiberationMono-Regular (the paper's font) when installed, else matplotlib's bundled DejaVu Sans
    Mono (a metric-compatible stand-in is not available everywhere)."""
    for candidate in LIBERATION_MONO:
        if os.path.isfile(candidate):
            return candidate
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSansMono.ttf")


def write_table_png(text: str, path: str | os.PathLike[str]) -> Path:
    """The table's PNG rendering (``protocol.leaderboard.render_table_image``), written atomically."""
    image = render_table_image(text, table_font_file())
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return Path(path)


def plot_files(board: Leaderboard, directory: Path) -> dict[str, Path]:
    """F1 per model, precision vs recall, F1 vs median time (one PNG each, a panel per table)."""
    from .plots import write_plots

    return write_plots(board.rows, board.headings, directory)


def write_leaderboard(board: Leaderboard, directory: Path) -> dict[str, Path]:
    """``<table>.txt`` in the paper's format (no trailing newline, like the published files), PNG
    renderings of them, ``leaderboard.md``, ``leaderboard.csv``, the plots, and (not the paper's)
    ``pairwise_f1.csv`` (the paired tests) and ``f1_intervals.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, text in board.texts.items():
        path = directory / f"{name}.txt"
        written[f"{name}.txt"] = atomic_write(path, text)
        written[f"{name}.png"] = write_table_png(text, directory / f"{name}.png")
    written["leaderboard.md"] = atomic_write(
        directory / "leaderboard.md", "# Leaderboard\n\n" + board.markdown
    )
    csv = directory / "leaderboard.csv"
    with atomic_path(csv) as temporary:
        board.rows.to_csv(temporary, index=False)
    written["leaderboard.csv"] = csv
    for key, path in plot_files(board, directory).items():
        written[key] = path
    if len(board.pairwise):
        pairwise = directory / "pairwise_f1.csv"
        with atomic_path(pairwise) as temporary:
            board.pairwise.to_csv(temporary, index=False)
        written["pairwise_f1.csv"] = pairwise
    intervals = plot_f1_intervals(board.rows, directory)
    if intervals is not None:
        written["f1_intervals"] = intervals
    return written
