"""The leaderboard's files (``stages.leaderboard``): the paper-format PNG rendering and the atomic writes
of every file, without a Dagster instance."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from vlm_gist_dagster.protocol.leaderboard import format_table
from vlm_gist_dagster.stages.leaderboard import build_leaderboard, write_leaderboard, write_table_png
from vlm_gist_dagster_tests.conftest import REFERENCE_DIR
from vlm_gist_dagster_tests.protocol.test_leaderboard import row

PUBLISHED = REFERENCE_DIR / "published_tables"


def test_render_png(tmp_path):
    text = (PUBLISHED / "coco.txt").read_text()
    path = write_table_png(text, tmp_path / "coco.png")
    image = Image.open(path)
    assert image.size == (1315, 1414)  # round(57 * 24.8) = round(1413.6)
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert pixels.max() == 255 and 0.01 < (pixels > 128).mean() < 0.5  # white text on black, not blank
    weighted_png = write_table_png((PUBLISHED / "weighted.txt").read_text(), tmp_path / "w.png")
    assert Image.open(weighted_png).size == (1315, 1364)  # 55 lines * 24.8 = 1364.0
    colored = write_table_png(format_table([row("A"), row("B", f1=0.1)], highlight=True), tmp_path / "c.png")
    plain = write_table_png(format_table([row("A"), row("B", f1=0.1)]), tmp_path / "p.png")
    assert (np.asarray(Image.open(colored)) == np.asarray(Image.open(plain))).all()  # ANSI stripped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "coco.png", "p.png", "w.png"]


def _metrics_row(dataset: str, model: str, f1: float) -> dict:
    values = {k: v for k, v in row(model, f1=f1).items() if k != "name"}
    return {"dataset": dataset, "model": model, "display_name": model, "simulated": True, **values}


def test_write_leaderboard_writes_every_file_atomically(tmp_path):
    metrics = pd.DataFrame(
        [_metrics_row(d, m, f1) for d in ("coco", "vlm_gist") for m, f1 in (("alpha", 0.6), ("beta", 0.4))]
    )
    board = build_leaderboard(metrics, expected_pairs=["coco|alpha", "coco|gamma"])
    directory = tmp_path / "leaderboard"
    (directory).mkdir()
    (directory / "coco.txt").write_text("old")
    written = write_leaderboard(board, directory)
    names = {
        "coco.txt", "coco.png", "vlm_gist.txt", "vlm_gist.png", "weighted.txt", "weighted.png",
        "leaderboard.md", "leaderboard.csv", "f1_per_model.png", "precision_recall.png", "f1_time.png",
        "f1_intervals.png",
    }  # fmt: skip
    # Every file is in place and no temporary file is left next to them (hidden names included).
    assert {p.name for p in directory.iterdir()} == names
    assert {p.name for p in written.values()} == names
    coco = (directory / "coco.txt").read_text()
    assert coco == board.texts["coco"] and not coco.endswith("\n")  # the published files end without one
    assert coco.splitlines()[2].startswith("alpha (simulated) | 0.600 |")
    assert (directory / "leaderboard.md").read_text().startswith("# Leaderboard\n\n### COCO")
    assert "`coco|gamma`" in (directory / "leaderboard.md").read_text()
    csv = pd.read_csv(directory / "leaderboard.csv")
    assert list(csv["table"]) == ["coco", "coco", "vlm_gist", "vlm_gist", "weighted", "weighted"]
    assert list(csv["rank"]) == [1, 2] * 3
    for png in ("coco.png", "f1_per_model.png", "precision_recall.png", "f1_time.png"):
        assert Image.open(directory / png).format == "PNG"
