"""Every grounding mode through the Dagster graph on the simulator: the shipped simulated model of each
new mode and the ``sam3_classes`` baseline, one COCO pair each, then the leaderboard, where each mode is its own row (the paper's mode,
``sim_strong``, goes through the same graph in ``test_pipeline``)."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from ..deployment import PAIR_ASSETS, Deployment, pair_keys, run_inputs, run_job

MODELS = ("sim_strong_sam3", "sim_strong_boxes", "sim_strong_boxes_sam2", "sim_sam3_classes")
DISPLAY = {
    "sim_strong_sam3": "Sim strong + SAM 3 (simulated)",
    "sim_strong_boxes": "Sim strong + VLM boxes (simulated)",
    "sim_strong_boxes_sam2": "Sim strong + VLM boxes + SAM2 (simulated)",
    "sim_sam3_classes": "Sim SAM 3 classes (simulated)",
}


@pytest.fixture(scope="module")
def modes_run(simulator, tmp_path_factory):
    deployment = Deployment.create(tmp_path_factory.mktemp("modes"), MODELS)
    with dg.instance_for_test() as instance:
        defs = deployment.definitions()
        instance.add_dynamic_partitions("models", list(MODELS))
        run_inputs(defs, instance, datasets=("coco",))
        for key in pair_keys(MODELS, ("coco",)):
            run_job(defs, instance, "benchmark_pair_job", key)
        run_job(defs, instance, "leaderboard_job")
        yield deployment, instance


def test_each_mode_is_a_row_of_the_leaderboard(modes_run):
    deployment, instance = modes_run
    for asset in PAIR_ASSETS:
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(pair_keys(MODELS, ("coco",)))
    board = deployment.read("leaderboard")
    assert set(DISPLAY.values()) <= set(board["name"])


def test_each_mode_has_sensible_rows(modes_run):
    deployment, _ = modes_run
    images = deployment.read("dataset_images", "coco")
    masks = {m: deployment.read("masks", "coco", m) for m in MODELS}
    metrics = {m: deployment.read("metrics", "coco", m) for m in MODELS}
    for model in MODELS:
        assert len(masks[model]) > len(images), model  # several objects per image, each grounded
        assert set(masks[model]["image_id"]) <= set(images["image_id"])
        # a simulated VLM with recall 0.92 grounded by any mode finds a fair share of COCO's objects
        assert float(metrics[model]["rec"].iloc[0]) > 0.2, model
    # SAM2 or SAM 3 give masks; the VLM's own boxes alone do not
    assert masks["sim_strong_boxes"]["mask"].isna().all()
    for model in ("sim_strong_sam3", "sim_strong_boxes_sam2", "sim_sam3_classes"):
        assert masks[model]["mask"].notna().mean() > 0.9, model
    # the VLM-box modes share stage A (same prompt, cached) and so their boxes
    boxes = ["image_id", "x1", "y1", "x2", "y2"]
    pd.testing.assert_frame_equal(masks["sim_strong_boxes"][boxes], masks["sim_strong_boxes_sam2"][boxes])
