"""Loading the real datasets: counts from the spec (docs/protocol/evaluation.md §6, ../shared/reference/README.md)
and masks checked against the reference implementations (FiftyOne's own loader, pycocotools)."""

import json

import numpy as np
import pytest

from vlm_gist_dagster.datasets import GROUND_TRUTH_COLUMNS, IMAGE_COLUMNS, decode_fiftyone_mask, load_dataset
from vlm_gist_dagster.protocol.masks import decode_rle


def test_vlm_gist_counts(vlm_gist_dataset):
    ds = vlm_gist_dataset
    assert ds.format == "fiftyone"
    assert list(ds.images.columns) == list(IMAGE_COLUMNS)
    assert list(ds.ground_truth.columns) == list(GROUND_TRUTH_COLUMNS)
    assert ds.num_images == 64
    assert ds.num_instances == 1178
    assert ds.ground_truth["label"].nunique() == 1146
    sizes = ds.images.groupby(["width", "height"]).size().to_dict()
    assert sizes == {(640, 480): 42, (1920, 1080): 21, (3840, 2160): 1}
    assert ds.images.set_index("image_id").loc["00012", ["width", "height"]].tolist() == [3840, 2160]
    # samples.json order is kept (00006 comes after 00009, docs/protocol/evaluation.md gotcha 22)
    assert ds.images["image_id"].tolist()[:10] == [
        "00001",
        "00002",
        "00003",
        "00004",
        "00005",
        "00007",
        "00008",
        "00009",
        "00006",
        "00010",
    ]
    # per-image counts in file order, from the spec (§6 statistics)
    per_image = ds.ground_truth.groupby("image_id", sort=False).size().reindex(ds.images["image_id"]).tolist()
    assert per_image[:12] == [16, 24, 14, 19, 11, 11, 28, 25, 16, 23, 43, 11]
    assert ds.ground_truth["iscrowd"].eq(0).all()
    assert ds.images["sha256"].str.fullmatch(r"[0-9a-f]{64}").all()


def test_vlm_gist_every_mask_is_box_sized(vlm_gist_dir, vlm_gist_dataset):
    samples = json.loads((vlm_gist_dir / "samples.json").read_text())["samples"]
    checked = 0
    for sample in samples:
        width, height = sample["metadata"]["width"], sample["metadata"]["height"]
        for det in sample["ground_truth"]["detections"]:
            mask = decode_fiftyone_mask(det["mask"])
            x, y, w, h = det["bounding_box"]
            assert mask.dtype == bool
            assert mask.shape == (round(h * height), round(w * width))
            checked += 1
    assert checked == 1178


@pytest.fixture(scope="module")
def fiftyone_vlm_gist(vlm_gist_dir):
    import fiftyone as fo

    dataset = fo.Dataset.from_dir(dataset_dir=str(vlm_gist_dir), dataset_type=fo.types.FiftyOneDataset)
    yield dataset
    dataset.delete()


def test_vlm_gist_masks_equal_fiftyone_loading(fiftyone_vlm_gist, vlm_gist_dataset):
    """Our full-image RLE, cropped back to the box, equals the mask FiftyOne itself loads, pixel for pixel,
    and nothing is set outside the box."""
    gt = vlm_gist_dataset.ground_truth.set_index("instance_id")
    compared = 0
    for sample in fiftyone_vlm_gist.iter_samples():
        width, height = sample.metadata.width, sample.metadata.height
        for det in sample.ground_truth.detections:
            ours = decode_rle(gt.loc[det.id, "mask"])
            assert ours.shape == (height, width)
            x, y, _, _ = det.bounding_box
            top, left = round(y * height), round(x * width)
            reference = np.asarray(det.mask, dtype=bool)
            crop = ours[top : top + reference.shape[0], left : left + reference.shape[1]]
            assert np.array_equal(crop, reference)
            assert ours.sum() == reference.sum()  # nothing outside the box
            compared += 1
    assert compared == 1178


def test_coco_sample_counts_and_crowd_removal(coco_dataset, coco_dir):
    ds = coco_dataset
    assert ds.format == "coco"
    assert ds.num_images == 32
    labels = json.loads((coco_dir / "labels.json").read_text())
    assert len(labels["annotations"]) == 288
    # 4 crowd annotations are removed, as the paper did for its COCO subset
    assert ds.num_instances == 284
    assert ds.ground_truth["iscrowd"].eq(0).all()
    kept = load_dataset(coco_dir, crowd="keep")
    assert kept.num_instances == 288 and kept.ground_truth["iscrowd"].sum() == 4
    fixed = load_dataset(coco_dir, crowd="fix")
    assert fixed.num_instances == 288 and fixed.ground_truth["iscrowd"].sum() == 0


def test_coco_masks_and_boxes_equal_pycocotools(coco_dir):
    from pycocotools.coco import COCO

    coco = COCO(str(coco_dir / "labels.json"))
    ds = load_dataset(coco_dir, crowd="keep")
    gt = ds.ground_truth.set_index("instance_id")
    images = ds.images.set_index("image_id")
    for ann in coco.dataset["annotations"]:
        row = gt.loc[str(ann["id"])]
        reference = coco.annToMask(ann).astype(bool)
        assert np.array_equal(decode_rle(row["mask"]), reference)
        img = images.loc[row["image_id"]]
        x, y, w, h = ann["bbox"]
        assert (row["x"], row["y"], row["w"], row["h"]) == pytest.approx(
            (x / img.width, y / img.height, w / img.width, h / img.height), abs=1e-12
        )
        assert row["label"] == coco.cats[ann["category_id"]]["name"]
