"""Scoring, assignment, mapping rules and the dataset filter (docs/protocol/evaluation.md §1.7–§1.9, gotchas
§9.1–§9.5).

For detection j with sources S_j = [e(label_norm)] + [e(description) if any] + [e(definition) if
define_labels], each source vector L2-normalised, and target k with name vector T_k and definition vector
D_k (both used *as returned*, not re-normalised)::

    score[j, k] = (Σ_s s·T_k + Σ_s s·D_k) / (2·|S_j|)      with define_targets
    score[j, k] =  Σ_s s·T_k / |S_j|                        without

i.e. the plain mean of up to 6 cosines. No threshold. The match is the argmax over the current targets
(duplicates allowed: several detections may pick the same target); then a mapping rule replaces it if its
value is one of the current targets; then only dataset targets survive (others → None, and the detection
is dropped before evaluation). The Levenshtein match is computed and recorded only.

**Ties.** The reference takes the first element of ``np.argsort(-scores)``, whose default sort is not
stable: on exact ties numpy 2.x returns the first tied index for short rows but, e.g., the *last* one for
a 357-wide row (SIMD sort). We take the first index of the maximum (``np.argmax``), a stable rule. Exact
ties need identical target vectors, so real runs are not affected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from vlm_gist_dagster.protocol.settings import LabelMatchingSettings
from vlm_gist_dagster.protocol.text import key as text_key

from .definitions import detection_definition_item, lookup_definitions, target_definition_item
from .embeddings import EmbeddingTable, as_embedding_table
from .label_sets import (
    LabelSet,
    SkippedLabelSet,
    current_dataset_targets,
    current_targets,
    partition_label_sets,
)
from .normalization import (
    Normalized,
    normalize_definition,
    normalize_description_for_embedding,
    normalize_label,
)
from .settings import SettingsLike, as_settings, check_assignment_supported

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Pure numeric / list steps
# --------------------------------------------------------------------------------------------------


def score_matrix(
    sources: npt.ArrayLike,
    source_counts: Sequence[int],
    target_names: npt.ArrayLike,
    target_definitions: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float64]:
    """Scores of every detection against every target (docs/protocol/evaluation.md §1.7), vectorised.

    ``sources`` stacks the source vectors of all detections, detection by detection; ``source_counts[j]``
    is |S_j| (1–3). Sources are L2-normalised here; targets are not. The sum runs in the reference's order
    (name terms, then definition terms, source by source).

    >>> score_matrix([[3.0, 4.0]], [1], [[1.0, 0.0], [0.0, 1.0]]).round(6).tolist()
    [[0.6, 0.8]]
    """
    source_array = np.asarray(sources, dtype=np.float64)
    names = np.asarray(target_names, dtype=np.float64)
    counts = np.asarray(source_counts, dtype=np.int64)
    if source_array.ndim != 2 or names.ndim != 2:
        raise ValueError("sources and target_names must be 2-D arrays (rows are vectors)")
    if counts.ndim != 1 or counts.size == 0 or np.any(counts < 1) or counts.sum() != source_array.shape[0]:
        raise ValueError(
            f"source_counts {counts.tolist()} must be ≥ 1 each and sum to {source_array.shape[0]} sources"
        )
    if names.shape[0] == 0:
        raise ValueError("there must be at least one target")
    if names.shape[1] != source_array.shape[1]:
        raise ValueError(f"dimension mismatch: sources {source_array.shape[1]}, targets {names.shape[1]}")
    norms = np.linalg.norm(source_array, axis=1, keepdims=True)
    if np.any(norms == 0.0):
        raise ValueError("a source embedding is the zero vector; it cannot be normalised")
    unit_sources = source_array / norms
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    name_terms = unit_sources @ names.T  # (n_sources, K)
    if target_definitions is None:
        return np.add.reduceat(name_terms, starts, axis=0) / counts[:, None]
    definitions = np.asarray(target_definitions, dtype=np.float64)
    if definitions.shape != names.shape:
        raise ValueError(f"target_definitions shape {definitions.shape} != target_names shape {names.shape}")
    definition_terms = unit_sources @ definitions.T
    # Interleave per detection: its name terms, then its definition terms, so one sequential reduceat
    # adds them in the reference's order ((s1·T + s2·T + s3·T) + s1·D + s2·D + s3·D).
    owner = np.repeat(np.arange(counts.size), counts)
    order = np.lexsort((np.arange(2 * owner.size), np.concatenate((owner, owner))))
    stacked = np.concatenate((name_terms, definition_terms))[order]
    return np.add.reduceat(stacked, 2 * starts, axis=0) / (2 * counts[:, None])


def best_target_indices(scores: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Index of the highest score per row; the first one on exact ties (see the module docstring)."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty 2-D array, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("scores contain NaN")
    return np.argmax(array, axis=1)


def apply_mapping_rules(
    matches: Sequence[str], mapping_rules: Mapping[str, str] | None, targets: Iterable[str]
) -> tuple[list[str], list[bool]]:
    """Replace a match by its mapping-rule value only if that value is one of ``targets`` (docs/protocol/evaluation.md §1.9).

    One pass, no chaining. Returns the new matches and, per match, whether a rule was applied.

    >>> apply_mapping_rules(["tennis ball", "guitar"], {"tennis ball": "sports ball"}, ["sports ball"])
    (['sports ball', 'guitar'], [True, False])
    """
    if not mapping_rules:
        return list(matches), [False] * len(matches)
    target_set = set(targets)
    mapped: list[str] = []
    applied: list[bool] = []
    for match in matches:
        value = mapping_rules.get(match)
        hit = value is not None and value in target_set
        mapped.append(value if hit else match)  # type: ignore[arg-type]
        applied.append(hit)
    return mapped, applied


def dataset_filter(matches: Sequence[str], dataset_targets: Iterable[str]) -> list[str | None]:
    """Keep a match only if it is a dataset target, else None (docs/protocol/evaluation.md §1.9 step 2)."""
    allowed = set(dataset_targets)
    return [m if m in allowed else None for m in matches]


def levenshtein_matches(
    words: Sequence[str],
    targets: Sequence[str],
    threshold: float = 0,
    *,
    target_keys: Sequence[str] | None = None,
) -> list[str | None]:
    """``protocol.text.levenshtein_match(word, targets, threshold, normalization=True)`` for many words at
    once (recorded only, never used for the match; docs/protocol/evaluation.md §1.8).

    Distance between ``key()`` forms; the closest target (first on ties) is accepted if its distance is at
    most the threshold, where a threshold in (0, 1) means ``int(len(word) * t) + 1``.
    """
    if not targets or not words:
        return [None] * len(words)
    keys = list(target_keys) if target_keys is not None else [text_key(t) for t in targets]
    distances = cdist([text_key(w) for w in words], keys, scorer=Levenshtein.distance, dtype=np.int64)
    best = np.argmin(distances, axis=1)
    result: list[str | None] = []
    for word, index, row in zip(words, best, distances, strict=True):
        limit = int(len(word) * threshold) + 1 if 0.0 < threshold < 1.0 else threshold
        result.append(targets[index] if row[index] <= limit else None)
    return result


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DetectionMatch:
    """The label-matching outcome of one detection.

    ``best_target`` is the argmax target (``matches_embeddings``), ``match`` the same after mapping rules
    (``matches``), ``dataset_match`` the match if it is a dataset target else None (``matches_dataset``);
    None means the detection is dropped before evaluation (not counted as a false positive).
    """

    label: str
    description: str | None
    label_norm: str
    best_target: str
    score: float
    match: str
    mapping_rule_applied: bool
    dataset_match: str | None
    levenshtein_match: str | None
    definition_key: str | None

    @property
    def accepted(self) -> bool:
        return self.dataset_match is not None


@dataclass(frozen=True)
class LabelSetResult:
    """One image's label-matching outcome: a :class:`DetectionMatch` per detection, in input order."""

    identifier: str
    detections: tuple[DetectionMatch, ...]
    num_targets: int
    warnings: tuple[str, ...] = ()

    @property
    def accepted(self) -> int:
        """Detections kept (``label_matching_accept``: non-None entries of ``matches_dataset``)."""
        return sum(d.accepted for d in self.detections)

    @property
    def rejected(self) -> int:
        """Detections dropped (``label_matching_reject``)."""
        return len(self.detections) - self.accepted

    @property
    def mapping_rules_applied(self) -> int:
        return sum(d.mapping_rule_applied for d in self.detections)

    @property
    def confidence(self) -> float:
        """Mean best score (``label_matching_confidence``)."""
        return float(np.mean([d.score for d in self.detections]))

    @property
    def matches_dataset(self) -> list[str | None]:
        return [d.dataset_match for d in self.detections]

    def record(self) -> dict[str, Any]:
        """This set's method keys of ``label_matches.json`` (docs/protocol/evaluation.md §1.11), in the reference's order.
        Run-time keys (stamps, settings, usage, durations, batch keys) are added by the caller."""
        record: dict[str, Any] = {
            "labels": [d.label for d in self.detections],
            "num_labels": len(self.detections),
            "matches_levenshtein": [d.levenshtein_match for d in self.detections],
            "matches_embeddings": [d.best_target for d in self.detections],
            "matches_embeddings_score": [d.score for d in self.detections],
            "mapping_rules_applied": self.mapping_rules_applied,
            "matches": [d.match for d in self.detections],
            "matches_dataset": self.matches_dataset,
        }
        if self.warnings:
            record["warnings"] = list(self.warnings)
        return record


