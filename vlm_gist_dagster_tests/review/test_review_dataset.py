"""``vlm-gist review`` (``vlm_gist_dagster.review``): the FiftyOne review dataset built from a small
simulated run (COCO sample: sim_strong and the Florence-2 baseline; VLM-GIST: sim_strong).

* FiftyOne's own ``evaluate_detections`` on the review dataset (the paper's call, one ``eval_key`` per
  model) gives the same TP / FP / FN, precision, recall, F1 and mAP as the project's ``metrics`` asset:
  an independent check of the evaluation and of what the review dataset holds. The numbers are read
  from the FiftyOne dataset here, not from the builder's summary.
* Every stage's field holds one object per stored row (boxes converted by hand here), matched /
  dropped labels as stored, masks cut to their boxes.
* A second build changes nothing; a changed input rebuilds only that model; a model whose outputs are
  gone is removed; a FiftyOne dataset the review did not make is never touched.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from vlm_gist_dagster.cli import main
from vlm_gist_dagster.defs.io_manager import read_parquet, write_parquet
from vlm_gist_dagster.protocol.masks import encode_rle
from vlm_gist_dagster.review import (
    DatasetInput,
    ModelInput,
    PairFrames,
    ReviewError,
    build_review_dataset,
    dataset_input,
    field_prefix,
    metrics_differences,
    model_inputs,
)
from vlm_gist_dagster.review.builder import box_mask
from vlm_gist_dagster.runner import patched_environ

from .simulated_run import simulated_deployment

PAIRS = {"coco": ("sim_strong", "sim_florence_od"), "vlm_gist": ("sim_strong",)}


@pytest.fixture(scope="module")
def deployment(simulator, tmp_path_factory):
    """Both datasets' tables and the three pairs, stored as the pipeline stores them."""
    root = tmp_path_factory.mktemp("review")
    first = simulated_deployment(root / "coco", ["coco"], PAIRS["coco"])
    second = simulated_deployment(root / "vlm_gist", ["vlm_gist"], PAIRS["vlm_gist"])
    # one assets directory holding both runs' outputs
    for path in second.assets_dir.rglob("*.parquet"):
        target = first.assets_dir / path.relative_to(second.assets_dir)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return first


@pytest.fixture(scope="module")
def fiftyone():
    import fiftyone as fo

    fo.config.show_progress_bars = False
    return fo


def build(deployment, dataset: str, name: str, models=None, **kwargs):
    return build_review_dataset(
        dataset,
        dataset_input(dataset, deployment.assets_dir),
        model_inputs(dataset, models, deployment.assets_dir),
        selected=models,
        name=name,
        log=None,
        **kwargs,
    )


@pytest.fixture(scope="module")
def reviewed(deployment, fiftyone):
    """The two review datasets, built once for the read-only tests."""
    names = {d: f"review-test-{d}" for d in PAIRS}
    summaries = {d: build(deployment, d, names[d]) for d in PAIRS}
    yield {d: fiftyone.load_dataset(names[d]) for d in PAIRS}, summaries
    for name in names.values():
        if fiftyone.dataset_exists(name):
            fiftyone.delete_dataset(name)


