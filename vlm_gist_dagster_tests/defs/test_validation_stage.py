"""Stage C on (issue 6): a model whose header enables validation, run through Dagster on the simulator
(COCO), next to the same model with validation off.

The validation VLM of ``settings/validation/validation.json`` (OpenRouter's gemini-2.5-flash) is
answered by the simulator, which names the described object a crop is tight around, or ``n/a``. Checked
against the ground truth and the paper's rules (docs/protocol/pipeline.md §5), not against the stage's own code:
crops tight around no GT instance are rejected, every kept detection keeps or takes an ``object_name`` of
its image's description, only kept detections reach label matching, and removing the rejected
detections removes many false positives for few true positives.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ..deployment import Deployment, run_inputs, run_job

DATASET = "coco"
OFF, ON = "sim_medium", "sim_medium_validated"
VALIDATION_MODEL = "google/gemini-2.5-flash"


@pytest.fixture(scope="module")
def validated_run(simulator, tmp_path_factory):
    deployment = Deployment.create(tmp_path_factory.mktemp("validation"), [OFF])
    raw = json.loads((deployment.models_dir / f"{OFF}.json").read_text())
    raw["model"]["validation"] = True
    raw["model"]["display_name"] = "Sim medium validated (simulated)"
    (deployment.models_dir / f"{ON}.json").write_text(json.dumps(raw, indent=1))
    simulator.request_log.clear()
    instance = deployment.instance()
    try:
        defs = deployment.definitions()
        instance.add_dynamic_partitions("models", [OFF, ON])
        run_inputs(defs, instance, [DATASET])
        for model in (OFF, ON):
            run_job(defs, instance, "benchmark_pair_job", f"{DATASET}|{model}")
        yield deployment, instance, simulator.request_log.filter(server="chat", model=VALIDATION_MODEL)
    finally:
        instance.dispose()


def iou_with_gt(validations: pd.DataFrame, gt: pd.DataFrame, images: pd.DataFrame) -> np.ndarray:
    """Per detection, the best IoU of its (pixel) box with a GT box of its image."""
    size = images.set_index("image_id")[["width", "height"]]
    best = []
    for row in validations.itertuples():
        width, height = size.loc[row.image_id]
        boxes = gt[gt["image_id"] == row.image_id]
        x1, y1, x2, y2 = row.box_x1, row.box_y1, row.box_x2, row.box_y2
        scores = [0.0]
        for g in boxes.itertuples():
            gx1, gy1 = g.x * width, g.y * height
            gx2, gy2 = gx1 + g.w * width, gy1 + g.h * height
            inter = max(0.0, min(x2, gx2) - max(x1, gx1)) * max(0.0, min(y2, gy2) - max(y1, gy1))
            union = (x2 - x1) * (y2 - y1) + (gx2 - gx1) * (gy2 - gy1) - inter
            scores.append(inter / union if union > 0 else 0.0)
        best.append(max(scores))
    return np.array(best)


def test_validation_asks_the_validation_vlm_once_per_detection(validated_run):
    deployment, _, requests = validated_run
    masks = deployment.read("masks", DATASET, ON)
    validations = deployment.read("validations", DATASET, ON)
    assert len(validations) == len(masks) > 0
    assert len(requests) == len(masks)  # no faults: one answered request per crop
    off = deployment.read("validations", DATASET, OFF)
    assert set(off["validation_action"]) == set(off["validation_outcome"]) == {"off"}


def test_crops_tight_around_no_instance_are_rejected_and_kept_ones_name_described_objects(validated_run):
    deployment, _, _ = validated_run
    validations = deployment.read("validations", DATASET, ON)
    gt = deployment.read("ground_truth", DATASET)
    images = deployment.read("dataset_images", DATASET)
    descriptions = deployment.read("descriptions", DATASET, ON)
    names = {
        i: {o["object_name"] for o in objs}
        for i, objs, ok in zip(descriptions["image_id"], descriptions["objects"], descriptions["success"])
        if ok
    }
    actions = validations["validation_outcome"]
    assert set(actions) <= {"keep", "update", "reject"}
    # The outcome field says what the reference's prose says ("Accept ...", "Update ...", "Reject ...").
    prose = validations["validation_action"].str.split(" ").str[0].str.lower()
    assert (prose == actions.replace({"keep": "accept"})).all()
    assert validations["validation_error"].isna().all()  # no faults: every crop answered
    best = iou_with_gt(validations, gt, images)
    # The simulator answers n/a below IoU 0.5 (its "tight" rule): every such detection is rejected.
    assert (best < 0.5).any()
    assert not validations["kept"].to_numpy()[best < 0.5].any()
    # The medium model invents ~1 object per image: some detections are rejected, most are kept.
    kept = validations[validations["kept"].astype(bool)]
    assert 0.5 * len(validations) < len(kept) < len(validations)
    for row in kept.itertuples():
        assert row.validated_object_name in names[row.image_id]
    # Kept with the same name unless updated (docs/protocol/pipeline.md §5.5).
    same = kept["validated_object_name"] == kept["object_name"]
    assert (same | actions[kept.index].eq("update")).all()


def test_only_kept_detections_reach_label_matching_and_precision_rises(validated_run):
    deployment, _, _ = validated_run
    validations = deployment.read("validations", DATASET, ON)
    matches = deployment.read("label_matches", DATASET, ON)
    assert len(matches) == int(validations["kept"].sum())
    off = deployment.read("metrics", DATASET, OFF).iloc[0]
    on = deployment.read("metrics", DATASET, ON).iloc[0]
    # Same descriptions, detections and masks (the validated model is the same simulated model): most
    # rejected detections were false positives. A few true positives go too: a detector box around another
    # instance of the same class than the one its description names (the validator answers that
    # instance's name, whose own detection already took it, docs/protocol/pipeline.md §5.5 step 4-5), which evaluation, by
    # class only, had counted.
    assert on["fp"] < off["fp"]
    assert off["fp"] - on["fp"] > 5 * (off["tp"] - on["tp"])
    assert on["tp"] >= 0.95 * off["tp"]
    assert on["prec"] > off["prec"]
