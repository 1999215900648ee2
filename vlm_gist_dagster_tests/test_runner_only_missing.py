"""``vlm-gist run --only-missing`` (``runner.run_benchmark(only_missing=True)``): adding a model to a
benchmark runs only that model's pairs and the leaderboard; nothing to do runs nothing; an edited model
file re-runs that model's pairs only. On the COCO sample (32 images) with the built-in simulator, as a
user runs it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from vlm_gist_dagster.cli import build_parser
from vlm_gist_dagster.runner import patched_environ, run_benchmark

REPO = Path(__file__).resolve().parents[1]


def write_model(models_dir: Path, key: str) -> Path:
    """A copy of the shipped sim_strong file answering as ``test/<key>``, without latency or faults."""
    raw = json.loads((REPO / "settings" / "models" / "sim_strong.json").read_text())
    raw["model"]["display_name"] = f"{key} (simulated)"
    raw["model"]["simulator"] = {"latency_mean_s": 0.0, "recall": 0.9}
    for block in ("vlm_scene_description", "vlm_structured_description", "vlm_decoupled_attribution"):
        raw[block]["model_name"] = f"test/{key}"
    path = models_dir / f"{key}.json"
    path.write_text(json.dumps(raw))
    return path


def pair_runs(instance: dg.DagsterInstance) -> Counter:
    """How many ``benchmark_pair_job`` runs each partition has had."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="benchmark_pair_job"))
    return Counter(run.tags.get("dagster/partition") for run in runs)


def leaderboard_runs(instance: dg.DagsterInstance) -> int:
    return len(instance.get_runs(filters=dg.RunsFilter(job_name="leaderboard_job")))


@pytest.fixture()
def deployment(tmp_path, coco_dir):
    models = tmp_path / "models"
    models.mkdir()
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        "VLM_GIST_DATA_DIR": str(tmp_path / "data"),
        "VLM_GIST_ASSETS_DIR": str(tmp_path / "data" / "assets"),
        "VLM_GIST_MODELS_DIR": str(models),
        "VLM_GIST_DATASET_DIR_COCO": str(coco_dir),
        "VLM_GIST_CONCURRENCY": "8",
        "DAGSTER_HOME": str(home),
    }
    with patched_environ(env):
        instance = dg.DagsterInstance.get()
        try:
            yield models, instance, tmp_path
        finally:
            instance.dispose()


def test_cli_accepts_only_missing():
    args = build_parser().parse_args(["run", "--only-missing", "--datasets", "coco"])
    assert args.only_missing is True
    assert build_parser().parse_args(["run"]).only_missing is False


def test_adding_a_model_runs_only_its_pairs_and_the_leaderboard(deployment):
    models, instance, root = deployment
    write_model(models, "alpha")
    lines: list[str] = []
    first = run_benchmark(instance=instance, datasets=["coco"], log=lines.append)
    assert first.pairs == ["coco|alpha"] and not first.failed
    assert pair_runs(instance) == {"coco|alpha": 1}
    assert leaderboard_runs(instance) == 1

    write_model(models, "beta")
    second = run_benchmark(instance=instance, datasets=["coco"], only_missing=True, log=lines.append)
    assert second.pairs == ["coco|beta"] and not second.failed
    assert second.up_to_date == ["coco|alpha"]
    # alpha's pair was not run again; beta's ran once; the leaderboard was rebuilt once more
    assert pair_runs(instance) == {"coco|alpha": 1, "coco|beta": 1}
    assert leaderboard_runs(instance) == 2
    # the dataset tables and settings were not re-materialised (one datasets_job run, one settings_job run)
    assert len(instance.get_runs(filters=dg.RunsFilter(job_name="datasets_job"))) == 1
    assert len(instance.get_runs(filters=dg.RunsFilter(job_name="settings_job"))) == 1
    board = (root / "data" / "leaderboard" / "coco.txt").read_text()
    assert "alpha (simulated)" in board and "beta (simulated)" in board

    third = run_benchmark(instance=instance, datasets=["coco"], only_missing=True, log=lines.append)
    assert third.pairs == [] and sorted(third.up_to_date) == ["coco|alpha", "coco|beta"]
    assert pair_runs(instance) == {"coco|alpha": 1, "coco|beta": 1}
    assert leaderboard_runs(instance) == 2  # nothing ran, so the leaderboard is not rebuilt

    # an edited settings file makes that model's pair stale (the nightly schedule's rule)
    path = models / "alpha.json"
    raw = json.loads(path.read_text())
    raw["model"]["display_name"] = "alpha v2 (simulated)"
    path.write_text(json.dumps(raw))
    fourth = run_benchmark(instance=instance, datasets=["coco"], only_missing=True, log=lines.append)
    assert fourth.pairs == ["coco|alpha"] and fourth.up_to_date == ["coco|beta"]
    assert pair_runs(instance) == {"coco|alpha": 2, "coco|beta": 1}
    assert "alpha v2 (simulated)" in (root / "data" / "leaderboard" / "coco.txt").read_text()


def test_default_run_still_reruns_every_pair(deployment):
    models, instance, _ = deployment
    write_model(models, "alpha")
    run_benchmark(instance=instance, datasets=["coco"], log=lambda _: None)
    again = run_benchmark(instance=instance, datasets=["coco"], log=lambda _: None)
    assert again.pairs == ["coco|alpha"] and again.up_to_date == []
    assert pair_runs(instance) == {"coco|alpha": 2}
