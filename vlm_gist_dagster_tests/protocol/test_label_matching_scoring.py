"""Label matching (stage D): scores, argmax, mapping rules, the dataset filter, per-image mode, skipped
samples and the recorded Levenshtein match.

Real embeddings are not available offline, so every test builds small vectors by hand and works the
expected scores out in comments (docs/protocol/evaluation.md §1.7–§1.9).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vlm_gist_dagster.protocol import label_matching as lm
from vlm_gist_dagster.protocol.text import levenshtein_match
from vlm_gist_dagster_tests.conftest import REFERENCE_DIR, SETTINGS_DIR

SQRT2 = math.sqrt(2.0)


def table_for(label_sets, definitions, options, vectors):
    """What the client does: embed the batch texts (here: look them up in ``vectors``)."""
    texts = lm.embedding_batch(label_sets, definitions, options)
    return lm.EmbeddingTable(texts, [vectors[t] for t in texts])


# ----------------------------------------------------------------------------------------------
# The score (§1.7)
# ----------------------------------------------------------------------------------------------


def test_score_is_the_mean_of_six_cosines_with_normalised_sources():
    options = lm.LabelMatchingSettings(
        dataset_targets=("cup", "bottle"), augmented_targets=("guitar",), mapping_rules={}
    )
    label_sets = [lm.LabelSet("toy.jpg", ["red mug 2", "guitar_1", "mug"], ["a red mug", None, None])]
    definitions = {
        "objectnameredmugdescriptionaredmug": "A mug is a cup.",
        "guitar": "Def guitar.",  # the label "guitar_1" (no description) shares the target's key
        "mug": "A mug.",
        "cup": "Def cup.",
        "bottle": "Def bottle.",
    }
    vectors = {
        # sources (not unit length: they are normalised before scoring)
        "red mug": [2, 0, 0],  # → (1, 0, 0)
        "a red mug": [3, 4, 0],  # → (0.6, 0.8, 0)
        "A mug is a cup.": [0, 0, 5],  # → (0, 0, 1)
        "mug": [1, 1, 0],  # → (1/√2, 1/√2, 0)
        "A mug.": [1, 0, 0],
        # targets T (names) and D (definitions), unit length
        "cup": [1, 0, 0],
        "bottle": [0, 1, 0],
        "guitar": [0, 0, 1],  # also the label "guitar_1" → (0, 0, 1)
        "Def cup.": [0.6, 0.8, 0],
        "Def bottle.": [0, 0.6, 0.8],
        "Def guitar.": [0.8, 0, 0.6],  # also the definition of the label "guitar_1"
    }
    result = lm.match_label_sets(
        label_sets, definitions, table_for(label_sets, definitions, options, vectors), options
    )
    (matched,) = result.sets
    det0, det1, det2 = matched.detections

    # det0, S = [(1,0,0), (0.6,0.8,0), (0,0,1)], 2·|S| = 6:
    #   cup:    T: 1 + 0.6 + 0 = 1.6;  D: 0.6 + 1.0 + 0 = 1.6    → 3.2/6  = 0.5333…
    #   bottle: T: 0 + 0.8 + 0 = 0.8;  D: 0 + 0.48 + 0.8 = 1.28  → 2.08/6 = 0.3466…
    #   guitar: T: 0 + 0 + 1 = 1;      D: 0.8 + 0.48 + 0.6 = 1.88 → 2.88/6 = 0.48
    assert (det0.label_norm, det0.best_target, det0.match, det0.dataset_match) == (
        "red mug",
        "cup",
        "cup",
        "cup",
    )
    assert det0.score == pytest.approx(3.2 / 6, abs=1e-12)
    # det1, S = [(0,0,1), (0.8,0,0.6)], 2·|S| = 4:
    #   cup: (0 + 0.8) + (0 + 0.48) = 1.28 → 0.32;  bottle: 0 + (0.8 + 0.48) → 0.32
    #   guitar: (1 + 0.6) + (0.6 + 1.0) = 3.2 → 0.8   → an augmented target: rejected
    assert (det1.label_norm, det1.best_target, det1.match, det1.dataset_match) == (
        "guitar",
        "guitar",
        "guitar",
        None,
    )
    assert det1.score == pytest.approx(0.8, abs=1e-12)
    # det2, S = [(1/√2,1/√2,0), (1,0,0)]:
    #   cup:    (1/√2 + 1) + (1.4/√2 + 0.6) = 1.6 + 2.4/√2 → /4 = 0.4 + 0.6/√2 = 0.8243
    #   bottle: (1/√2 + 0) + (0.6/√2 + 0)                  → /4 = 0.4/√2       = 0.2828
    #   guitar: (0 + 0) + (0.8/√2 + 0.8)                   → /4 = 0.2/√2 + 0.2 = 0.3414
    assert (det2.best_target, det2.dataset_match) == ("cup", "cup")  # a second "cup": duplicates allowed
    assert det2.score == pytest.approx(0.4 + 0.6 / SQRT2, abs=1e-12)

    assert (matched.accepted, matched.rejected, matched.mapping_rules_applied) == (2, 1, 0)
    assert matched.confidence == pytest.approx((3.2 / 6 + 0.8 + 0.4 + 0.6 / SQRT2) / 3, abs=1e-12)
    assert [d.definition_key for d in matched.detections] == [
        "objectnameredmugdescriptionaredmug",
        "guitar",
        "mug",
    ]
    assert [d.levenshtein_match for d in matched.detections] == [None, "guitar", None]
    assert matched.warnings == () and result.skipped == ()

    # the full score rows through the lower-level function
    sources = [[2, 0, 0], [3, 4, 0], [0, 0, 5]]
    names = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    defs = [[0.6, 0.8, 0], [0, 0.6, 0.8], [0.8, 0, 0.6]]
    np.testing.assert_allclose(
        lm.score_matrix(sources, [3], names, defs), [[3.2 / 6, 2.08 / 6, 2.88 / 6]], atol=1e-12
    )


def test_without_target_definitions_and_targets_not_renormalised():
    # S = [(1,0), (0,2)→(0,1)], T = [(2,0), (0,1)]; no target definitions: mean over |S| = 2
    #   T0: (1·2 + 0)/2 = 1.0 (T0 keeps its length 2: target vectors are used as returned)
    #   T1: (0 + 1)/2 = 0.5
    np.testing.assert_allclose(
        lm.score_matrix([[1, 0], [0, 2]], [2], [[2, 0], [0, 1]]), [[1.0, 0.5]], atol=1e-12
    )
    # two detections with 1 and 2 sources: det0 S=[(0,3)→(0,1)] → [0, 1]
    np.testing.assert_allclose(
        lm.score_matrix([[0, 3], [1, 0], [0, 2]], [1, 2], [[2, 0], [0, 1]]),
        [[0.0, 1.0], [1.0, 0.5]],
        atol=1e-12,
    )


def test_score_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="zero vector"):
        lm.score_matrix([[0, 0]], [1], [[1, 0]])
    with pytest.raises(ValueError, match="sum to 2"):
        lm.score_matrix([[1, 0], [0, 1]], [1], [[1, 0]])
    with pytest.raises(ValueError, match="dimension mismatch"):
        lm.score_matrix([[1, 0]], [1], [[1, 0, 0]])


# ----------------------------------------------------------------------------------------------
# Argmax (§1.8): first index on exact ties, duplicates allowed, no Hungarian
# ----------------------------------------------------------------------------------------------


def test_exact_ties_pick_the_first_target():
    options = lm.LabelMatchingSettings(
        dataset_targets=("a", "b", "c"),
        define_labels=False,
        define_targets=False,
        augmented_targets=(),
        mapping_rules={},
    )
    sets = [lm.LabelSet("t.jpg", ["x", "y"])]
    # "a" and "c" have the same vector: x scores [1, 0, 1], y scores [0, 1, 0]
    table = lm.EmbeddingTable.from_mapping({"x": [1, 0], "y": [0, 1], "a": [1, 0], "b": [0, 1], "c": [1, 0]})
    result = lm.match_label_sets(sets, None, table, options)
    assert [d.best_target for d in result.sets[0].detections] == ["a", "b"]
    # a 357-wide row (where numpy's argsort(-x)[0] may return the last tied index) → the first one
    row = np.zeros((1, 357))
    row[0, [1, 3, 356]] = 1.0
    assert lm.best_target_indices(row).tolist() == [1]
    with pytest.raises(ValueError, match="NaN"):
        lm.best_target_indices([[0.1, np.nan]])


def test_hungarian_assignment_is_refused_clearly():
    options = lm.LabelMatchingSettings(
        dataset_targets=("a",), allow_duplicate_labels=False, augmented_targets=(), mapping_rules={}
    )
    with pytest.raises(lm.HungarianAssignmentUnsupportedError, match="Hungarian") as error:
        lm.match_label_sets([lm.LabelSet("t.jpg", ["x"])], {}, {}, options)
    assert isinstance(error.value, NotImplementedError)
    with pytest.raises(lm.HungarianAssignmentUnsupportedError, match="allow_duplicate_labels=false"):
        lm.check_assignment_supported(options)
    lm.check_assignment_supported(options.model_copy(update={"allow_duplicate_labels": True}))


# ----------------------------------------------------------------------------------------------
# Mapping rules and the dataset filter (§1.9) with the published COCO settings and cache
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco_options(shared_dir):
    path = SETTINGS_DIR / "label_matching" / "label_matching_settings_coco.json"
    return lm.as_settings(json.loads(path.read_text()))


@pytest.fixture(scope="module")
def one_hot_coco(coco_options, shared_dir):
    """Every COCO/augmented target name and its published definition → the one-hot vector e_k."""
    cache = lm.DefinitionsCache.read(REFERENCE_DIR / "definitions.json", missing_ok=False)
    targets = coco_options.dataset_targets + coco_options.augmented_targets
    eye = np.eye(len(targets))
    vectors = {}
    for k, target in enumerate(targets):
        vectors[target] = eye[k]
        vectors[cache[lm.cache_key(target)]] = eye[k]
    return cache, vectors, {t: eye[k] for k, t in enumerate(targets)}


COCO_LABELS = ["tennis ball", "monitor", "guitar", "soap dispenser", "cup", "Baseball 2"]


def _coco_result(options, one_hot):
    cache, vectors, onehot = one_hot
    # Each label is embedded as its target's e_k, and (no description) is defined by the cached target
    # definition of the same key, also e_k: S = [e_k, e_k], so score_k = (1+1+1+1)/(2·2) = 1, all others 0.
    vectors = dict(vectors, Baseball=onehot["baseball"])
    sets = [lm.LabelSet("000000000139.jpg", COCO_LABELS)]
    return lm.match_label_sets(sets, cache, table_for(sets, cache, options, vectors), options).sets[0]


def test_mapping_rules_and_dataset_filter(coco_options, one_hot_coco):
    matched = _coco_result(coco_options, one_hot_coco)
    rows = [
        (d.label_norm, d.best_target, d.match, d.mapping_rule_applied, d.dataset_match)
        for d in matched.detections
    ]
    assert rows == [
        ("tennis ball", "tennis ball", "sports ball", True, "sports ball"),
        ("monitor", "monitor", "tv", True, "tv"),
        ("guitar", "guitar", "guitar", False, None),  # augmented, no rule: dropped
        ("soap dispenser", "soap dispenser", "bottle", True, "bottle"),
        ("cup", "cup", "cup", False, "cup"),
        ("Baseball", "baseball", "sports ball", True, "sports ball"),
    ]
    assert [d.score for d in matched.detections] == pytest.approx([1.0] * 6, abs=1e-12)
    assert (matched.accepted, matched.rejected, matched.mapping_rules_applied) == (5, 1, 4)
    # the recorded Levenshtein match (threshold 0 = exact key match) does not change anything
    assert [d.levenshtein_match for d in matched.detections] == [
        "tennis ball",
        "monitor",
        "guitar",
        "soap dispenser",
        "cup",
        "baseball",
    ]


def test_mapping_rule_applies_only_if_its_value_is_a_current_target(coco_options, one_hot_coco):
    options = coco_options.model_copy(update={"mapping_rules": {"guitar": "violin", "monitor": "tv"}})
    matched = _coco_result(options, one_hot_coco)
    assert matched.matches_dataset == [None, "tv", None, None, "cup", None]
    assert [d.match for d in matched.detections][:3] == ["tennis ball", "tv", "guitar"]
    assert matched.mapping_rules_applied == 1
    # and the plain function: one pass, no chaining
    assert lm.apply_mapping_rules(["a", "b", "c"], {"a": "b", "b": "c"}, ["a", "b", "c"]) == (
        ["b", "c", "c"],
        [True, True, False],
    )
    assert lm.apply_mapping_rules(["a"], None, ["a", "b"]) == (["a"], [False])
    assert lm.dataset_filter(["cup", "guitar"], ["cup"]) == ["cup", None]


# ----------------------------------------------------------------------------------------------
# Per-image mode (VLM-GIST) and skipped samples
# ----------------------------------------------------------------------------------------------


def test_per_image_every_detection_matches_its_own_gt(reference_settings_dir, vlm_gist_dataset):
    options = lm.as_settings(
        json.loads(
            (reference_settings_dir / "label_matching" / "label_matching_settings_per_image.json").read_text()
        )
    )
    gt = vlm_gist_dataset.ground_truth
    targets = gt[gt["image_id"] == "00001"]["label"].tolist()  # 16 GT sentences, GT order
    sets = [
        lm.LabelSet(
            "00001.jpg",
            ["plant", "cushion 1", "cushion 2"],
            ["a money tree in a pot", "a striped cushion", "a striped cushion"],
            targets=targets,
        ),
        lm.LabelSet("00002.jpg", []),  # no detections
        lm.LabelSet("00003.jpg", ["chair"], targets=None),  # no ground truth
    ]
    items = lm.definition_items(sets, options)
    # 2 distinct detection items ("cushion 1"/"cushion 2" normalise to the same item) + 16 GT sentences
    assert len(items) == 18
    definitions = {item.cache_key: f"Definition {n}." for n, item in enumerate(items)}
    eye = np.eye(len(targets))
    vectors = {t: eye[k] for k, t in enumerate(targets)}
    vectors.update({definitions[lm.cache_key(t)]: eye[k] for k, t in enumerate(targets)})
    # the plant's sources all point at GT 0, both cushions' at GT 1: score (3 + 3)/6 = 1
    vectors.update(
        {
            "plant": eye[0],
            "a money tree in a pot": eye[0],
            "Definition 0.": eye[0],
            "cushion": eye[1],
            "a striped cushion": eye[1],
            "Definition 1.": eye[1],
        }
    )
    table = table_for(sets, definitions, options, vectors)
    assert len(table) == 2 + 2 + 2 + 16 + 16
    result = lm.match_label_sets(sets, definitions, table, options)

    assert [(s.identifier, s.reason) for s in result.skipped] == [
        ("00002.jpg", "no_detections"),
        ("00003.jpg", "no_ground_truth"),
    ]
    (matched,) = result.sets
    assert matched.num_targets == 16
    assert matched.matches_dataset == [targets[0], targets[1], targets[1]]  # duplicates allowed
    assert (
        targets[1] == "A striped cushion with red, yellow, and white patterns on the left side of the couch."
    )
    assert (matched.accepted, matched.rejected) == (3, 0)  # Mat. = 1.00 in per-image mode
    assert [d.score for d in matched.detections] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)


def test_only_skipped_samples_give_an_empty_result():
    options = lm.LabelMatchingSettings(dataset_targets=("cup",), augmented_targets=(), mapping_rules={})
    result = lm.match_label_sets([lm.LabelSet("a.jpg", [])], {}, {}, options)
    assert result.sets == () and result.skipped == (lm.SkippedLabelSet("a.jpg", "no_detections"),)
    assert result.records() == {}


# ----------------------------------------------------------------------------------------------
# Levenshtein (recorded only), records, warnings, missing inputs
# ----------------------------------------------------------------------------------------------


def test_levenshtein_match_is_recorded_but_not_used():
    options = lm.LabelMatchingSettings(
        dataset_targets=("cup", "monitor", "tv"),
        define_labels=False,
        define_targets=False,
        augmented_targets=(),
        mapping_rules={},
    )
    vectors = {
        "Cup": [0, 0, 1],
        "tv monitor": [0, 1, 0],
        "cup": [1, 0, 0],
        "monitor": [0, 1, 0],
        "tv": [0, 0, 1],
    }
    sets = [lm.LabelSet("a.jpg", ["Cup 2", "tv monitor"])]
    matched = lm.match_label_sets(sets, None, lm.EmbeddingTable.from_mapping(vectors), options).sets[0]
    # "Cup 2" → "Cup": key "cup" equals the target's key (distance 0) but the embedding says "tv"
    assert [(d.best_target, d.levenshtein_match) for d in matched.detections] == [
        ("tv", "cup"),
        ("monitor", None),
    ]
    # "tv monitor": key "tvmonitor" is 2 edits from "monitor" (> threshold 0); with threshold 0.5 the limit
    # is int(len("tv monitor") · 0.5) + 1 = int(5.0) + 1 = 6 ≥ 2 → "monitor"
    loose = options.model_copy(update={"levenshtein_threshold": 0.5})
    matched = lm.match_label_sets(sets, None, lm.EmbeddingTable.from_mapping(vectors), loose).sets[0]
    assert [d.levenshtein_match for d in matched.detections] == ["cup", "monitor"]
    # the vectorised helper agrees with protocol.text.levenshtein_match, word by word
    words = ["Cup", "tv monitor", "mnitor", "", "TV!"]
    for threshold in (0, 1, 2, 0.3):
        assert lm.levenshtein_matches(words, ["cup", "monitor", "tv"], threshold) == [
            levenshtein_match(w, ["cup", "monitor", "tv"], threshold, normalization=True) for w in words
        ]


def test_records_follow_label_matches_json():
    options = lm.LabelMatchingSettings(
        dataset_targets=("cup",),
        augmented_targets=("guitar",),
        define_labels=False,
        define_targets=False,
        mapping_rules={},
    )
    vectors = {"cup": [1, 0], "guitar": [0, 1], "mug": [3, 1], "banjo": [1, 3]}
    sets = [lm.LabelSet("1.jpg", ["mug_1", "banjo"]), lm.LabelSet("2.jpg", ["cup"])]
    result = lm.match_label_sets(sets, None, vectors, options)
    records = result.records()
    # mug → (3,1)/√10: cup 3/√10 = 0.9487, guitar 1/√10 = 0.3162; banjo → the other way round
    assert records["1.jpg"] == {
        "labels": ["mug_1", "banjo"],
        "num_labels": 2,
        "batch_size_sets": 2,
        "batch_size_labels": 3,
        "batch_identifiers": ["1.jpg", "2.jpg"],
        "matches_levenshtein": [None, None],
        "matches_embeddings": ["cup", "guitar"],
        "matches_embeddings_score": pytest.approx([3 / math.sqrt(10), 3 / math.sqrt(10)], abs=1e-12),
        "mapping_rules_applied": 0,
        "matches": ["cup", "guitar"],
        "matches_dataset": ["cup", None],
    }
    assert list(records["1.jpg"])[:4] == ["labels", "num_labels", "batch_size_sets", "batch_size_labels"]
    assert records["2.jpg"]["matches_dataset"] == ["cup"] and records["2.jpg"]["matches_levenshtein"] == [
        "cup"
    ]
    single = lm.match_label_sets(sets[1:], None, vectors, options).records()
    assert "batch_identifiers" not in single["2.jpg"]  # only written for batches of more than one set
    assert result.fix_definition_prompt_swap is False


def test_empty_normalisations_give_the_papers_warnings():
    options = lm.LabelMatchingSettings(
        dataset_targets=("cup",), define_targets=False, augmented_targets=(), mapping_rules={}
    )
    sets = [lm.LabelSet("a.jpg", ["7", "12"], [None, "  "])]
    # "7" (no description): plain item "" (no fallback); "12" + "  ": JSON item with raw values
    definitions = {"": "Definition of nothing.", "objectname12description": "\n"}
    vectors = {
        "7": [1, 0],
        "12": [1, 1],
        "  ": [0, 1],
        "Definition of nothing.": [1, 0],
        " ": [0, 1],
        "cup": [1, 0],
    }
    matched = lm.match_label_sets(sets, definitions, vectors, options).sets[0]
    assert matched.warnings == (
        "Using original label '12' to generate definition after normalization yielded an empty string.",
        "Using original description '  ' to generate definition after normalization yielded an empty string.",
        "Using original label '7' to obtain embedding after normalization yielded an empty string.",
        "Using original label '12' to obtain embedding after normalization yielded an empty string.",
        "Using original description '  ' to obtain embedding after normalization yielded an empty string.",
        "Using original definition '\n' to obtain embedding after normalization yielded an empty string.",
    )
    assert [d.definition_key for d in matched.detections] == ["", "objectname12description"]
    assert matched.record()["warnings"] == list(matched.warnings)


def test_missing_inputs_are_reported():
    options = lm.LabelMatchingSettings(
        dataset_targets=("cup",), define_labels=False, augmented_targets=(), mapping_rules={}
    )
    sets = [lm.LabelSet("a.jpg", ["mug"])]
    with pytest.raises(lm.MissingDefinitionsError):
        lm.match_label_sets(sets, {}, {"mug": [1.0], "cup": [1.0]}, options)
    with pytest.raises(lm.MissingEmbeddingsError) as error:
        lm.match_label_sets(sets, {"cup": "A cup."}, {"mug": [1.0], "cup": [1.0]}, options)
    assert error.value.texts == ("A cup.",)
    with pytest.raises(ValueError, match="definitions are required"):
        lm.match_label_sets(sets, None, {}, options)
