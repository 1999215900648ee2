"""The simulated validation VLM (docs/protocol/pipeline.md §5): a crop of a described instance is answered with
that instance's ``object_name``, any other crop with the invalid token. Requests are built with the
project's own validation client code (messages, crops), as the validations stage sends them."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from vlm_gist_dagster.protocol.images import data_uri, prepare_image
from vlm_gist_dagster.protocol.settings import load_validation_settings
from vlm_gist_dagster.protocol.structured_description import rename_duplicates
from vlm_gist_dagster.protocol.validation import (
    encode_crop_png,
    parse_validation_response,
    validation_crop_with_settings,
    validation_messages_with_settings,
)
from vlm_gist_dagster.sim.validation import locate_crop

from .conftest import image_path
from .test_chat import describe_body

SETTINGS = load_validation_settings(
    Path(__file__).resolve().parents[2] / "settings" / "validation" / "validation.json"
)


def test_locate_crop_finds_the_exact_box_in_a_real_photo(vlm_gist_dataset):
    image = cv2.imread(image_path(vlm_gist_dataset, vlm_gist_dataset.images["image_id"].iloc[0]))
    height, width = image.shape[:2]
    assert max(height, width) > 1000  # the coarse search runs on a down-scaled copy
    for x1, y1, x2, y2 in [
        (10, 20, 410, 330),
        (width - 97, height - 61, width, height),
        (800, 400, 1100, 1000),
    ]:
        assert locate_crop(image, image[y1:y2, x1:x2].copy()) == (x1, y1, x2, y2)
    assert locate_crop(image[:50, :50], image[:60, :10]) is None  # taller than the image


@pytest.fixture(scope="module")
def coco_case(simulator, coco_dataset):
    """One COCO image: its prepared copy, the simulator's structured description of it, and its GT."""
    image_id = "000000037777"  # 352 x 230, 11 GT instances
    prepared = prepare_image(image_path(coco_dataset, image_id), None)
    with httpx.Client(headers={"Authorization": "Bearer t"}, timeout=30) as client:
        body = describe_body(prepared.data_uri.split(",", 1)[1], model="sim/strong")
        r = client.post(simulator.chat_completions_url, json=body)
    objects = json.loads(r.json()["choices"][0]["message"]["content"])
    objects = objects if isinstance(objects, list) else next(iter(objects.values()))
    # Unique names, as stage A makes them ("chair", "chair" -> "chair 1", "chair 2").
    for obj, name in zip(objects, rename_duplicates([o["object_name"] for o in objects]), strict=True):
        obj["object_name"] = name
    gt = coco_dataset.ground_truth[coco_dataset.ground_truth["image_id"] == image_id]
    image = cv2.imdecode(np.frombuffer(prepared.data, np.uint8), cv2.IMREAD_COLOR)
    return prepared, image, objects, gt


def ask(simulator, prepared, image, objects, box) -> str:
    crop = encode_crop_png(validation_crop_with_settings(image, box, SETTINGS))
    messages = validation_messages_with_settings(prepared.data_uri, data_uri(crop), objects, SETTINGS)
    body = {"model": "google/gemini-2.5-flash", "messages": messages, "max_tokens": 50, "stream": False}
    with httpx.Client(headers={"Authorization": "Bearer t"}, timeout=30) as client:
        r = client.post(simulator.chat_completions_url, json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_a_crop_of_a_described_instance_is_answered_with_its_object_name(simulator, coco_case):
    prepared, image, objects, gt = coco_case
    height, width = image.shape[:2]
    names = [o["object_name"] for o in objects]
    answered = {}
    for row in gt.itertuples():
        box = (
            round(row.x * width),
            round(row.y * height),
            round((row.x + row.w) * width),
            round((row.y + row.h) * height),
        )
        text = ask(simulator, prepared, image, objects, box)
        parsed = parse_validation_response(text, names, invalid="n/a", levenshtein_threshold=2).validation
        answered[row.label] = answered.get(row.label, []) + [parsed]
    # Every answer names an object of the description (or is the invalid token), each with the GT class
    # its description talks about; the strong model describes most instances, so most crops are kept.
    kept = [(label, a) for label, answers in answered.items() for a in answers if a != "n/a"]
    assert len(kept) >= 0.6 * len(gt)
    assert len({name for _, name in kept}) == len(kept)  # each instance its own object (3 chairs, 5 oranges)
    descriptions = {o["object_name"]: o["description"] for o in objects}
    for label, name in kept:
        assert name in names
        assert label in descriptions[name] or label == "person"  # person descriptions speak of clothes


def test_a_crop_of_no_instance_is_answered_with_the_invalid_token(simulator, coco_case):
    prepared, image, objects, _ = coco_case
    # A thin strip along the top-left border, tight around nothing.
    assert ask(simulator, prepared, image, objects, (0, 0, 12, 230)) == "n/a"
    # A box around a real instance, but a description that names none of them: nothing to answer.
    invented = [{"object_name": "unicorn", "description": "A unicorn grazing on the table."}]
    assert ask(simulator, prepared, image, invented, (0, 0, 352, 230)) == "n/a"
