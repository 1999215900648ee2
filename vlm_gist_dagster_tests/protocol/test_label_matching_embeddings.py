"""Label matching (stage D): the embedding batch (order, uniqueness, wire form) and the vector table.

Expected values are worked out by hand from docs/protocol/evaluation.md §1.6 and docs/protocol/pipeline.md §2.3.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlm_gist_dagster.protocol import label_matching as lm
from vlm_gist_dagster_tests.conftest import REFERENCE_DIR, SETTINGS_DIR

from .test_label_matching_definitions import notebook_label_sets


@pytest.fixture(scope="module")
def coco_options(shared_dir):
    return lm.as_settings(
        json.loads((SETTINGS_DIR / "label_matching" / "label_matching_settings_coco.json").read_text())
    )


@pytest.fixture(scope="module")
def published_cache(shared_dir):
    return lm.DefinitionsCache.read(REFERENCE_DIR / "definitions.json", missing_ok=False)


def test_notebook_batch_has_728_texts(coco_options, published_cache):
    # docs/protocol/evaluation.md §1.6: the method notebook's call logs 728 = 6 + 2 + 6 + 357 + 357 texts
    sets = notebook_label_sets()
    missing = published_cache.missing(lm.definition_items(sets, coco_options))
    cache = published_cache.updated(
        {item.cache_key: f"Definition number {n}." for n, item in enumerate(missing)}
    )
    groups = lm.embedding_batch_groups(sets, cache, coco_options)
    assert groups.group_sizes == (6, 2, 6, 357, 357)
    texts = lm.embedding_batch(sets, cache, coco_options)
    assert len(texts) == 728
    assert groups.labels == (
        "A ripe banana",
        "GREEn car",
        "FRUIT",
        "Musician playing a guitar",
        "green apple",
        "orange orange",
    )
    assert groups.descriptions == ("it is not yet ripe", "it is very orange")
    # "FRUIT" is defined by the cached definition of the target "fruit": the same text appears in group 3
    # and in group 5; uniqueness is per group, so both stay (otherwise the count would be 727).
    fruit = published_cache["fruit"]
    assert groups.label_definitions[2] == fruit and fruit in groups.target_definitions
    assert texts[:6] == list(groups.labels) and texts[6:8] == list(groups.descriptions)
    assert texts[14:371] == list(coco_options.dataset_targets + coco_options.augmented_targets)


def test_group_order_uniqueness_and_wire_form():
    options = lm.LabelMatchingSettings(
        dataset_targets=("cup", "bowl"), augmented_targets=("plate",), mapping_rules={}
    )
    sets = [
        lm.LabelSet("a.jpg", ["cup_1", "cup_2", "plate"], ["red\ncup", None, "red\ncup"]),
        lm.LabelSet("b.jpg", ["cup", "bowl 3"], [None, "a bowl 3"]),
        lm.LabelSet("c.jpg", []),  # skipped: contributes nothing
    ]
    definitions = {
        "objectnamecupdescriptionredcup": "Def A0\nline 2",
        "cup": "Def cup.",  # label "cup_2"/"cup" without description share the target's definition
        "objectnameplatedescriptionredcup": "Def A2.",
        "objectnamebowldescriptionabowl": "Def B1.",  # desc_norm_for_definition("a bowl 3") = "a bowl"
        "bowl": "Def\nbowl.",
        "plate": "Def plate.  ",
    }
    groups = lm.embedding_batch_groups(sets, definitions, options)
    assert groups.labels == ("cup", "plate", "bowl")  # label_norm, first occurrence
    assert groups.descriptions == ("red cup", "a bowl 3")  # whitespace collapsed, digits kept
    assert groups.label_definitions == ("Def A0 line 2", "Def cup.", "Def A2.", "Def B1.")  # definition_norm
    assert groups.targets == ("cup", "bowl", "plate")
    # target definitions are raw, except for the wire's "\n" → " " (trailing spaces stay)
    assert groups.target_definitions == ("Def cup.", "Def bowl.", "Def plate.  ")
    assert lm.embedding_batch(sets, definitions, options) == [
        "cup",
        "plate",
        "bowl",
        "red cup",
        "a bowl 3",
        "Def A0 line 2",
        "Def cup.",
        "Def A2.",
        "Def B1.",
        "cup",
        "bowl",
        "plate",
        "Def cup.",
        "Def bowl.",
        "Def plate.  ",
    ]


def test_define_flags_drop_their_groups():
    sets = [lm.LabelSet("a.jpg", ["mug"], ["a mug"])]
    bare = lm.LabelMatchingSettings(
        dataset_targets=("cup",),
        define_labels=False,
        define_targets=False,
        augmented_targets=(),
        mapping_rules={},
    )
    assert lm.embedding_batch(sets, None, bare) == ["mug", "a mug", "cup"]


def test_per_image_targets_are_embedded_raw_with_newlines_replaced():
    options = lm.LabelMatchingSettings(
        use_per_set_targets=True,
        define_labels=False,
        define_targets=False,
        dataset_targets=(),
        augmented_targets=(),
        mapping_rules={},
    )
    sets = [
        lm.LabelSet("1.jpg", ["mug"], targets=["A white mug\non the table.", "A red  chair."]),
        lm.LabelSet("2.jpg", ["chair"], targets=["A red  chair.", "A lamp."]),
    ]
    groups = lm.embedding_batch_groups(sets, None, options)
    # raw: double spaces stay; only "\n" becomes " " on the wire; unique across sets
    assert groups.targets == ("A white mug on the table.", "A red  chair.", "A lamp.")


def test_empty_texts_are_rejected_naming_the_source():
    options = lm.LabelMatchingSettings(
        dataset_targets=("cup",),
        define_labels=False,
        define_targets=False,
        augmented_targets=(),
        mapping_rules={},
    )
    with pytest.raises(lm.EmptyEmbeddingTextError, match="label set 'a.jpg' detection 1: label ''"):
        lm.embedding_batch([lm.LabelSet("a.jpg", ["mug", ""])], None, options)
    with pytest.raises(lm.EmptyEmbeddingTextError, match="description ''"):
        lm.embedding_batch([lm.LabelSet("a.jpg", ["mug"], [""])], None, options)
    with pytest.raises(lm.EmptyEmbeddingTextError):
        lm.embedding_input("")
    assert lm.embedding_input("\n") == " "  # not empty once transformed: sent as is


def test_missing_definitions_are_listed():
    options = lm.LabelMatchingSettings(dataset_targets=("cup",), augmented_targets=(), mapping_rules={})
    with pytest.raises(lm.MissingDefinitionsError) as error:
        lm.embedding_batch([lm.LabelSet("a.jpg", ["mug"])], {"cup": "A cup."}, options)
    assert error.value.keys == ("mug",)


def test_embedding_table_looks_up_by_wire_text():
    table = lm.EmbeddingTable(["a b", "c", "a b"], [[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]])
    assert len(table) == 2 and table.dimension == 2
    assert "a\nb" in table and "zzz" not in table
    # first vector wins for a duplicate text; "a\nb" is looked up as "a b"
    np.testing.assert_array_equal(table.matrix(["a\nb", "c"]), [[1.0, 0.0], [0.0, 2.0]])
    with pytest.raises(lm.MissingEmbeddingsError) as error:
        table.matrix(["c", "d", "e"])
    assert error.value.texts == ("d", "e")
    with pytest.raises(ValueError, match="2 texts but 1"):
        lm.EmbeddingTable(["a", "b"], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="NaN"):
        lm.EmbeddingTable(["a"], [[np.nan, 0.0]])
    from_mapping = lm.as_embedding_table({"x": [1.0, 2.0]})
    np.testing.assert_array_equal(from_mapping.matrix(["x"]), [[1.0, 2.0]])
