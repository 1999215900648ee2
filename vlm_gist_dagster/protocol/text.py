"""String normalisation and Levenshtein matching exactly as the paper's code applies them
(nimbro_utils ``normalize_string`` / ``levenshtein_match``; docs/protocol/pipeline.md §1.5, gotchas 9 and 22;
docs/protocol/evaluation.md §1.4).

>>> normalize_string("A red, wooden chair.", remove_underscores=True, remove_punctuation=True,
...                  remove_common_specials=True, reduce_whitespaces=True, lowercase=True)
'a red wooden chair'
>>> key("T-shirt's")
'tshirts'
>>> levenshtein_match("Object Name", ["object_name", "description"])
'object_name'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from rapidfuzz.distance import Levenshtein
from unidecode import unidecode

_ANSI_ESCAPE = re.compile(r"\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])")
_WHITESPACE_RUN = re.compile(r"\s+")


def normalize_string(
    text: str,
    *,
    remove_underscores: bool = False,
    remove_punctuation: bool = False,
    remove_common_specials: bool = False,
    reduce_whitespaces: bool = False,
    remove_whitespaces: bool = False,
    lowercase: bool = False,
) -> str:
    """The paper's string normalisation, flag for flag.

    1. Transliterate to ASCII (unidecode) and strip; remove ANSI escape sequences.
    2. Only when ``remove_common_specials`` is set: delete apostrophes and replace every character
       outside ``[A-Za-z0-9 \\n\\t]`` (plus ``_`` unless ``remove_underscores``, plus ``.,:!?`` unless
       ``remove_punctuation``) with a space, then strip. When it is *not* set, the reference builds a
       malformed character class (``[]()/$€&+-=*'<>;%`` closes the class early), so its substitution
       never matches and nothing is replaced, whatever the other flags say (docs/protocol/pipeline.md gotcha 22). We keep that.
    3. ``remove_whitespaces`` deletes all whitespace; else ``reduce_whitespaces`` collapses runs to one
       space; either strips.
    4. ``lowercase``.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    normalized = _ANSI_ESCAPE.sub("", unidecode(text).strip())
    if remove_common_specials:
        allowed = "a-zA-Z0-9 \n\t"
        if not remove_underscores:
            allowed += "_"
        if not remove_punctuation:
            allowed += ".,:!?"
        normalized = re.sub(f"[^{allowed}]", " ", normalized.replace("'", "")).strip()
    if remove_whitespaces:
        normalized = _WHITESPACE_RUN.sub("", normalized).strip()
    elif reduce_whitespaces:
        normalized = _WHITESPACE_RUN.sub(" ", normalized).strip()
    if lowercase:
        normalized = normalized.lower()
    return normalized


def key(text: str) -> str:
    """Aggressive normalisation used for cache keys and Levenshtein matching: ASCII, alphanumerics only,
    no whitespace, lower case (``"Cell Phone!!"`` → ``"cellphone"``)."""
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    return _key(text)


@lru_cache(maxsize=1 << 16)
def _key(text: str) -> str:
    # Memoised: the structured-description check matches every key and value of every object against
    # the same few labels (object_name, description, none, n/a …); unidecode + regex on every call was
    # ~15 % of the describe client's CPU at 64 requests in flight (benchmarks/description_throughput.py).
    return normalize_string(
        text,
        remove_underscores=True,
        remove_punctuation=True,
        remove_common_specials=True,
        remove_whitespaces=True,
        lowercase=True,
    )


def levenshtein(a: str, b: str, *, normalization: bool = False) -> int:
    """Edit distance (unit costs), after :func:`key` on both strings when ``normalization``."""
    if normalization:
        a, b = key(a), key(b)
    return int(Levenshtein.distance(a, b))


def levenshtein_match(
    word: str, labels: Sequence[str], threshold: int | float = 0, *, normalization: bool = True
) -> str | None:
    """The label closest to ``word`` (first on ties) if its distance is within ``threshold``, else None.

    A threshold strictly between 0 and 1 is a fraction of ``len(word)``: ``int(len(word) * t) + 1``.
    """
    if not labels:
        return None
    distances = [levenshtein(word, label, normalization=normalization) for label in labels]
    best = min(range(len(distances)), key=distances.__getitem__)
    if 0.0 < threshold < 1.0:
        threshold = int(len(word) * threshold) + 1
    return labels[best] if distances[best] <= threshold else None
