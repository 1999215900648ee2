"""Label matching (stage D): what gets defined, the definition requests and the definitions cache file.

Expected values are worked out by hand from docs/protocol/evaluation.md §1.5; the published cache is read from
``../shared/reference/definitions.json`` as is.
"""

from __future__ import annotations

import json

import pytest

from vlm_gist_dagster.protocol import label_matching as lm
from vlm_gist_dagster_tests.conftest import REFERENCE_DIR

PUBLISHED_CACHE = REFERENCE_DIR / "definitions.json"

COCO_TOY = lm.LabelMatchingSettings(
    dataset_targets=("cup", "bottle"), augmented_targets=("guitar",), mapping_rules={}
)


@pytest.fixture(scope="module")
def coco_options(reference_settings_dir):
    path = reference_settings_dir / "label_matching" / "label_matching_settings_coco.json"
    return lm.as_settings(json.loads(path.read_text()))


@pytest.fixture(scope="module")
def published_cache(shared_dir):
    return lm.DefinitionsCache.read(PUBLISHED_CACHE, missing_ok=False)


# ----------------------------------------------------------------------------------------------
# Definition items
# ----------------------------------------------------------------------------------------------


def test_json_item_text_and_key():
    item, warnings = lm.detection_definition_item("A ripe banana", "it is not yet ripe")
    assert item.text == '{\n    "object_name": "A ripe banana",\n    "description": "it is not yet ripe"\n}'
    assert item.cache_key == "objectnamearipebananadescriptionitisnotyetripe"
    assert item.is_item and warnings == ()


def test_json_item_strips_trailing_numbers_from_label_and_description():
    item, _ = lm.detection_definition_item("cup_2", "a  red\ncup 3")
    assert item.text == '{\n    "object_name": "cup",\n    "description": "a red cup"\n}'
    assert item.cache_key == "objectnamecupdescriptionaredcup"


def test_json_item_escapes_non_ascii_before_the_key():
    # ensure_ascii=True: "é" → "\u00e9", whose backslash then disappears in the key (gotcha §9.8)
    item, _ = lm.detection_definition_item("Café 2", "crème brûlée")
    assert (
        item.text
        == '{\n    "object_name": "Caf\\u00e9",\n    "description": "cr\\u00e8me br\\u00fbl\\u00e9e"\n}'
    )
    assert item.cache_key == "objectnamecafu00e9descriptioncru00e8mebru00fblu00e9e"
    # a plain label is transliterated by unidecode instead
    plain, _ = lm.detection_definition_item("Café 2", None)
    assert (plain.text, plain.cache_key, plain.is_item) == ("Café", "cafe", False)


def test_json_item_falls_back_to_raw_values_with_the_papers_warnings():
    item, warnings = lm.detection_definition_item("2", "7")
    assert item.text == '{\n    "object_name": "2",\n    "description": "7"\n}'
    assert warnings == (
        "Using original label '2' to generate definition after normalization yielded an empty string.",
        "Using original description '7' to generate definition after normalization yielded an empty string.",
    )


def test_plain_item_has_no_fallback_like_the_reference():
    # without description the reference defines the raw-normalised label, even when it is empty
    item, warnings = lm.detection_definition_item("2", None)
    assert (item.text, item.cache_key, item.is_item, warnings) == ("", "", False, ())


def test_item_indent_and_key_names_come_from_the_settings():
    options = lm.LabelMatchingSettings(
        definition_item_indent=None, definition_item_key_name="name", definition_item_key_description="desc"
    )
    item, _ = lm.detection_definition_item("cup", "red", options)
    assert item.text == '{"name": "cup", "desc": "red"}'


