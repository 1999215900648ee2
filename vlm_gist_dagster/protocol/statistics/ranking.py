"""From pairwise tests to what a leaderboard reader needs: each model's range of ranks, and groups of
models that cannot be told apart (a compact letter display).

A model's rank range is ``[1 + #models significantly better, M - #models significantly worse]``. With
Holm's correction (family-wise error 5 %), with probability >= 95 % no declared difference is false, and
then every model's true rank lies in its range at once (a truly better model is at least every model
declared better). Without correction each range is only as good as its pairwise tests.

Letters (Piepho 2004, "insert and absorb"): models that share a letter are not significantly different
from each other; each letter is a maximal such group. The letters start at the best model.

>>> better = np.zeros((4, 4), dtype=bool)
>>> better[0, 2] = better[0, 3] = better[1, 3] = True    # 0 beats 2 and 3, 1 beats 3
>>> low, high = rank_ranges(better)
>>> [f"{a}-{b}" for a, b in zip(low.tolist(), high.tolist())]
['1-2', '1-3', '2-4', '3-4']
>>> compact_letter_display(np.array([0.6, 0.5, 0.4, 0.3]), better | better.T)
['a', 'ab', 'bc', 'c']
"""

from __future__ import annotations

import string

import numpy as np

#: Letter names: a-z, then A-Z, then a1, b1, ...
_ALPHABET = string.ascii_lowercase + string.ascii_uppercase
#: The insert-and-absorb display grows with the number of maximal groups; beyond this it is not shown.
MAX_LETTERS = 4 * len(_ALPHABET)


def rank_ranges(better: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` 1-based rank bounds per model from ``better[i, j]`` (model i significantly better
    than model j)."""
    better = np.asarray(better, dtype=bool)
    M = better.shape[0]
    return 1 + better.sum(axis=0), M - better.sum(axis=1)


def _letter(k: int) -> str:
    return _ALPHABET[k % len(_ALPHABET)] + (str(k // len(_ALPHABET)) if k >= len(_ALPHABET) else "")


def _absorb(columns: list[np.ndarray]) -> list[np.ndarray]:
    """Drop columns that are a subset of another (duplicates kept once)."""
    columns = sorted(columns, key=lambda c: -int(c.sum()))
    kept: list[np.ndarray] = []
    for col in columns:
        if not any((col <= k).all() for k in kept):
            kept.append(col)
    return kept


def compact_letter_display(scores: np.ndarray, different: np.ndarray) -> list[str] | None:
    """Letters per model (in input order) such that two models share a letter exactly when they are
    not significantly different; ``different`` is symmetric ``(M, M)`` bool. Letters are ordered from
    the best-scoring model down (NaN scores last). None when more than ``MAX_LETTERS`` letters would be
    needed (a pattern of differences too irregular for letters to help).
    """
    different = np.asarray(different, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    M = len(scores)
    if M == 0:
        return []
    columns = [np.ones(M, dtype=bool)]
    for i, j in zip(*np.nonzero(np.triu(different | different.T, 1))):
        split: list[np.ndarray] = []
        for col in columns:
            if col[i] and col[j]:
                without_i, without_j = col.copy(), col.copy()
                without_i[i] = False
                without_j[j] = False
                split += [without_i, without_j]
            else:
                split.append(col)
        columns = _absorb(split)
        if len(columns) > MAX_LETTERS:
            return None
    # Order of models: best score first (stable; NaN last); a letter's place is its best member's.
    position = np.empty(M, dtype=np.int64)
    position[np.lexsort((np.arange(M), -np.nan_to_num(scores, nan=-np.inf)))] = np.arange(M)
    columns.sort(key=lambda c: sorted(position[c].tolist()))
    letters = [""] * M
    for k, col in enumerate(columns):
        for i in np.flatnonzero(col).tolist():
            letters[i] += _letter(k)
    return letters