@pytest.mark.parametrize("dataset,model", [(d, m) for d, ms in PAIRS.items() for m in ms])
def test_fiftyone_evaluation_equals_the_projects_metrics(deployment, reviewed, dataset, model):
    datasets, _ = reviewed
    ds = datasets[dataset]
    eval_key = f"eval_{field_prefix(model)}"
    assert eval_key in ds.list_evaluations()
    config = ds.get_evaluation_info(eval_key).config
    # the paper's call (docs/protocol/evaluation.md §2.3)
    assert (config.method, config.iou, config.classwise, config.use_masks) == ("coco", 0.5, True, False)
    assert config.gt_field == "ground_truth" and config.pred_field == f"{field_prefix(model)}_predictions"
    results = ds.load_evaluation_results(eval_key)
    numbers = results.metrics()
    tp, fp, fn = (ds.sum(f"{eval_key}_{t}") for t in ("tp", "fp", "fn"))
    # the same counts object by object: every evaluated prediction is tp or fp, every GT object tp or fn
    pred_field = f"{field_prefix(model)}_predictions"
    counts = ds.count_values(f"{pred_field}.detections.{eval_key}")
    assert (counts.get("tp", 0), counts.get("fp", 0)) == (tp, fp)
    assert ds.count_values(f"ground_truth.detections.{eval_key}").get("fn", 0) == fn

    row = read_parquet(deployment.assets_dir / "metrics" / dataset / f"{model}.parquet").iloc[0]
    assert (tp, fp, fn) == (row["tp"], row["fp"], row["fn"])
    assert tp > 0 and fp > 0 and fn > 0  # a check that cannot pass on an empty evaluation
    assert numbers["precision"] == pytest.approx(row["prec"], abs=1e-12)
    assert numbers["recall"] == pytest.approx(row["rec"], abs=1e-12)
    assert numbers["fscore"] == pytest.approx(row["f1"], abs=1e-12)
    if model == "sim_florence_od":
        # a baseline has no confidences: the paper's call raises and is repeated without mAP (§2.3)
        assert not config.compute_mAP and math.isnan(row["map"])
    else:
        assert config.compute_mAP
        assert results.mAP() == pytest.approx(row["map"], abs=1e-12)


def test_each_stage_has_its_field_with_every_stored_row(deployment, reviewed, fiftyone):
    from fiftyone import ViewField as F

    datasets, summaries = reviewed
    for dataset, models in PAIRS.items():
        ds = datasets[dataset]
        images = read_parquet(deployment.assets_dir / "dataset_images" / f"{dataset}.parquet")
        gt = read_parquet(deployment.assets_dir / "ground_truth" / f"{dataset}.parquet")
        assert len(ds) == len(images) and summaries[dataset].num_samples == len(images)
        assert ds.count("ground_truth.detections") == len(gt)
        assert ds.count("ground_truth.detections.mask") == int(gt["mask"].notna().sum())
        sizes = images.set_index("image_id")[["width", "height"]]
        for model in models:
            p = field_prefix(model)

            def stored(asset: str, dataset=dataset, model=model) -> pd.DataFrame:
                return read_parquet(deployment.assets_dir / asset / dataset / f"{model}.parquet")

            detections, validations, matches = (
                stored("detections"),
                stored("validations"),
                stored("label_matches"),
            )
            descriptions = stored("descriptions")
            assert ds.count(f"{p}_detections.detections") == len(detections)
            assert ds.count(f"{p}_masks.detections") == len(validations)
            assert ds.count(f"{p}_masks.detections.mask") == int(validations["mask"].notna().sum()) > 0
            assert ds.count(f"{p}_label_matches.detections") == len(matches)
            matched = matches["dataset_match"].notna()
            assert ds.count(f"{p}_predictions.detections") == int(matched.sum())
            dropped = int((~matched & ~matches["skipped"].astype(bool)).sum())
            assert ds.count_values(f"{p}_label_matches.detections.status").get("dropped", 0) == dropped
            if dataset == "coco" and model == "sim_strong":
                assert dropped > 0  # the simulator invents scene "stuff" that label matching rejects

            # the first detection of the first image with one, converted by hand
            r = detections.iloc[0]
            width, height = sizes.loc[r["image_id"]]
            sample = ds.one(F("image_id") == r["image_id"])
            first = sample[f"{p}_detections"].detections[0]
            assert first.label == r["object_name"] and first["description"] == r["description"]
            assert first.bounding_box == pytest.approx(
                [r["x1"] / width, r["y1"] / height, (r["x2"] - r["x1"]) / width, (r["y2"] - r["y1"]) / height]
            )
            # the first mask: the stored full-image mask cut to the evaluated (mask) box
            v = validations.iloc[0]
            width, height = sizes.loc[v["image_id"]]
            mask = ds.one(F("image_id") == v["image_id"])[f"{p}_masks"].detections[0].mask
            x0, y0 = round(v["x"] * width), round(v["y"] * height)
            x1, y1 = round((v["x"] + v["w"]) * width), round((v["y"] + v["h"]) * height)
            assert mask.shape == (y1 - y0, x1 - x0)
            assert int(mask.sum()) > 0

            # the described objects of stage A (baselines describe nothing)
            described = ds.values(f"{p}_described")
            if model == "sim_florence_od":
                assert all(v is None for v in described)
            else:
                total = sum(len(o) for o in descriptions["objects"] if o is not None)
                assert sum(len(v or []) for v in described) == total > 0

            # TP / FP / FN can be filtered per model, as the App's evaluation panel does
            eval_key = f"eval_{p}"
            tp_view = ds.filter_labels(f"{p}_predictions", F(eval_key) == "tp")
            assert tp_view.count(f"{p}_predictions.detections") == ds.sum(f"{eval_key}_tp")
        # one sidebar group per model, holding its fields
        groups = {g.name: g.paths for g in ds.app_config.sidebar_groups}
        for model in models:
            p = field_prefix(model)
            assert f"{p}_predictions" in groups[model] and f"eval_{p}_tp" in groups[model]


