"""Bad inputs: each gives a clear error naming the file (and field), or is handled as the paper's pipeline
handles it, and never disturbs the other images of the partition.

Images (stages A–B on the simulator, ``stages.descriptions`` / ``stages.grounding``): a temp COCO-format
dataset of three ordinary COCO images plus variants of *other* COCO images (each keeps its own
annotations): grayscale, CMYK and EXIF-tagged JPEGs, an RGBA and a 16-bit PNG, a truncated JPEG, a
10,000 × 10,000 JPEG, and three copies that break after the dataset table was made (emptied to 0 bytes,
deleted, deleted between descriptions and detections). The same stages on a dataset of only the three
ordinary images (same ids, fresh simulator with the same seed) must give the same rows for them.

Files that are broken when the dataset is loaded (0 bytes, missing), dataset JSON with a box outside the
image or a non-positive size, labels giving an EXIF-rotated image's displayed size, and settings files
with unknown keys or wrong types: a located error (file and field).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlm_gist_dagster.datasets import DatasetError, load_dataset
from vlm_gist_dagster.defs.partitions import pair_key
from vlm_gist_dagster.protocol.settings import (
    SettingsError,
    load_detection_settings,
    load_label_matching_settings,
    load_model_settings,
)
from vlm_gist_dagster.runner import patched_environ, simulator_environment
from vlm_gist_dagster.sim import SERVER_NAMES, start_simulator
from vlm_gist_dagster.sim.world import load_world
from vlm_gist_dagster.stages.descriptions import run_descriptions
from vlm_gist_dagster.stages.grounding import run_detections, run_masks
from vlm_gist_dagster.stages.services import Services

from ..deployment import REPO, SIM_STRONG, Deployment

GOOD = ("good1", "good2", "good3")
#: Columns that record wall-clock time or whether a value came from the cache.
VOLATILE = ["duration_s", "attempt_log_json", "from_cache"]
HUGE = 10_000


# ------------------------------------------------------------------------------------- dataset builders


def coco_document(coco_dir: Path) -> dict:
    return json.loads((coco_dir / "labels.json").read_text())


def gray(src: Path, dst: Path) -> None:
    Image.open(src).convert("L").save(dst, quality=95)


def cmyk(src: Path, dst: Path) -> None:
    Image.open(src).convert("CMYK").save(dst, quality=95)


def rgba(src: Path, dst: Path) -> None:
    array = np.array(Image.open(src).convert("RGBA"))
    array[..., 3] = 200  # a real alpha channel, not all opaque
    Image.fromarray(array).save(dst)


def deep16(src: Path, dst: Path) -> None:
    cv2.imwrite(str(dst), cv2.imread(str(src)).astype(np.uint16) * 257)  # 16 bits per sample


def exif_tagged(src: Path, dst: Path) -> None:
    """The same pixels with EXIF orientation 6 (viewers rotate it by 90°; the stored frame is unchanged,
    so the COCO boxes stay valid in it)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(src).save(dst, quality=95, exif=exif.tobytes())


def truncated(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * 0.6)])  # header intact, the last 40 % of the scan missing


def huge(src: Path, dst: Path) -> tuple[int, int]:
    big = cv2.resize(cv2.imread(str(src)), (HUGE, HUGE), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(dst), big, [cv2.IMWRITE_JPEG_QUALITY, 60])
    return HUGE, HUGE


def copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)


def build_coco(root: Path, coco_dir: Path, variants: dict[str, tuple[int, object]]) -> Path:
    """A COCO directory: ``variants`` maps a new file name to (index of the source image in the shared
    COCO sample's labels.json, maker). A maker that returns a size drops the annotations (new geometry)."""
    document = coco_document(coco_dir)
    (root / "data").mkdir(parents=True)
    images, annotations = [], []
    for name, (index, make) in variants.items():
        info = dict(document["images"][index])
        size = make(coco_dir / "data" / info["file_name"], root / "data" / name)
        info["file_name"] = name
        if size is None:
            annotations += [a for a in document["annotations"] if a["image_id"] == info["id"]]
        else:
            info["width"], info["height"] = size
        images.append(info)
    labels = {"images": images, "annotations": annotations, "categories": document["categories"]}
    (root / "labels.json").write_text(json.dumps(labels))
    return root


