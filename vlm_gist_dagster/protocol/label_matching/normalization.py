"""The text normalisations of label matching, exactly as the paper applies them (docs/protocol/evaluation.md §1.4,
gotchas §9.7 and §9.8).

Each purpose has its own rule, and mixing them up changes the numbers:

* ``label_norm`` — drop one trailing ``[_]?\\d+``, rstrip, collapse whitespace; the original if that
  leaves nothing. Used for the embedded label, the Levenshtein match and the JSON definition item.
* ``desc_norm_for_definition`` — the same rule; used only inside the JSON definition item.
* ``desc_norm_for_embedding`` — collapse whitespace only (trailing digits are kept); embedded description.
* ``definition_norm`` — collapse whitespace only; embedded label/item definition.
* ``cache_key`` — ``protocol.text.key``: ASCII, alphanumerics only, no whitespace, lower case.
* Target names and target definitions are embedded raw.

>>> label_norm("cup_2"), label_norm("Route 66"), label_norm("  red\\n  mug 3")
('cup', 'Route', 'red mug')
>>> desc_norm_for_embedding("a mug  with 2\\nhandles 3")
'a mug with 2 handles 3'
>>> cache_key("Cell Phone!!")
'cellphone'
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

from vlm_gist_dagster.protocol.text import key as _text_key

# Python `re` semantics on purpose, as in the reference: `\d` and `\s` are Unicode-aware and `$` also
# matches just before a final newline ("cup 2\n" → "cup").
_TRAILING_NUMBER = re.compile(r"[_]?\d+$")
_WHITESPACE_RUN = re.compile(r"\s+")


class NormalizationFallbackWarning(UserWarning):
    """A normalisation produced an empty string, so the original text is used (docs/protocol/evaluation.md §1.4)."""


@dataclass(frozen=True, slots=True)
class Normalized:
    """A normalised text and whether the original had to be kept because normalisation emptied it."""

    value: str
    fallback: bool = False


def strip_label_number(text: str) -> str:
    """Steps (a) and (b) of ``label_norm`` *without* the empty-result fallback.

    The reference uses this raw form as the plain (description-less) definition item, where it never
    falls back: a label ``"2"`` is defined as the empty string (docs/protocol/evaluation.md §1.5; reproduced on purpose).

    >>> strip_label_number("cup_2"), strip_label_number("2")
    ('cup', '')
    """
    _check_str(text, "text")
    return _WHITESPACE_RUN.sub(" ", _TRAILING_NUMBER.sub("", text).rstrip()).strip()


def collapse_whitespace(text: str) -> str:
    """Every whitespace run (spaces, tabs, newlines) becomes one space; then strip."""
    _check_str(text, "text")
    return _WHITESPACE_RUN.sub(" ", text).strip()


def normalize_label(text: str) -> Normalized:
    """``label_norm`` with the fallback made explicit (no Python warning; callers record it)."""
    value = strip_label_number(text)
    return Normalized(text, True) if value == "" else Normalized(value)


def normalize_description_for_definition(text: str) -> Normalized:
    """``desc_norm_for_definition`` with the fallback made explicit: the same rule as labels."""
    return normalize_label(text)


def normalize_description_for_embedding(text: str) -> Normalized:
    """``desc_norm_for_embedding`` with the fallback made explicit: trailing digits are kept."""
    value = collapse_whitespace(text)
    return Normalized(text, True) if value == "" else Normalized(value)


def normalize_definition(text: str) -> Normalized:
    """``definition_norm`` with the fallback made explicit (label/item definitions only)."""
    return normalize_description_for_embedding(text)


def label_norm(text: str) -> str:
    """The label as embedded and as written into the definition item (docs/protocol/evaluation.md §1.4).

    Deletes one trailing run of digits with an optional single ``_`` before it, rstrips, collapses
    whitespace runs to one space and strips. Case is kept. If that leaves nothing, the original string is
    returned and a :class:`NormalizationFallbackWarning` is issued.

    >>> [label_norm(s) for s in ["cup_2", "cup2", "cup 2", "mug_a", "Route 66"]]
    ['cup', 'cup', 'cup', 'mug_a', 'Route']
    """
    return _warn_on_fallback(normalize_label(text), "label_norm", text)


def desc_norm_for_definition(text: str) -> str:
    """A description as written into the JSON definition item: the ``label_norm`` rule (digits go)."""
    return _warn_on_fallback(normalize_description_for_definition(text), "desc_norm_for_definition", text)


def desc_norm_for_embedding(text: str) -> str:
    """A description as embedded: whitespace collapsed and stripped, trailing digits kept."""
    return _warn_on_fallback(normalize_description_for_embedding(text), "desc_norm_for_embedding", text)


def definition_norm(text: str) -> str:
    """A label/item definition as embedded: whitespace collapsed and stripped. Target definitions are
    embedded raw, without this."""
    return _warn_on_fallback(normalize_definition(text), "definition_norm", text)


def cache_key(text: str) -> str:
    """The definitions-cache key of a text: :func:`vlm_gist_dagster.protocol.text.key`.

    unidecode first, then every character outside ``[A-Za-z0-9]`` removed and the rest lower-cased, so a
    JSON item's key starts with ``objectname…description…`` (docs/protocol/evaluation.md §1.4, gotcha §9.8).

    >>> cache_key("sports ball"), cache_key("T-shirt's")
    ('sportsball', 'tshirts')
    """
    _check_str(text, "text")
    return _text_key(text)


def _warn_on_fallback(result: Normalized, name: str, original: str) -> str:
    if result.fallback:
        warnings.warn(
            f"{name}({original!r}) is empty after normalisation; using the original string",
            NormalizationFallbackWarning,
            stacklevel=3,
        )
    return result.value


def _check_str(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}: {value!r}")
