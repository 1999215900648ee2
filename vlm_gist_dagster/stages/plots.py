"""The leaderboard's plots: F1 per model, precision vs recall, F1 vs median description time; one panel
per table (dataset), titled with the dataset actually used.

Point labels are placed so that they never overprint each other, a point or the axes frame (and so
are never cut off at the figure's edge): each label takes the first free spot next to its point, in
eight directions at growing distances, joined to its point by a thin line when it had to move away
(:func:`place_labels`). Twenty near-identical models still get twenty legible labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_path

#: The ``gid`` of every point label, so that tests (and users) can find them in a figure.
LABEL_GID = "model-label"
LABEL_FONTSIZE = 7
DPI = 100
#: Directions tried around a point, in order: (dx, dy) unit offsets and the label's alignment.
_DIRECTIONS: tuple[tuple[float, float, str, str], ...] = (
    (1, 0, "left", "center"),
    (-1, 0, "right", "center"),
    (0, 1, "center", "bottom"),
    (0, -1, "center", "top"),
    (1, 1, "left", "bottom"),
    (-1, 1, "right", "bottom"),
    (1, -1, "left", "top"),
    (-1, -1, "right", "top"),
)
#: Half the side of the square kept free around every point (pixels), about the marker's size.
_MARKER_HALF = 4.0
_GAP = 3.0


def _box_for(
    px: float, py: float, w: float, h: float, dx: float, dy: float, ha: str, va: str, r: float
) -> tuple[float, float, float, float]:
    """The label box (x0, y0, x1, y1) in pixels for a label ``r`` pixels from the point in direction
    (dx, dy), aligned by (ha, va) at its anchor."""
    norm = math.hypot(dx, dy)
    ax_, ay_ = px + dx / norm * r, py + dy / norm * r
    x0 = {"left": ax_, "right": ax_ - w, "center": ax_ - w / 2}[ha]
    y0 = {"bottom": ay_, "top": ay_ - h, "center": ay_ - h / 2}[va]
    return x0, y0, x0 + w, y0 + h


def _overlaps(box: tuple[float, float, float, float], boxes: np.ndarray) -> np.ndarray:
    if not len(boxes):
        return np.zeros(0, dtype=bool)
    return (box[0] < boxes[:, 2]) & (boxes[:, 0] < box[2]) & (box[1] < boxes[:, 3]) & (boxes[:, 1] < box[3])


def place_labels(
    ax, xs: Sequence[float], ys: Sequence[float], names: Sequence[str], *, fontsize: float = LABEL_FONTSIZE
):
    """Label each point (data coordinates) with its name, without overlaps (see the module docstring).

    Call after the axes limits and the figure layout are final (positions are computed in pixels).
    Returns the text artists (``gid`` :data:`LABEL_GID`). Points with a NaN coordinate get no label.
    """
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    inner = (frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2)
    points = [
        (i, *ax.transData.transform((float(x), float(y))))
        for i, (x, y) in enumerate(zip(xs, ys))
        if not (math.isnan(float(x)) or math.isnan(float(y)))
    ]
    obstacles = [
        (px - _MARKER_HALF, py - _MARKER_HALF, px + _MARKER_HALF, py + _MARKER_HALF) for _, px, py in points
    ]
    placed = np.array(obstacles, dtype=float).reshape(-1, 4)
    max_r = math.hypot(frame.width, frame.height)
    texts = []
    to_data = ax.transData.inverted()
    for i, px, py in points:
        text = ax.text(0, 0, names[i], fontsize=fontsize, gid=LABEL_GID, zorder=3)
        extent = text.get_window_extent(renderer)
        w, h = extent.width, extent.height
        best: tuple[tuple[float, float, float, float], str, str, float] | None = None
        best_cost = math.inf
        r = _MARKER_HALF + _GAP
        # At least one ring: axes smaller than the first ring's radius still get their labels.
        while best is None or (best_cost > 0 and r <= max_r):
            for dx, dy, ha, va in _DIRECTIONS:
                box = _box_for(px, py, w, h, dx, dy, ha, va, r)
                outside = max(0.0, inner[0] - box[0]) + max(0.0, box[2] - inner[2])
                outside += max(0.0, inner[1] - box[1]) + max(0.0, box[3] - inner[3])
                cost = 1e6 * outside + float(_overlaps(box, placed).sum())
                if cost < best_cost:
                    best, best_cost = (box, ha, va, r), cost
                    if cost == 0:
                        break
            r += max(h * 0.75, 4.0)
        box, ha, va, r = best
        # Placed by its lower-left corner, so that the drawn box is the one that was checked.
        x0, y0 = to_data.transform((box[0], box[1]))
        text.set_position((x0, y0))
        text.set_horizontalalignment("left")
        text.set_verticalalignment("bottom")
        drawn = text.get_window_extent(renderer)
        # Baseline/descender offsets: shift so that the drawn box sits exactly on the checked one.
        shift = to_data.transform((box[0] + (box[0] - drawn.x0), box[1] + (box[1] - drawn.y0)))
        text.set_position(tuple(shift))
        if r > _MARKER_HALF + _GAP + 1e-9:
            cx = min(max(px, box[0]), box[2])
            cy = min(max(py, box[1]), box[3])
            lx, ly = to_data.transform((cx, cy))
            ax.plot([xs[i], lx], [ys[i], ly], color="0.55", linewidth=0.6, zorder=1)
        placed = np.vstack([placed, np.array(box, dtype=float)[None, :]])
        texts.append(text)
    return texts


def _panels(count: int, side_in: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, count, figsize=(side_in * count, side_in + 0.6), squeeze=False, dpi=DPI)
    return plt, fig, list(axes[0])


def _side(rows: pd.DataFrame) -> float:
    """Panel side in inches: room for more labels when there are more models."""
    most = int(rows.groupby("table").size().max()) if len(rows) else 1
    return min(12.0, 5.0 + 0.09 * most)


def precision_recall_figure(rows: pd.DataFrame, headings: Mapping[str, str]):
    """Precision vs recall, one panel per table, every model labelled."""
    tables = list(dict.fromkeys(rows["table"]))
    plt, fig, axes = _panels(len(tables), _side(rows))
    for ax, table in zip(axes, tables):
        sub = rows[rows["table"] == table]
        ax.scatter(sub["rec"], sub["prec"], s=18, zorder=2)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(headings.get(table, table), fontsize=10)
        ax.grid(True, linewidth=0.3, alpha=0.5)
    fig.tight_layout()
    for ax, table in zip(axes, tables):
        sub = rows[rows["table"] == table]
        place_labels(ax, list(sub["rec"]), list(sub["prec"]), list(sub["name"]))
    return fig


def f1_time_figure(rows: pd.DataFrame, headings: Mapping[str, str]):
    """F1 vs median description time (s), one panel per table. Models without a time (baselines
    describe nothing) are named under the panel instead of plotted."""
    from matplotlib.ticker import MaxNLocator

    tables = list(dict.fromkeys(rows["table"]))
    plt, fig, axes = _panels(len(tables), _side(rows))
    for ax, table in zip(axes, tables):
        sub = rows[rows["table"] == table]
        timed = sub[sub["time"].notna() & sub["f1"].notna()]
        ax.scatter(timed["time"], timed["f1"], s=18, zorder=2)
        top = float(timed["time"].max()) if len(timed) else 1.0
        ax.set_xlim(0, top * 1.15 if top > 0 else 1.0)
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")
        untimed = list(sub.loc[sub["time"].isna(), "name"])
        xlabel = "median description time (s)"
        if untimed:
            shown = ", ".join(untimed[:3]) + (f" and {len(untimed) - 3} more" if len(untimed) > 3 else "")
            xlabel += f"\nno time (not plotted): {shown}"
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel("F1")
        ax.set_title(headings.get(table, table), fontsize=10)
        ax.grid(True, linewidth=0.3, alpha=0.5)
    fig.tight_layout()
    for ax, table in zip(axes, tables):
        sub = rows[rows["table"] == table]
        timed = sub[sub["time"].notna() & sub["f1"].notna()]
        place_labels(ax, list(timed["time"]), list(timed["f1"]), list(timed["name"]))
    return fig


def f1_figure(rows: pd.DataFrame, headings: Mapping[str, str]):
    """F1 per model as horizontal bars, one panel per table."""
    tables = list(dict.fromkeys(rows["table"]))
    most = int(rows.groupby("table").size().max())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(tables), figsize=(6 * len(tables), 0.3 * most + 1.8), squeeze=False, dpi=DPI
    )
    for ax, table in zip(axes[0], tables):
        sub = rows[rows["table"] == table].sort_values("f1")
        ax.barh(sub["name"], sub["f1"].fillna(0), color="#4c72b0")
        ax.set_xlim(0, 1)
        ax.set_xlabel("F1")
        ax.set_title(headings.get(table, table), fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def write_plots(rows: pd.DataFrame, headings: Mapping[str, str], directory: Path) -> dict[str, Path]:
    """``f1_per_model.png``, ``precision_recall.png`` and ``f1_time.png`` in ``directory``."""
    import matplotlib.pyplot as plt

    out: dict[str, Path] = {}
    if rows.empty:
        return out
    for key, filename, make in (
        ("f1", "f1_per_model.png", f1_figure),
        ("precision_recall", "precision_recall.png", precision_recall_figure),
        ("f1_time", "f1_time.png", f1_time_figure),
    ):
        fig = make(rows, headings)
        path = directory / filename
        with atomic_path(path) as temporary:
            fig.savefig(temporary, dpi=DPI, format="png")
        plt.close(fig)
        out[key] = path
    return out