#: Source images: ordinary ones first, then one distinct COCO image per variant (distinct pixels, so the
#: simulator never confuses two variants). Indexes into the shared sample's labels.json.
ORDINARY = {"good1.jpg": (0, copy), "good2.jpg": (1, copy), "good3.jpg": (2, copy)}
ODD = {
    "gray.jpg": (3, gray),
    "cmyk.jpg": (4, cmyk),
    "rgba.png": (5, rgba),
    "deep16.png": (6, deep16),
    "exif.jpg": (7, exif_tagged),
    "trunc.jpg": (8, truncated),
    "huge.jpg": (9, huge),
}
BROKEN_LATER = {"zero.jpg": (10, copy), "gone.jpg": (11, copy), "late.jpg": (12, copy)}


def run_stages(dataset, sim_dataset, out: Path, between=None):
    """Descriptions, detections and masks of ``dataset`` against a fresh simulator of ``sim_dataset``,
    with sim_strong (recall 1, one invented object per image, no latency, no faults)."""
    sim = start_simulator({"coco": sim_dataset}, ports={name: 0 for name in SERVER_NAMES}, seed=0)
    try:
        sim.set_controls(
            "chat",
            model="sim/strong",
            recall=1.0,
            hallucinations=1.0,
            latency_mean_s=0.0,
            faults={"rate_limit": 0.0},
        )
        model = load_model_settings(SIM_STRONG)
        detection = load_detection_settings(REPO / "settings" / "detection" / "detection.json")
        with patched_environ(simulator_environment(sim)):
            services = Services(data_dir=out, concurrency=4)
            descriptions = run_descriptions(dataset.images, model, services)
            if between is not None:
                between()
            detections, per_image = run_detections(dataset.images, descriptions, model, detection, services)
            masks = run_masks(dataset.images, detections, per_image, model, detection, services)
        return descriptions, detections, per_image, masks
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, coco_dir):
    root = tmp_path_factory.mktemp("bad_inputs")
    mixed_dir = build_coco(root / "mixed", coco_dir, {**ORDINARY, **ODD, **BROKEN_LATER})
    clean_dir = build_coco(root / "clean", coco_dir, ORDINARY)
    mixed, clean = load_dataset(mixed_dir, name="coco"), load_dataset(clean_dir, name="coco")
    # The simulator must know every image (it answers from ground truth), so it loads the intact
    # dataset; the files then break after the dataset table was made.
    sim_dataset = load_dataset(mixed_dir, name="coco")
    load_world({"coco": sim_dataset})  # decode every image now (the world is kept per Dataset object)
    (mixed_dir / "data" / "zero.jpg").write_bytes(b"")
    (mixed_dir / "data" / "gone.jpg").unlink()
    got = run_stages(mixed, sim_dataset, root / "out_mixed", between=(mixed_dir / "data" / "late.jpg").unlink)
    want = run_stages(clean, clean, root / "out_clean")
    return mixed, got, want


def rows(frame: pd.DataFrame, ids) -> pd.DataFrame:
    """The rows of ``ids`` without the volatile columns. Text columns as plain objects with None for
    missing: pandas infers a string dtype for a column only when some row has text (here: the error of
    another image), which says nothing about the ordinary images' values."""
    kept = frame[frame["image_id"].isin(ids)].drop(columns=[c for c in VOLATILE if c in frame.columns])
    kept = kept.reset_index(drop=True)
    for column in kept.columns:
        if pd.api.types.is_string_dtype(kept[column].dtype):
            kept[column] = kept[column].astype(object).where(kept[column].notna(), None)
    return kept


def by_id(frame: pd.DataFrame) -> dict[str, dict]:
    return {r["image_id"]: r for r in frame.to_dict("records")}


def test_the_ordinary_images_are_unaffected(outcome):
    _, got, want = outcome
    for mine, reference in zip(got, want, strict=True):
        pd.testing.assert_frame_equal(rows(mine, GOOD), rows(reference, GOOD))
    assert len(rows(want[1], GOOD)) > 0  # the comparison covers detections, not only empty tables


def test_every_image_has_its_rows(outcome):
    mixed, (descriptions, _, per_image, _), _ = outcome
    assert list(descriptions["image_id"]) == list(mixed.images["image_id"])
    assert list(per_image["image_id"]) == list(mixed.images["image_id"])