def test_a_second_build_changes_nothing_and_a_changed_input_rebuilds_only_its_model(
    deployment, fiftyone, tmp_path
):
    name = "review-test-incremental"
    first = build(deployment, "coco", name)
    assert {m.key: m.status for m in first.models} == {"sim_florence_od": "built", "sim_strong": "built"}
    ds = fiftyone.load_dataset(name)
    ids = {m: ds.values(f"{field_prefix(m)}_predictions.detections.id") for m in PAIRS["coco"]}

    again = build(deployment, "coco", name)
    assert {m.key: m.status for m in again.models} == {
        "sim_florence_od": "unchanged",
        "sim_strong": "unchanged",
    }
    assert not again.recreated
    for model, before in ids.items():  # not rewritten: the same label ids
        assert ds.values(f"{field_prefix(model)}_predictions.detections.id") == before

    # sim_strong's label matches change (one matched detection less): only sim_strong is rebuilt,
    # and FiftyOne's numbers follow (one prediction less: TP or FP falls by one)
    path = deployment.assets_dir / "label_matches" / "coco" / "sim_strong.parquet"
    original = path.read_bytes()
    try:
        matches = read_parquet(path)
        drop = matches.index[matches["dataset_match"].notna()][0]
        write_parquet(matches.drop(index=drop), path)
        third = build(deployment, "coco", name)
        statuses = {m.key: m.status for m in third.models}
        assert statuses == {"sim_florence_od": "unchanged", "sim_strong": "built"}
        before, after = first.model("sim_strong").evaluation, third.model("sim_strong").evaluation
        assert after["tp"] + after["fp"] == before["tp"] + before["fp"] - 1
        assert (
            ds.values(f"{field_prefix('sim_florence_od')}_predictions.detections.id")
            == ids["sim_florence_od"]
        )
    finally:
        path.write_bytes(original)

    # a model whose outputs are gone is removed with its fields and evaluation
    moved = {}
    for asset_file in deployment.assets_dir.glob("*/coco/sim_florence_od.parquet"):
        moved[asset_file] = tmp_path / asset_file.parent.parent.name
        asset_file.rename(moved[asset_file])
    try:
        fourth = build(deployment, "coco", name)
        assert fourth.model("sim_florence_od").status == "removed"
        ds.reload()
        assert "eval_sim_florence_od" not in ds.list_evaluations()
        assert not [f for f in ds.get_field_schema() if f.startswith("sim_florence_od")]
        assert fourth.model("sim_strong").status == "built"  # its input was restored above
    finally:
        for original_path, saved in moved.items():
            saved.rename(original_path)
    fiftyone.delete_dataset(name)


