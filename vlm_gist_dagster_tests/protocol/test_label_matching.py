"""Label matching (stage D): text normalisations, cache keys, settings, label sets and prompts.

Expected values are worked out by hand from docs/protocol/evaluation.md §1.4, §1.5 and §1.1–1.3.
"""

from __future__ import annotations

import json
import warnings

import pytest
from pydantic import ValidationError

from vlm_gist_dagster.protocol import label_matching as lm
from vlm_gist_dagster.protocol.label_matching import cache_key, label_norm
from vlm_gist_dagster.protocol.settings import SettingsError, load_label_matching_settings

# ----------------------------------------------------------------------------------------------
# §1.4 normalisations
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cup_2", "cup"),
        ("cup2", "cup"),
        ("cup 2", "cup"),
        ("Route 66", "Route"),
        ("  red\n  mug 3", "red mug"),
        ("mug_a", "mug_a"),
        ("A ripe banana", "A ripe banana"),  # case is kept
        ("cup_2_3", "cup_2"),  # only one trailing run goes
        ("cup__2", "cup_"),  # only one "_" goes with the digits
        ("cup 2\n", "cup"),  # Python's `$` also matches before a final newline
        ("mug\t 7 ", "mug 7"),  # digits not at the very end stay ("7 " ends in a space)
    ],
)
def test_label_norm_examples(text, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these falls back
        assert label_norm(text) == expected


def test_label_norm_falls_back_to_the_original_with_a_warning():
    with pytest.warns(lm.NormalizationFallbackWarning, match="label_norm"):
        assert label_norm("2") == "2"
    with pytest.warns(lm.NormalizationFallbackWarning):
        assert label_norm(" _42") == " _42"  # "" after stripping → the original, untouched
    assert lm.normalize_label("2") == lm.Normalized("2", fallback=True)
    assert lm.strip_label_number("2") == ""  # the raw form used for plain definition items


def test_description_normalisations_differ_on_trailing_digits():
    # for the definition item: the label rule (digits go); for the embedding: whitespace only
    assert lm.desc_norm_for_definition("it is not yet ripe 2") == "it is not yet ripe"
    assert lm.desc_norm_for_embedding("it is not yet ripe 2") == "it is not yet ripe 2"
    assert lm.desc_norm_for_embedding("  a\n\tred  mug ") == "a red mug"
    with pytest.warns(lm.NormalizationFallbackWarning):
        assert lm.desc_norm_for_embedding(" \n ") == " \n "
    with pytest.warns(lm.NormalizationFallbackWarning):
        assert lm.desc_norm_for_definition("3") == "3"


def test_definition_norm_collapses_whitespace_only():
    assert lm.definition_norm("A cup.\n\nIt holds  liquids 2") == "A cup. It holds liquids 2"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("baseball bat", "baseballbat"),
        ("hair drier", "hairdrier"),
        ("T-shirt's", "tshirts"),
        ("Cell Phone!!", "cellphone"),
        ("sports ball", "sportsball"),
        ("Café", "cafe"),  # unidecode first
        (
            '{\n    "object_name": "A ripe banana",\n    "description": "it is not yet ripe"\n}',
            "objectnamearipebananadescriptionitisnotyetripe",
        ),
    ],
)
def test_cache_key_examples(text, expected):
    assert cache_key(text) == expected


