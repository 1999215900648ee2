"""Legible leaderboard outputs (issue 12, item 7): plots whose labels do not overprint each other or
get cut off, for 20 near-identical models; headings that name the data actually used; a baseline
without timing shows an empty Time cell in Markdown and CSV while the paper-format text keeps the
paper's ``nans``."""

from __future__ import annotations

import csv
import itertools
import math
import random
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.text import Text

from vlm_gist_dagster.datasets.provenance import DatasetProvenance, heading
from vlm_gist_dagster.stages.leaderboard import build_leaderboard, write_leaderboard
from vlm_gist_dagster.stages.plots import LABEL_GID, f1_time_figure, precision_recall_figure

NUM_MODELS = 20


def metrics_rows(num_models: int = NUM_MODELS, seed: int = 3) -> pd.DataFrame:
    """Metrics rows of ``num_models`` models on both datasets, crowded on purpose: most models within a
    few hundredths of each other (as copies of one model are), two exactly equal, one baseline
    without a description time."""
    rng = random.Random(seed)
    rows = []
    for dataset, images in (("coco", 32), ("vlm_gist", 64)):
        for i in range(num_models):
            crowded = i < num_models - 4
            rec = 0.86 + rng.uniform(-0.02, 0.02) if crowded else rng.uniform(0.3, 0.7)
            prec = 0.93 + rng.uniform(-0.02, 0.02) if crowded else rng.uniform(0.4, 0.9)
            if i == 1:  # exactly on top of model 0
                rec, prec = rows[-1]["rec"], rows[-1]["prec"]
            baseline = i == num_models - 1
            rows.append(
                {
                    "dataset": dataset,
                    "model": f"model_{i:02d}",
                    "display_name": f"Simulated copy number {i:02d} (simulated)"
                    if not baseline
                    else "Florence-2 OD baseline",
                    "simulated": True,
                    "f1": 2 * rec * prec / (rec + prec),
                    "rec": rec,
                    "prec": prec,
                    "map": 0.5,
                    "ins": 8.0,
                    "mat": 1.01 if baseline else 0.97,
                    "time": math.nan if baseline else 0.0682 + rng.uniform(0, 0.0002),
                    "fail": 0.0,
                    "ret": 0.0,
                    "num_images": images,
                }
            )
    return pd.DataFrame(rows)


def _boxes(fig, texts):
    renderer = fig.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in texts]


def _labels(fig, ax):
    return [t for t in ax.texts if t.get_gid() == LABEL_GID]


def _drawn_ticklabels(axis):
    """The tick labels matplotlib draws: those of ticks inside the view limits."""
    lo, hi = sorted(axis.get_view_interval())
    eps = (hi - lo) * 1e-9
    return [
        label
        for loc, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
        if lo - eps <= loc <= hi + eps and label.get_visible() and label.get_text()
    ]


def _assert_disjoint(boxes, what):
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), f"{what}: boxes {i} {a} and {j} {b} overlap"


def _assert_inside(box, frame, what):
    assert frame.x0 - 0.5 <= box.x0 and box.x1 <= frame.x1 + 0.5, f"{what}: {box} outside {frame}"
    assert frame.y0 - 0.5 <= box.y0 and box.y1 <= frame.y1 + 0.5, f"{what}: {box} outside {frame}"


@pytest.fixture(scope="module")
def board():
    return build_leaderboard(metrics_rows())


@pytest.mark.parametrize(
    "make", [precision_recall_figure, f1_time_figure], ids=["precision_recall", "f1_time"]
)
def test_point_labels_do_not_overlap_and_are_not_cut_off(board, make):
    fig = make(board.rows, board.headings)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    figure_box = fig.bbox
    assert len(fig.axes) == 3  # one panel per table: coco, vlm_gist, weighted
    for ax in fig.axes:
        labels = _labels(fig, ax)
        expected = (
            NUM_MODELS if make is precision_recall_figure else NUM_MODELS - 1
        )  # the baseline has no time
        assert len(labels) == expected, ax.get_title()
        boxes = _boxes(fig, labels)
        _assert_disjoint(boxes, f"labels of {ax.get_title()!r}")
        frame = ax.get_window_extent(renderer)
        for label, box in zip(labels, boxes):
            _assert_inside(box, frame, f"label {label.get_text()!r}")
        # No label covers a point (its own or another model's).
        points = ax.transData.transform(ax.collections[0].get_offsets())
        for label, box in zip(labels, boxes):
            assert not any(box.contains(x, y) for x, y in points), f"{label.get_text()!r} covers a point"
        # Ticks are legible too: no overlapping tick labels (e.g. 0.068240.06826 with an offset axis).
        for axis in (ax.xaxis, ax.yaxis):
            ticks = _drawn_ticklabels(axis)
            _assert_disjoint(_boxes(fig, ticks), f"tick labels of {ax.get_title()!r}")
    # Nothing is cut off at the figure's edge: every drawn text lies inside the figure.
    for ax in fig.axes:
        texts = [
            *_labels(fig, ax),
            ax.title,
            ax.xaxis.label,
            ax.yaxis.label,
            *_drawn_ticklabels(ax.xaxis),
            *_drawn_ticklabels(ax.yaxis),
        ]
        for text in texts:
            if text.get_visible() and text.get_text():
                _assert_inside(
                    Text.get_window_extent(text, renderer), figure_box, f"text {text.get_text()!r}"
                )