def test_the_builder_takes_frames_as_a_dagster_asset_would(deployment, fiftyone):
    """What the ``review_dataset`` asset will do: DataFrames from the IO manager, content fingerprints."""

    def stored(asset: str, model: str | None = None) -> pd.DataFrame:
        path = deployment.assets_dir / asset / "coco"
        return read_parquet(path / f"{model}.parquet" if model else path.with_suffix(".parquet"))

    name = "review-test-frames"
    base = DatasetInput.from_frames(stored("dataset_images"), stored("ground_truth"))
    assets = ("descriptions", "detections", "masks", "validations", "label_matches", "metrics")
    frames = PairFrames(**{asset: stored(asset, "sim_strong") for asset in assets})
    first = build_review_dataset(
        "coco", base, [ModelInput.from_frames("sim_strong", frames)], name=name, log=None
    )
    review = first.model("sim_strong")
    assert review.status == "built" and review.differences() == []
    assert (review.evaluation["tp"], review.evaluation["fp"]) == (review.metrics["tp"], review.metrics["fp"])
    assert first.metadata()["models_built"] == ["sim_strong"] and first.metadata()["disagreements"] == {}
    # the same frames read again: the same fingerprints, nothing rebuilt
    again = build_review_dataset(
        "coco",
        DatasetInput.from_frames(stored("dataset_images"), stored("ground_truth")),
        [ModelInput.from_frames("sim_strong", PairFrames(**{a: stored(a, "sim_strong") for a in assets}))],
        name=name,
        log=None,
    )
    assert again.model("sim_strong").status == "unchanged" and not again.recreated
    fiftyone.delete_dataset(name)


def test_a_fiftyone_dataset_made_elsewhere_is_left_alone(deployment, fiftyone):
    name = "review-test-foreign"
    foreign = fiftyone.Dataset(name)
    foreign.add_sample(fiftyone.Sample(filepath="/nonexistent.jpg", note="mine"))
    with pytest.raises(ReviewError, match="was not made by `vlm-gist review`"):
        build(deployment, "coco", name)
    assert fiftyone.load_dataset(name).first()["note"] == "mine"
    fiftyone.delete_dataset(name)


def test_unknown_model_and_missing_dataset_tables_are_clear_errors(deployment, tmp_path):
    with pytest.raises(
        ReviewError, match=r"no stored outputs of model\(s\) gpt_9 .*stored: sim_florence_od, sim_strong"
    ):
        model_inputs("coco", ["gpt_9"], deployment.assets_dir)
    with pytest.raises(ReviewError, match=r"run `vlm-gist run --datasets coco` first"):
        dataset_input("coco", tmp_path)


def test_cli_builds_without_launching(deployment, fiftyone, capsys):
    name = "review-test-cli"
    with patched_environ({"VLM_GIST_ASSETS_DIR": str(deployment.assets_dir)}):
        code = main(["review", "--dataset", "coco", "--models", "sim_strong", "--name", name, "--no-launch"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "sim_strong" in out and "(= metrics)" in out and "127.0.0.1:5151" in out
        assert fiftyone.load_dataset(name).has_evaluation("eval_sim_strong")
        assert main(["review", "--dataset", "coco", "--models", "nope", "--no-launch"]) == 2
        assert "no stored outputs of model(s) nope" in capsys.readouterr().err
    fiftyone.delete_dataset(name)


def test_box_mask_cuts_the_full_image_mask_to_the_rounded_box():
    full = np.zeros((10, 20), dtype=bool)
    full[2:6, 4:9] = True
    rle = encode_rle(full)
    crop = box_mask(rle, (4 / 20, 2 / 10, 5 / 20, 4 / 10))
    assert crop.shape == (4, 5) and crop.all()
    # a box reaching outside the image is clipped; a box of no pixel has no mask
    assert box_mask(rle, (0.9, 0.0, 0.5, 0.5)).shape == (5, 2)
    assert box_mask(rle, (0.5, 0.5, 0.01, 0.01)) is None
    assert box_mask(None, (0, 0, 1, 1)) is None


def test_metrics_differences_names_each_disagreement():
    evaluation = {"tp": 3, "fp": 1, "fn": 2, "precision": 0.75, "recall": 0.6, "fscore": 2 / 3, "mAP": None}
    metrics = {"tp": 3, "fp": 1, "fn": 2, "prec": 0.75, "rec": 0.6, "f1": 2 / 3, "map": float("nan")}
    assert metrics_differences(evaluation, metrics) == []
    assert metrics_differences({**evaluation, "fp": 2}, metrics) == ["fp: FiftyOne 2.0, metrics 1.0"]
    assert metrics_differences(evaluation, {**metrics, "map": 0.5}) == ["mAP: FiftyOne None, metrics 0.5"]