def test_normalisers_reject_non_strings():
    with pytest.raises(TypeError):
        label_norm(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cache_key(3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Settings (§1.2): the published files read as is
# ----------------------------------------------------------------------------------------------


def _paper_settings(reference_settings_dir, name):
    return json.loads(
        (reference_settings_dir / "label_matching" / f"label_matching_settings_{name}.json").read_text()
    )


def test_coco_settings_file_is_read_as_is(reference_settings_dir):
    options = lm.as_settings(_paper_settings(reference_settings_dir, "coco"))
    assert len(options.dataset_targets) == 80 and len(options.augmented_targets) == 277
    assert options.dataset_targets[:3] == ("airplane", "apple", "backpack")
    assert options.augmented_targets[-1] == "yoga mat"
    assert len(options.mapping_rules) == 11
    assert options.mapping_rules["monitor"] == "tv"
    assert options.mapping_rules["soap dispenser"] == "bottle"
    assert options.mapping_rules["table tennis ball"] == "sports ball"
    assert not options.use_per_set_targets and options.allow_duplicate_labels
    assert options.define_labels and options.define_targets and options.definition_item_indent == 4
    assert options.levenshtein_threshold == 0
    assert options.fix_definition_prompt_swap is False  # the paper's swap by default
    # the file's prompt strings are exactly our constants
    assert options.definition_prompt_system == lm.DEFINITION_PROMPT_SYSTEM
    assert options.definition_prompt_item == lm.DEFINITION_PROMPT_ITEM
    assert options.definition_prompt_label == lm.DEFINITION_PROMPT_LABEL
    # LLM values are strings in the file ("1.0", "True", "2000")
    llm = options.llm
    assert (llm.api_endpoint, llm.model_name) == ("OpenAI", "gpt-4o-2024-11-20")
    assert (llm.model_temperature, llm.model_top_p, llm.model_max_tokens) == (1.0, 1.0, 2000)
    assert (llm.model_presence_penalty, llm.model_frequency_penalty, llm.model_reasoning_effort) == (
        0.0,
        0.0,
        "none",
    )
    assert llm.stream_completion is True and llm.correction_attempts == 2
    assert (llm.timeout_chunk_first, llm.timeout_chunk_next, llm.timeout_completion) == (15.0, 15.0, 30.0)
    assert (
        llm.probe_api_connection is True
        and llm.completion_parsers == ()
        and llm.normalize_text_completion is False
    )


def test_settings_model_is_accepted(reference_settings_dir):
    path = reference_settings_dir / "label_matching" / "label_matching_settings_coco.json"
    settings = load_label_matching_settings(path)
    options = lm.as_settings(settings)
    assert options.mapping_rules["tennis ball"] == "sports ball" and options.llm == settings.llm
    fixed = lm.as_settings(settings.model_copy(update={"fix_definition_prompt_swap": True}))
    assert fixed.fix_definition_prompt_swap is True


def test_per_image_settings_file_is_read_as_is(reference_settings_dir):
    options = lm.as_settings(_paper_settings(reference_settings_dir, "per_image"))
    assert options.use_per_set_targets
    assert (
        options.dataset_targets == ()
        and options.augmented_targets == ()
        and dict(options.mapping_rules) == {}
    )


def test_per_image_settings_with_target_lists_are_an_error(reference_settings_dir):
    settings = _paper_settings(reference_settings_dir, "per_image") | {"dataset_targets": ["cup"]}
    with pytest.raises(SettingsError, match="must be empty"):
        lm.as_settings(settings)
    with pytest.raises(
        ValidationError, match="dataset_targets/augmented_targets: must be empty when use_per_set_targets"
    ):
        lm.LabelMatchingSettings(
            use_per_set_targets=True, dataset_targets=("cup",), augmented_targets=(), mapping_rules={}
        )


def test_unknown_or_malformed_settings_name_the_key(reference_settings_dir):
    settings = _paper_settings(reference_settings_dir, "coco")
    with pytest.raises(SettingsError, match="'allow_duplicates'"):
        lm.as_settings(settings | {"allow_duplicates": True})
    with pytest.raises(SettingsError, match="llm.model_temperature"):
        lm.as_settings(settings | {"llm": settings["llm"] | {"model_temperature": "hot"}})
    with pytest.raises(TypeError, match="LabelMatchingSettings"):
        lm.as_settings(None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Label sets, skipping and targets (§1.1, §1.3, gotcha §9.23)
# ----------------------------------------------------------------------------------------------

COCO_TOY = lm.LabelMatchingSettings(
    dataset_targets=("cup", "bottle"), augmented_targets=("guitar",), mapping_rules={}
)
PER_IMAGE = lm.LabelMatchingSettings(
    use_per_set_targets=True, dataset_targets=(), augmented_targets=(), mapping_rules={}
)


def test_samples_without_detections_or_ground_truth_are_skipped_explicitly():
    sets = [
        lm.LabelSet("00001.jpg", ["cup"]),
        lm.LabelSet("00002.jpg", []),
        lm.LabelSet("00003.jpg", ["mug"], targets=None),
    ]
    active, skipped = lm.partition_label_sets(sets, COCO_TOY)
    assert [s.identifier for s in active] == ["00001.jpg", "00003.jpg"]
    assert skipped == [lm.SkippedLabelSet("00002.jpg", "no_detections")]

    per_image = [
        lm.LabelSet("a.jpg", ["cup"], targets=["A red cup."]),
        lm.LabelSet("b.jpg", ["cup"], targets=None),
        lm.LabelSet("c.jpg", ["cup"], targets=[]),
        lm.LabelSet("d.jpg", [], targets=["A red cup."]),
    ]
    active, skipped = lm.partition_label_sets(per_image, PER_IMAGE)
    assert [s.identifier for s in active] == ["a.jpg"]
    assert [(s.identifier, s.reason) for s in skipped] == [
        ("b.jpg", "no_ground_truth"),
        ("c.jpg", "no_ground_truth"),
        ("d.jpg", "no_detections"),
    ]


def test_targets_per_mode():
    coco_set = lm.LabelSet("x", ["cup"])
    assert lm.current_targets(coco_set, COCO_TOY) == ("cup", "bottle", "guitar")  # dataset + augmented
    assert lm.current_dataset_targets(coco_set, COCO_TOY) == {"cup", "bottle"}
    image_set = lm.LabelSet("y", ["cup"], targets=["A red cup.", "A blue plate."])
    assert lm.current_targets(image_set, PER_IMAGE) == ("A red cup.", "A blue plate.")  # GT order
    assert lm.current_dataset_targets(image_set, PER_IMAGE) == {"A red cup.", "A blue plate."}
    sets = [image_set, lm.LabelSet("z", ["mug"], targets=["A blue plate.", "A fork."])]
    assert lm.matching_targets(sets, PER_IMAGE) == ("A red cup.", "A blue plate.", "A fork.")


def test_label_set_errors_name_the_set():
    with pytest.raises(lm.LabelSetError, match="'img.jpg'.*2 descriptions for 1 labels"):
        lm.LabelSet("img.jpg", ["cup"], ["a", "b"])
    with pytest.raises(lm.LabelSetError, match="use_per_set_targets is false"):
        lm.partition_label_sets([lm.LabelSet("img.jpg", ["cup"], targets=["cup"])], COCO_TOY)
    with pytest.raises(lm.LabelSetError, match="duplicate label set identifier"):
        lm.partition_label_sets([lm.LabelSet("a", ["cup"]), lm.LabelSet("a", ["mug"])], COCO_TOY)
    with pytest.raises(ValidationError, match="dataset_targets: must not be empty"):
        lm.LabelMatchingSettings(dataset_targets=(), augmented_targets=(), mapping_rules={})
    # a model copied without validation is still refused where the targets are read
    unvalidated = COCO_TOY.model_copy(update={"dataset_targets": ()})
    with pytest.raises(lm.LabelMatchingSettingsError, match="dataset_targets"):
        lm.current_targets(lm.LabelSet("a", ["cup"]), unvalidated)


# ----------------------------------------------------------------------------------------------
# Prompts (§1.5, gotcha §9.6)
# ----------------------------------------------------------------------------------------------

JSON_ITEM = '{\n    "object_name": "A ripe banana",\n    "description": "it is not yet ripe"\n}'


def test_prompt_constants_are_the_papers():
    assert lm.DEFINITION_PROMPT_SYSTEM == (
        "You are a helpful assistant. Follow all the instructions you are given as carefully as you can."
    )
    assert lm.DEFINITION_PROMPT_LABEL == (
        "Please define and describe the characteristic properties of the following term in 5 sentences: "
        "{label}"
    )
    assert lm.DEFINITION_PROMPT_ITEM == (
        "Please define and describe the characteristic properties of the item category of the item described "
        "below in 5 sentences:\n{item}\n\nYour description must not refer to the given task or include the "
        "words 'item', 'category' and 'context'."
    )


def test_paper_swap_by_default():
    # JSON items go through the *term* prompt ...
    prompt = lm.definition_prompt(JSON_ITEM, is_item=True)
    assert prompt.text == (
        "Please define and describe the characteristic properties of the following term in 5 sentences: "
        + JSON_ITEM
    )
    assert (prompt.template, prompt.paper_swap) == ("definition_prompt_label", True)
    # ... and plain labels/targets through the *item category* prompt
    prompt = lm.definition_prompt("sports ball", is_item=False)
    assert prompt.text == (
        "Please define and describe the characteristic properties of the item category of the item described "
        "below in 5 sentences:\nsports ball\n\nYour description must not refer to the given task or include "
        "the words 'item', 'category' and 'context'."
    )
    assert (prompt.template, prompt.paper_swap) == ("definition_prompt_item", True)


def test_fixed_swap_uses_the_intended_prompts():
    prompt = lm.definition_prompt(JSON_ITEM, is_item=True, fix_swap=True)
    assert prompt.text.startswith(
        "Please define and describe the characteristic properties of the item category of the item described "
        'below in 5 sentences:\n{\n    "object_name": "A ripe banana"'
    )
    assert (prompt.template, prompt.paper_swap) == ("definition_prompt_item", False)
    prompt = lm.definition_prompt("sports ball", is_item=False, fix_swap=True)
    assert prompt.text == (
        "Please define and describe the characteristic properties of the following term in 5 sentences: "
        "sports ball"
    )
    assert (prompt.template, prompt.paper_swap) == ("definition_prompt_label", False)