@pytest.mark.parametrize("image_id", ["gray", "cmyk", "rgba", "deep16", "exif", "trunc", "huge"])
def test_readable_odd_images_are_described_detected_and_segmented(outcome, image_id):
    """As the paper: the VLM gets the file as it is (or re-encoded when larger than png_max_pixels); the
    vision servers get 3-channel 8-bit pixels at full resolution (docs/protocol/pipeline.md gotcha 15). A truncated JPEG whose
    header is intact is sent as it is, as the paper would; the server decides (the simulator decodes it)."""
    _, (descriptions, detections, per_image, masks), _ = outcome
    description = by_id(descriptions)[image_id]
    assert description["success"] and pd.isna(description["error"]) and description["num_described"] >= 1
    assert pd.isna(by_id(per_image)[image_id]["error"])
    found = masks[masks["image_id"] == image_id]
    assert len(found) == by_id(per_image)[image_id]["num_detections"] >= 1
    assert found["segmentation_error"].isna().all()
    if image_id == "huge":  # segmented at full resolution
        assert all(m["size"] == [HUGE, HUGE] for m in found["mask"] if m is not None)
        assert (detections.loc[detections["image_id"] == "huge", ["x2", "y2"]] <= HUGE).all().all()


def test_the_exif_tagged_image_is_loaded_with_a_warning(outcome):
    mixed, *_ = outcome
    warnings = [w for w in mixed.warnings if "exif.jpg" in w]
    assert len(warnings) == 1 and "EXIF orientation 6" in warnings[0] and "images[7].file_name" in warnings[0]
    assert by_id(mixed.images)["exif"]["width"] == Image.open(mixed.images.iloc[7]["path"]).size[0]


@pytest.mark.parametrize(("image_id", "file_name"), [("zero", "zero.jpg"), ("gone", "gone.jpg")])
def test_an_unreadable_image_fails_alone_with_its_file_named(outcome, image_id, file_name):
    _, (descriptions, _, per_image, masks), _ = outcome
    row = by_id(descriptions)[image_id]
    assert not row["success"] and row["attempts"] == 0  # no request was made for it
    assert row["error"] == "image_unreadable" and file_name in row["error_message"]
    assert by_id(per_image)[image_id]["num_prompts"] == 0  # nothing to ground, nothing sent
    assert (masks["image_id"] != image_id).all()


def test_an_image_that_disappears_before_detection_fails_alone_there(outcome):
    _, (descriptions, _, per_image, masks), _ = outcome
    assert by_id(descriptions)["late"]["success"]
    error = by_id(per_image)["late"]["error"]
    assert error is not None and "late.jpg" in error
    assert by_id(per_image)["late"]["num_detections"] == 0 and (masks["image_id"] != "late").all()


# ---------------------------------------------------------------------------- broken when loading


def small_coco(root: Path, coco_dir: Path, break_it) -> Path:
    """Two ordinary images; ``break_it(root, document)`` edits the files or the labels."""
    build_coco(root, coco_dir, {"a.jpg": (0, copy), "b.jpg": (1, copy)})
    document = json.loads((root / "labels.json").read_text())
    break_it(root, document)
    (root / "labels.json").write_text(json.dumps(document))
    return root


def annotation_index(document: dict, image_index: int) -> int:
    image_id = document["images"][image_index]["id"]
    return next(i for i, a in enumerate(document["annotations"]) if a["image_id"] == image_id)


def set_bbox(box_of):
    def edit(root: Path, document: dict) -> None:
        i = annotation_index(document, 1)
        image = document["images"][1]
        document["annotations"][i]["bbox"] = box_of(image["width"], image["height"])

    return edit


@pytest.mark.parametrize(
    ("case", "edit", "field", "words"),
    [
        (
            "zero bytes",
            lambda r, d: (r / "data" / "b.jpg").write_bytes(b""),
            "",
            "b.jpg: not a readable image",
        ),
        ("missing", lambda r, d: (r / "data" / "b.jpg").unlink(), "images[1].file_name", "b.jpg is missing"),
        (
            "box outside",
            set_bbox(lambda w, h: [w + 10, 5, 20, 20]),
            "annotations[{a}].bbox",
            "lies outside the image",
        ),
        ("zero width", set_bbox(lambda w, h: [10, 10, 0, 20]), "annotations[{a}].bbox", "non-positive size"),
        (
            "negative height",
            set_bbox(lambda w, h: [10, 10, 20, -5]),
            "annotations[{a}].bbox",
            "non-positive size",
        ),
    ],
)
def test_a_broken_dataset_is_a_located_error(tmp_path, coco_dir, case, edit, field, words):
    root = small_coco(tmp_path / "ds", coco_dir, edit)
    document = json.loads((root / "labels.json").read_text())
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    message = str(info.value)
    assert words in message
    if field:
        assert info.value.field == field.format(a=annotation_index(document, 1))
        assert info.value.file.endswith("labels.json")