def test_definition_items_unique_by_key_labels_first_then_targets():
    sets = [
        lm.LabelSet("a.jpg", ["Cup 1", "cup_2", "mug"], ["a red cup", None, None]),
        lm.LabelSet("b.jpg", ["guitar", "CUP"], [None, "A red cup!"]),
        lm.LabelSet("c.jpg", []),  # skipped: contributes nothing
    ]
    items = lm.definition_items(sets, COCO_TOY)
    assert [(i.text, i.cache_key, i.is_item) for i in items] == [
        (
            '{\n    "object_name": "Cup",\n    "description": "a red cup"\n}',
            "objectnamecupdescriptionaredcup",
            True,
        ),
        ("cup", "cup", False),  # label "cup_2" without description
        ("mug", "mug", False),
        ("guitar", "guitar", False),
        # "CUP" + "A red cup!" has the same key as the first item: first occurrence wins
        # targets: "cup" and "guitar" already present by key; only "bottle" is new
        ("bottle", "bottle", False),
    ]


def test_definition_items_respect_define_flags():
    sets = [lm.LabelSet("a.jpg", ["mug"])]
    only_targets = lm.LabelMatchingSettings(
        dataset_targets=("cup",), define_labels=False, augmented_targets=(), mapping_rules={}
    )
    assert [i.text for i in lm.definition_items(sets, only_targets)] == ["cup"]
    only_labels = lm.LabelMatchingSettings(
        dataset_targets=("cup",), define_targets=False, augmented_targets=(), mapping_rules={}
    )
    assert [i.text for i in lm.definition_items(sets, only_labels)] == ["mug"]


def test_per_image_items_are_detections_then_gt_labels(vlm_gist_dataset):
    gt = vlm_gist_dataset.ground_truth
    image_labels = gt[gt["image_id"] == "00001"]["label"].tolist()
    assert len(image_labels) == 16  # docs/protocol/evaluation.md §6: 16 GT instances in the first image
    sets = [lm.LabelSet("00001.jpg", ["chair 1", "chair 2"], ["a wooden chair", None], targets=image_labels)]
    items = lm.definition_items(
        sets,
        lm.LabelMatchingSettings(
            use_per_set_targets=True, dataset_targets=(), augmented_targets=(), mapping_rules={}
        ),
    )
    # 2 detection items + 16 GT sentences (unique within an image), GT in GT order
    assert len(items) == 18
    assert [i.text for i in items[2:]] == image_labels
    assert items[2].text == "A braided money tree in a white pot standing on the floor."


# ----------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------


def test_definition_requests_carry_messages_prompt_choice_and_llm(coco_options):
    item, _ = lm.detection_definition_item("A ripe banana", "it is not yet ripe")
    request = lm.definition_request(item, coco_options)
    assert request.messages == [
        {"role": "system", "content": lm.DEFINITION_PROMPT_SYSTEM},
        {
            "role": "user",
            "content": "Please define and describe the characteristic properties of the "
            "following term in 5 sentences: " + item.text,
        },
    ]
    assert request.prompt.paper_swap and request.prompt.template == "definition_prompt_label"
    assert request.llm.model_name == "gpt-4o-2024-11-20" and request.llm.model_temperature == 1.0
    assert request.llm.model_max_tokens == 2000 and request.llm.correction_attempts == 2
    fixed = lm.definition_request(item, lm.LabelMatchingSettings(fix_definition_prompt_swap=True))
    assert fixed.prompt.template == "definition_prompt_item" and not fixed.prompt.paper_swap


# ----------------------------------------------------------------------------------------------
# The cache file
# ----------------------------------------------------------------------------------------------


def test_published_cache_is_read_as_is(published_cache, coco_options):
    assert len(published_cache) == 357
    # spot checks of keys named in the spec
    for key in ("airconditioner", "airplane", "sportsball", "hairdrier", "tv", "yogamat", "americanfootball"):
        assert key in published_cache
    assert published_cache["airplane"].startswith("An airplane, also known as an aeroplane, is a powered")
    # every COCO and augmented target has its definition, and nothing else is in the file
    targets = coco_options.dataset_targets + coco_options.augmented_targets
    assert sorted(lm.cache_key(t) for t in targets) == sorted(published_cache)


