"""Bad dataset input gives an error naming the file and the field; nothing is silently skipped."""

import json
import shutil
from pathlib import Path

import pytest

from vlm_gist_dagster.datasets import DatasetError, load_dataset


def _mini_fiftyone_export(src: Path, dst: Path, samples: int = 2) -> dict:
    """A small copy of the VLM-GIST export (2 images) to corrupt in a test."""
    document = json.loads((src / "samples.json").read_text())
    document["samples"] = document["samples"][:samples]
    (dst / "data").mkdir(parents=True)
    for s in document["samples"]:
        shutil.copy(src / s["filepath"], dst / s["filepath"])
    shutil.copy(src / "metadata.json", dst / "metadata.json")
    (dst / "samples.json").write_text(json.dumps(document))
    return document


def _mini_coco(src: Path, dst: Path, images: int = 2) -> dict:
    document = json.loads((src / "labels.json").read_text())
    document["images"] = document["images"][:images]
    ids = {im["id"] for im in document["images"]}
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] in ids]
    (dst / "data").mkdir(parents=True)
    for im in document["images"]:
        shutil.copy(src / "data" / im["file_name"], dst / "data" / im["file_name"])
    (dst / "labels.json").write_text(json.dumps(document))
    return document


def test_mini_copies_load(tmp_path, vlm_gist_dir, coco_dir):
    assert load_dataset(_write(tmp_path / "fo", vlm_gist_dir, _mini_fiftyone_export)).num_images == 2
    assert load_dataset(_write(tmp_path / "coco", coco_dir, _mini_coco)).num_images == 2


def _write(dst, src, maker):
    maker(src, dst)
    return dst


def test_unparseable_samples_json_names_the_file(tmp_path, vlm_gist_dir):
    _mini_fiftyone_export(vlm_gist_dir, tmp_path)
    (tmp_path / "samples.json").write_text('{"samples": [')
    with pytest.raises(DatasetError, match=r"samples\.json: not valid JSON"):
        load_dataset(tmp_path)


def test_missing_image_names_file_and_field(tmp_path, vlm_gist_dir):
    document = _mini_fiftyone_export(vlm_gist_dir, tmp_path)
    (tmp_path / document["samples"][1]["filepath"]).unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    assert "samples.json" in str(err.value) and "samples[1].filepath" in str(err.value)
    assert err.value.field == "samples[1].filepath"


def test_non_positive_box_names_the_detection(tmp_path, vlm_gist_dir):
    document = _mini_fiftyone_export(vlm_gist_dir, tmp_path)
    document["samples"][0]["ground_truth"]["detections"][3]["bounding_box"] = [0.1, 0.1, 0.0, 0.2]
    (tmp_path / "samples.json").write_text(json.dumps(document))
    with pytest.raises(
        DatasetError, match=r"samples\[0\]\.ground_truth\.detections\[3\]\.bounding_box.*non-positive"
    ):
        load_dataset(tmp_path)


def test_box_outside_image_is_an_error_and_overhang_a_warning(tmp_path, vlm_gist_dir):
    document = _mini_fiftyone_export(vlm_gist_dir, tmp_path)
    dets = document["samples"][0]["ground_truth"]["detections"]
    dets[0]["bounding_box"] = [1.2, 0.1, 0.1, 0.1]
    (tmp_path / "samples.json").write_text(json.dumps(document))
    with pytest.raises(DatasetError, match="lies outside the image"):
        load_dataset(tmp_path)
    dets[0]["bounding_box"] = [0.95, 0.1, 0.1, 0.1]
    del dets[0]["mask"]
    (tmp_path / "samples.json").write_text(json.dumps(document))
    ds = load_dataset(tmp_path)
    assert len(ds.warnings) == 1 and "detections[0].bounding_box" in ds.warnings[0]
    assert ds.ground_truth.iloc[0][["x", "w"]].tolist() == [0.95, 0.1]  # kept as is, like FiftyOne


def test_corrupt_mask_names_the_field(tmp_path, vlm_gist_dir):
    document = _mini_fiftyone_export(vlm_gist_dir, tmp_path)
    document["samples"][1]["ground_truth"]["detections"][2]["mask"] = {
        "$binary": {"base64": "bm90IHpsaWI=", "subType": "00"}
    }
    (tmp_path / "samples.json").write_text(json.dumps(document))
    with pytest.raises(DatasetError, match=r"detections\[2\]\.mask.*undecodable"):
        load_dataset(tmp_path)


def test_truncated_image_is_reported(tmp_path, vlm_gist_dir):
    document = _mini_fiftyone_export(vlm_gist_dir, tmp_path)
    path = tmp_path / document["samples"][0]["filepath"]
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="not a readable image"):
        load_dataset(tmp_path)


def test_malformed_labels_json_names_the_field(tmp_path, coco_dir):
    document = _mini_coco(coco_dir, tmp_path)
    document["annotations"][0]["category_id"] = 999
    (tmp_path / "labels.json").write_text(json.dumps(document))
    with pytest.raises(
        DatasetError, match=r"labels\.json, field 'annotations\[0\]\.category_id': unknown category_id 999"
    ):
        load_dataset(tmp_path)
    (tmp_path / "labels.json").write_text("[1, 2")
    with pytest.raises(DatasetError, match=r"labels\.json: not valid JSON"):
        load_dataset(tmp_path)


def test_coco_missing_image_and_size_mismatch(tmp_path, coco_dir):
    document = _mini_coco(coco_dir, tmp_path)
    document["images"][1]["width"] += 1
    (tmp_path / "labels.json").write_text(json.dumps(document))
    with pytest.raises(DatasetError, match=r"images\[1\]\.width"):
        load_dataset(tmp_path)
    document["images"][1]["width"] -= 1
    (tmp_path / "labels.json").write_text(json.dumps(document))
    (tmp_path / "data" / document["images"][0]["file_name"]).unlink()
    with pytest.raises(DatasetError, match=r"images\[0\]\.file_name.*missing"):
        load_dataset(tmp_path)


def test_unknown_layout(tmp_path):
    with pytest.raises(DatasetError, match="unrecognised dataset layout"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