@dataclass(frozen=True)
class LabelMatchingResult:
    """The outcome of one label-matching batch.

    ``sets`` are the matched images in input order; ``skipped`` the images that were not matched and keep
    their original predictions (gotcha §9.23). ``fix_definition_prompt_swap`` records which prompt
    selection applied to definitions generated for this batch (False = the paper's swapped selection).
    """

    sets: tuple[LabelSetResult, ...]
    skipped: tuple[SkippedLabelSet, ...]
    fix_definition_prompt_swap: bool = False

    def by_identifier(self) -> dict[str, LabelSetResult]:
        return {s.identifier: s for s in self.sets}

    def records(self) -> dict[str, dict[str, Any]]:
        """``{identifier: record}`` with the batch keys of ``label_matches.json`` added."""
        identifiers = [s.identifier for s in self.sets]
        total = sum(len(s.detections) for s in self.sets)
        records: dict[str, dict[str, Any]] = {}
        for label_set in self.sets:
            own = label_set.record()
            record: dict[str, Any] = {"labels": own.pop("labels"), "num_labels": own.pop("num_labels")}
            record["batch_size_sets"] = len(self.sets)
            record["batch_size_labels"] = total
            if len(self.sets) > 1:
                record["batch_identifiers"] = identifiers
            record.update(own)
            records[label_set.identifier] = record
        return records