def test_all_coco_target_definitions_are_cached(published_cache, coco_options):
    sets = [lm.LabelSet("x.jpg", ["GREEn car"])]
    missing = published_cache.missing(lm.definition_items(sets, coco_options))
    assert [(i.text, i.cache_key) for i in missing] == [("GREEn car", "greencar")]


def test_notebook_example_needs_five_new_definitions(published_cache, coco_options):
    # method notebook (docs/protocol/evaluation.md §1.9): "FRUIT" has the key of the augmented target "fruit", so it is cached
    sets = notebook_label_sets()
    missing = published_cache.missing(lm.definition_items(sets, coco_options))
    assert [i.cache_key for i in missing] == [
        "objectnamearipebananadescriptionitisnotyetripe",
        "greencar",
        "musicianplayingaguitar",
        "greenapple",
        "objectnameorangeorangedescriptionitisveryorange",
    ]
    requests = lm.definition_requests(missing, coco_options)
    assert [r.prompt.template for r in requests] == [
        "definition_prompt_label",
        "definition_prompt_item",
        "definition_prompt_item",
        "definition_prompt_item",
        "definition_prompt_label",
    ]


def test_cache_round_trip_is_byte_identical(published_cache, tmp_path):
    out = tmp_path / "cache" / "definitions.json"
    published_cache.write(out)
    assert out.read_bytes() == PUBLISHED_CACHE.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["definitions.json"]  # no temp file left


def test_cache_update_appends_and_refuses_to_overwrite(tmp_path):
    cache = lm.DefinitionsCache({"cup": "A cup."})
    updated = cache.updated({"mug": "A mug é."})
    assert len(cache) == 1 and list(updated) == ["cup", "mug"]
    path = tmp_path / "d.json"
    updated.write(path)
    # 2-space indent, non-ASCII kept, no trailing newline
    assert path.read_text(encoding="utf-8") == '{\n  "cup": "A cup.",\n  "mug": "A mug é."\n}'
    assert dict(lm.DefinitionsCache.read(path)) == {"cup": "A cup.", "mug": "A mug é."}
    assert cache.updated({"cup": "A cup."})["cup"] == "A cup."  # same value: fine
    with pytest.raises(lm.DefinitionsCacheError, match="overwrite"):
        cache.updated({"cup": "Something else."})


def test_cache_read_errors_name_the_file(tmp_path):
    assert len(lm.DefinitionsCache.read(tmp_path / "absent.json")) == 0
    with pytest.raises(lm.DefinitionsCacheError, match="does not exist"):
        lm.DefinitionsCache.read(tmp_path / "absent.json", missing_ok=False)
    bad = tmp_path / "list.json"
    bad.write_text("[1, 2]")
    with pytest.raises(lm.DefinitionsCacheError, match="list.json: expected a JSON object"):
        lm.DefinitionsCache.read(bad)
    bad.write_text('{"cup": 3}')
    with pytest.raises(lm.DefinitionsCacheError, match="'cup'"):
        lm.DefinitionsCache.read(bad)
    bad.write_text("{not json")
    with pytest.raises(lm.DefinitionsCacheError, match="not valid UTF-8 JSON"):
        lm.DefinitionsCache.read(bad)


def test_lookup_lists_every_missing_key():
    with pytest.raises(lm.MissingDefinitionsError) as error:
        lm.lookup_definitions({"cup": "A cup."}, ["cup", "mug", "bowl", "mug"])
    assert error.value.keys == ("mug", "bowl")
    assert "2 definition(s) missing" in str(error.value)


def notebook_label_sets() -> list[lm.LabelSet]:
    """The method notebook's call (docs/protocol/evaluation.md §1.9), as two label sets."""
    return [
        lm.LabelSet(
            "0",
            ["A ripe banana", "GREEn car", "FRUIT", "Musician\nplaying a guitar"],
            ["it is not yet ripe", None, None, None],
        ),
        lm.LabelSet("1", ["green apple", "orange orange"], [None, "it is very orange"]),
    ]