def test_a_box_reaching_past_the_border_is_kept_with_a_warning(tmp_path, coco_dir):
    root = small_coco(tmp_path / "ds", coco_dir, set_bbox(lambda w, h: [w - 10, 5, 20, 20]))
    dataset = load_dataset(root)
    assert len(dataset.warnings) == 1 and "reaches past the image border" in dataset.warnings[0]


def test_labels_with_an_exif_rotated_images_displayed_size_are_explained(tmp_path, coco_dir):
    def rotate(root: Path, document: dict) -> None:
        exif_tagged(root / "data" / "b.jpg", root / "data" / "b.jpg")
        image = document["images"][1]
        image["width"], image["height"] = image["height"], image["width"]  # the size viewers show

    root = small_coco(tmp_path / "ds", coco_dir, rotate)
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    assert info.value.field == "images[1].width"
    assert "EXIF orientation 6" in str(info.value) and "stored pixel frame" in str(info.value)


# ------------------------------------------------------------------------------------------ settings


def edited_model(tmp_path: Path, edit) -> Path:
    raw = json.loads(SIM_STRONG.read_text())
    edit(raw)
    path = tmp_path / "broken_model.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize(
    ("edit", "key", "words"),
    [
        (lambda r: r.update(retyr=3), "retyr", "unknown key 'retyr'"),
        (
            lambda r: r["vlm_structured_description"].update(model_temprature="1.0"),
            "vlm_structured_description.model_temprature",
            "unknown key",
        ),
        (lambda r: r.update(retry="three"), "retry", "got 'three'"),
        (
            lambda r: r["vlm_structured_description"].update(timeout_chunk_first="soon"),
            "vlm_structured_description.timeout_chunk_first",
            "'soon'",
        ),
        (lambda r: r["model"].update(simulated="yes"), "model.simulated", "got 'yes'"),
    ],
)
def test_a_bad_model_file_names_the_file_and_the_key(tmp_path, edit, key, words):
    path = edited_model(tmp_path, edit)
    with pytest.raises(SettingsError) as info:
        load_model_settings(path)
    assert info.value.key == key
    assert str(info.value).startswith("broken_model.json: ") and words in str(info.value)


@pytest.mark.parametrize(
    ("folder", "name", "loader", "edit", "key"),
    [
        ("detection", "detection.json", load_detection_settings, {"conf_treshold": 0.3}, "conf_treshold"),
        (
            "detection",
            "detection.json",
            load_detection_settings,
            {"conf_threshold": "high"},
            "conf_threshold",
        ),
        (
            "label_matching",
            "coco.json",
            load_label_matching_settings,
            {"unknown_option": 1},
            "unknown_option",
        ),
    ],
)
def test_bad_stage_settings_name_the_file_and_the_key(tmp_path, folder, name, loader, edit, key):
    raw = json.loads((REPO / "settings" / folder / name).read_text())
    raw.update(edit)
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    with pytest.raises(SettingsError) as info:
        loader(path)
    assert info.value.key == key and str(info.value).startswith(f"{name}: ")


def test_a_bad_model_file_fails_its_own_partitions_only(tmp_path, coco_dataset):
    """Through Dagster: the broken model's descriptions fail at once (no retry) naming file and key; the
    good model's partition in the same deployment materialises."""
    deployment = Deployment.create(tmp_path / "deployment")
    deployment.write_model("good", "rel/good")
    deployment.write_model("broken", "rel/broken", retry="three")
    sim = start_simulator({"coco": coco_dataset}, ports={name: 0 for name in SERVER_NAMES}, seed=0)
    try:
        with patched_environ(simulator_environment(sim)):
            instance = deployment.instance()
            try:
                defs = deployment.definitions()
                instance.add_dynamic_partitions("models", ["good", "broken"])
                job = defs.resolve_job_def("benchmark_pair_job")
                defs.resolve_job_def("datasets_job").execute_in_process(
                    partition_key="coco", instance=instance
                )
                results = {
                    key: job.execute_in_process(
                        partition_key=str(pair_key("coco", key)),
                        instance=instance,
                        raise_on_error=False,
                        asset_selection=[dg.AssetKey("descriptions")],
                    )
                    for key in ("broken", "good")
                }
            finally:
                instance.dispose()
    finally:
        sim.stop()
    assert results["good"].success and len(deployment.read("descriptions", "coco", "good")) == 32
    broken = results["broken"]
    assert not broken.success
    failures = [e for e in broken.all_events if e.is_step_failure]
    assert len(failures) == 1 and failures[0].step_key == "descriptions"
    message = failures[0].event_specific_data.error.message
    assert "broken.json" in message and "key 'retry'" in message and "got 'three'" in message
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in broken.all_events)