# --------------------------------------------------------------------------------------------------
# The whole stage for a batch of label sets
# --------------------------------------------------------------------------------------------------


def match_label_sets(
    label_sets: Iterable[LabelSet],
    definitions: Mapping[str, str] | None,
    embeddings: EmbeddingTable | Mapping[str, npt.ArrayLike],
    settings: SettingsLike,
) -> LabelMatchingResult:
    """Label-match a batch (docs/protocol/evaluation.md §1), given the definitions and the embedding vectors.

    ``definitions`` maps cache key → text (a :class:`~.definitions.DefinitionsCache` works); it must hold
    every key of :func:`~.definitions.definition_items` (else :class:`~.definitions.MissingDefinitionsError`).
    ``embeddings`` must hold a vector for every text of :func:`~.embeddings.embedding_batch` (else
    :class:`~.embeddings.MissingEmbeddingsError`). Skipped images are returned in ``skipped``.
    """
    settings = as_settings(settings)
    check_assignment_supported(settings)
    if (settings.define_labels or settings.define_targets) and definitions is None:
        raise ValueError("definitions are required when define_labels or define_targets is set")
    table = as_embedding_table(embeddings)
    active, skipped = partition_label_sets(label_sets, settings)

    target_cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray | None, list[str]]] = {}

    def target_arrays(targets: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
        if targets not in target_cache:
            names = table.matrix(targets)
            definition_vectors = None
            if settings.define_targets:
                assert definitions is not None
                keys = [target_definition_item(t).cache_key for t in targets]
                definition_vectors = table.matrix(lookup_definitions(definitions, keys))
            target_cache[targets] = (names, definition_vectors, [text_key(t) for t in targets])
        return target_cache[targets]

    results: list[LabelSetResult] = []
    for label_set in active:
        targets = current_targets(label_set, settings)
        names, definition_vectors, target_keys = target_arrays(targets)
        results.append(
            _match_one_set(
                label_set,
                targets,
                current_dataset_targets(label_set, settings),
                names,
                definition_vectors,
                target_keys,
                definitions,
                table,
                settings,
            )
        )
    return LabelMatchingResult(tuple(results), tuple(skipped), settings.fix_definition_prompt_swap)


def _match_one_set(
    label_set: LabelSet,
    targets: tuple[str, ...],
    dataset_targets: frozenset[str],
    names: np.ndarray,
    definition_vectors: np.ndarray | None,
    target_keys: list[str],
    definitions: Mapping[str, str] | None,
    table: EmbeddingTable,
    settings: LabelMatchingSettings,
) -> LabelSetResult:
    labels, descriptions = label_set.labels, label_set.descriptions
    warnings: list[str] = []

    # The reference's warnings, in its order: definition items, then labels, descriptions, definitions.
    item_keys: list[str | None] = [None] * len(labels)
    if settings.define_labels:
        for j, (label, description) in enumerate(zip(labels, descriptions, strict=True)):
            item, item_warnings = detection_definition_item(label, description, settings)
            item_keys[j] = item.cache_key
            warnings.extend(item_warnings)

    label_norms = [normalize_label(label) for label in labels]
    warnings.extend(
        f"Using original label '{label}' to obtain embedding after normalization yielded an empty string."
        for label, norm in zip(labels, label_norms, strict=True)
        if norm.fallback
    )
    description_norms = [None if d is None else normalize_description_for_embedding(d) for d in descriptions]
    warnings.extend(
        f"Using original description '{d}' to obtain embedding after normalization yielded an empty string."
        for d, norm in zip(descriptions, description_norms, strict=True)
        if norm is not None and norm.fallback
    )
    definition_norms: list[Normalized | None] = [None] * len(labels)
    if settings.define_labels:
        assert definitions is not None
        texts = lookup_definitions(definitions, [k for k in item_keys if k is not None])
        defined = [normalize_definition(t) for t in texts]
        definition_norms = list(defined)
        warnings.extend(
            f"Using original definition '{t}' to obtain embedding after normalization "
            "yielded an empty string."
            for t, norm in zip(texts, defined, strict=True)
            if norm.fallback
        )

    source_texts: list[str] = []
    source_counts: list[int] = []
    for label_norm, description_norm, definition_norm in zip(
        label_norms, description_norms, definition_norms, strict=True
    ):
        own = [label_norm.value]
        if description_norm is not None:
            own.append(description_norm.value)
        if definition_norm is not None:
            own.append(definition_norm.value)
        source_texts.extend(own)
        source_counts.append(len(own))

    scores = score_matrix(table.matrix(source_texts), source_counts, names, definition_vectors)
    outside = int(np.count_nonzero((scores < -1.0) | (scores > 1.0)))
    if outside:
        # The reference only logs this (docs/protocol/evaluation.md §1.7).
        logger.warning("label set %r: %d scores outside [-1, 1]", label_set.identifier, outside)
    best = best_target_indices(scores)
    best_targets = [targets[k] for k in best]
    best_scores = [float(scores[j, k]) for j, k in enumerate(best)]
    matches, applied = apply_mapping_rules(best_targets, settings.mapping_rules, targets)
    kept = dataset_filter(matches, dataset_targets)
    lev = levenshtein_matches(
        [n.value for n in label_norms], targets, settings.levenshtein_threshold, target_keys=target_keys
    )
    detections = tuple(
        DetectionMatch(
            label=labels[j],
            description=descriptions[j],
            label_norm=label_norms[j].value,
            best_target=best_targets[j],
            score=best_scores[j],
            match=matches[j],
            mapping_rule_applied=applied[j],
            dataset_match=kept[j],
            levenshtein_match=lev[j],
            definition_key=item_keys[j],
        )
        for j in range(len(labels))
    )
    return LabelSetResult(label_set.identifier, detections, len(targets), tuple(warnings))