def test_f1_time_names_the_baseline_without_time_instead_of_plotting_it(board):
    fig = f1_time_figure(board.rows, board.headings)
    for ax in fig.axes:
        assert "no time (not plotted): Florence-2 OD baseline" in ax.get_xlabel()
        assert "Florence-2 OD baseline" not in [t.get_text() for t in _labels(fig, ax)]
        assert ax.get_xlim()[0] == 0


def test_headings_name_the_data_used(tmp_path):
    rows = metrics_rows(num_models=2)
    board = build_leaderboard(rows)
    # From the rows alone: the image count, never the paper's name for a 32-image set.
    assert board.headings == {
        "coco": "COCO: 32 images",
        "vlm_gist": "VLM-GIST: 64 images",
        "weighted": "Weighted: 0.5 COCO + 0.5 VLM-GIST",
    }
    local = heading("coco", images=32, root=Path("/data/coco_val2017_32"), provenance=None)
    assert local == "COCO, local copy coco_val2017_32: 32 images"
    downloaded = DatasetProvenance("coco", "COCO val2017", images=500, selection="the 500 lowest image ids")
    assert heading("coco", images=500, root=Path("data/datasets/coco_500"), provenance=downloaded) == (
        "COCO minival (subset): 500 images"
    )
    # Our download with another max_samples is not the paper's subset either.
    smaller = DatasetProvenance("coco", "COCO val2017", images=100, selection="the 100 lowest image ids")
    assert (
        heading("coco", images=100, root=None, provenance=smaller)
        == "COCO, the 100 lowest image ids: 100 images"
    )
    board = build_leaderboard(rows, headings={"coco": local})
    assert "### COCO, local copy coco_val2017_32: 32 images" in board.markdown
    assert "COCO minival" not in board.markdown
    written = write_leaderboard(board, tmp_path)
    assert {"precision_recall", "f1_time", "f1"} <= set(written)
    assert "### VLM-GIST: 64 images" in (tmp_path / "leaderboard.md").read_text()


def test_a_baseline_without_timing_has_an_empty_time_cell(tmp_path):
    board = build_leaderboard(metrics_rows(num_models=4))
    write_leaderboard(board, tmp_path)
    # Paper format: the paper's rendering of NaN, "nans".
    text_line = next(
        line for line in (tmp_path / "coco.txt").read_text().splitlines() if line.startswith("Florence-2")
    )
    assert text_line.endswith("| 1.01 |   nans || 0.00 | 0.00")
    # Markdown: an empty Time cell.
    md_line = next(
        line
        for line in (tmp_path / "leaderboard.md").read_text().splitlines()
        if line.startswith("| Florence-2")
    )
    assert md_line.endswith("| 8.0 | 1.01 |  | 0.00 | 0.00 |")
    # CSV: an empty field.
    with (tmp_path / "leaderboard.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["name"].startswith("Florence-2 OD baseline")]
    assert len(rows) == 3 and all(r["time"] == "" for r in rows)  # coco, vlm_gist, weighted


def test_a_point_on_axes_smaller_than_the_first_label_ring_still_gets_its_label():
    """Axes of 3 x 3 pixels: the label search's first ring (7 px) is beyond the frame's diagonal; the
    search used to run no ring at all and fail unpacking None (found by mypy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlm_gist_dagster.stages.plots import place_labels

    fig = plt.figure(figsize=(1, 1), dpi=100)
    try:
        ax = fig.add_axes((0.5, 0.5, 0.03, 0.03))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        texts = place_labels(ax, [0.5], [0.5], ["tiny"])
        assert [t.get_text() for t in texts] == ["tiny"]
        assert texts[0].get_gid() == LABEL_GID
    finally:
        plt.close(fig)
