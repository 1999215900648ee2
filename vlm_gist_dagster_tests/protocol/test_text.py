"""The paper's string normalisation, on examples worked out by hand from the spec."""

import pytest

from vlm_gist_dagster.protocol.text import key, levenshtein, levenshtein_match, normalize_string

BENCHMARK_FLAGS = dict(
    remove_underscores=True,
    remove_punctuation=True,
    remove_common_specials=True,
    reduce_whitespaces=True,
    lowercase=True,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A red, wooden chair.", "a red wooden chair"),
        ("  Café   au\tlait ", "cafe au lait"),
        ("the dog's_bowl (blue)", "the dogs bowl blue"),
        ("n/a", "n a"),
        ("", ""),
    ],
)
def test_benchmark_value_normalisation(text, expected):
    assert normalize_string(text, **BENCHMARK_FLAGS) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("baseball bat", "baseballbat"),
        ("hair drier", "hairdrier"),
        ("T-shirt's", "tshirts"),
        ("Cell Phone!!", "cellphone"),
        ("n/a", "na"),
        ("Not Applicable", "notapplicable"),
        ("über-Größe", "ubergrosse"),
        ("\x1b[1mbold\x1b[0m", "bold"),
    ],
)
def test_key(text, expected):
    assert key(text) == expected


def test_default_flags_only_transliterate_and_strip():
    # The reference's character class is malformed without remove_common_specials (docs/protocol/pipeline.md gotcha 22).
    assert normalize_string("  Ça va? (yes) ") == "Ca va? (yes)"
    # ... whatever the other flags say
    assert normalize_string("a_b. c!", remove_underscores=True, remove_punctuation=True) == "a_b. c!"


def test_specials_removed_but_punctuation_and_underscores_kept():
    assert normalize_string("a_b. (c)!", remove_common_specials=True) == "a_b.  c !"


def test_levenshtein_distance_and_normalisation():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("Object-Name", "object_name", normalization=True) == 0
    assert levenshtein("chair1", "chair 1", normalization=True) == 0


def test_levenshtein_match_threshold_rules():
    names = ["chair 1", "chair 2", "n/a"]
    assert levenshtein_match("no", names, threshold=2) == "n/a"  # "no" vs "na": 1 edit
    assert levenshtein_match("", names, threshold=2) == "n/a"  # "" vs "na": 2 edits
    assert levenshtein_match("table", names, threshold=2) is None
    assert levenshtein_match("chair1", names, threshold=0) == "chair 1"
    # first label wins on equal distance
    assert levenshtein_match("chair 3", names, threshold=1) == "chair 1"
    # fractional threshold: int(len(word) * t) + 1 = int(7 * 0.1) + 1 = 1
    assert levenshtein_match("chairs 1", ["chair 1"], threshold=0.1) == "chair 1"
    assert levenshtein_match("chairs 12", ["chair 1"], threshold=0.1) is None
    assert levenshtein_match("x", []) is None
