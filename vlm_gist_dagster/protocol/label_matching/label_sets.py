"""Label sets (one per image), which of them are skipped, and the targets each one is matched against
(docs/protocol/evaluation.md §1.1 and §1.3).

A *label set* is one image's detections: for each detection its ``label`` (the ``object_name``
attribute; for baselines the detection label) and its ``description`` (or None), plus the image
``identifier`` (the paper uses the image basename) and, in per-image mode only, ``targets`` = the image's
ground-truth labels in GT order.

Skipping (§1.1, gotcha §9.23): an image without detections, or (per-image mode) without ground truth, is
not label-matched at all; its predictions are kept unchanged. Every function of this stage applies the
same rule through :func:`partition_label_sets`, so callers may pass all images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from vlm_gist_dagster.protocol.settings import LabelMatchingSettings

from .settings import LabelMatchingSettingsError

SkipReason = Literal["no_detections", "no_ground_truth"]


class LabelSetError(ValueError):
    """A label set is malformed (lengths, types, duplicate identifiers). The message names the set."""


@dataclass(frozen=True, init=False)
class LabelSet:
    """One image's detections to be label-matched.

    The constructor takes any iterables (and ``descriptions=None`` for none); the fields hold them as
    tuples, ``descriptions`` always one per label.

    >>> LabelSet("00001.jpg", ["cup_2", "red mug"], ["a cup", None]).descriptions
    ('a cup', None)
    >>> LabelSet("00001.jpg", ["cup_2"]).descriptions
    (None,)
    """

    identifier: str
    labels: tuple[str, ...]
    descriptions: tuple[str | None, ...]
    targets: tuple[str, ...] | None

    def __init__(
        self,
        identifier: str,
        labels: Iterable[str],
        descriptions: Iterable[str | None] | None = None,
        targets: Iterable[str] | None = None,
    ) -> None:
        if not isinstance(identifier, str):
            raise LabelSetError(f"label set identifier must be str, got {identifier!r}")
        where = f"label set {identifier!r}"
        labels = _tuple_of_str(labels, f"{where}: labels")
        if descriptions is None:
            paired: tuple[str | None, ...] = (None,) * len(labels)
        else:
            if isinstance(descriptions, str):
                raise LabelSetError(f"{where}: descriptions must be a list, got a string")
            paired = tuple(descriptions)
            bad = [d for d in paired if d is not None and not isinstance(d, str)]
            if bad:
                raise LabelSetError(f"{where}: descriptions must be str or None, got {bad[0]!r}")
            if len(paired) != len(labels):
                raise LabelSetError(
                    f"{where}: {len(paired)} descriptions for {len(labels)} labels; they must pair up"
                )
        # Frozen: the dataclass's own __init__ would set fields the same way.
        object.__setattr__(self, "identifier", identifier)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "descriptions", paired)
        object.__setattr__(
            self, "targets", None if targets is None else _tuple_of_str(targets, f"{where}: targets")
        )

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, slots=True)
class SkippedLabelSet:
    """An image that is not label-matched; its predictions stay as they are (gotcha §9.23)."""

    identifier: str
    reason: SkipReason


def partition_label_sets(
    label_sets: Iterable[LabelSet], settings: LabelMatchingSettings
) -> tuple[list[LabelSet], list[SkippedLabelSet]]:
    """Split label sets into those to match and those skipped, keeping input order (docs/protocol/evaluation.md §1.1).

    Skipped: no detections; in per-image mode also no ground truth. A per-image set whose targets are
    an *empty* list is skipped like a missing one: the reference would abort the whole batch on it
    ("list of lists … where one of them is empty"), which no published run hit.
    In COCO mode, passing per-set targets is an error, as in the reference.
    """
    active: list[LabelSet] = []
    skipped: list[SkippedLabelSet] = []
    seen: set[str] = set()
    for label_set in label_sets:
        if not isinstance(label_set, LabelSet):
            raise LabelSetError(f"expected LabelSet, got {type(label_set).__name__}")
        if label_set.identifier in seen:
            raise LabelSetError(f"duplicate label set identifier {label_set.identifier!r}")
        seen.add(label_set.identifier)
        if not settings.use_per_set_targets and label_set.targets is not None:
            raise LabelSetError(
                f"label set {label_set.identifier!r}: per-set targets given but use_per_set_targets is false "
                "(COCO mode matches every set against the settings' targets)"
            )
        if len(label_set.labels) == 0:
            skipped.append(SkippedLabelSet(label_set.identifier, "no_detections"))
        elif settings.use_per_set_targets and not label_set.targets:
            skipped.append(SkippedLabelSet(label_set.identifier, "no_ground_truth"))
        else:
            active.append(label_set)
    return active, skipped


def current_targets(label_set: LabelSet, settings: LabelMatchingSettings) -> tuple[str, ...]:
    """The targets this set is scored against, in order (docs/protocol/evaluation.md §1.3).

    COCO mode: ``dataset_targets + augmented_targets`` (80 + 277 = 357). Per-image mode: the set's own
    targets (its GT labels); no augmented targets are used there.
    """
    if settings.use_per_set_targets:
        if not label_set.targets:
            raise LabelSetError(f"label set {label_set.identifier!r}: per-image mode needs non-empty targets")
        return label_set.targets
    _check_coco_targets(settings)
    return settings.dataset_targets + settings.augmented_targets


def current_dataset_targets(label_set: LabelSet, settings: LabelMatchingSettings) -> frozenset[str]:
    """The targets a match must be one of to survive the dataset filter (docs/protocol/evaluation.md §1.9 step 2)."""
    if settings.use_per_set_targets:
        return frozenset(current_targets(label_set, settings))
    _check_coco_targets(settings)
    return frozenset(settings.dataset_targets)


def matching_targets(label_sets: Sequence[LabelSet], settings: LabelMatchingSettings) -> tuple[str, ...]:
    """Every distinct target of every (active) set, in first-occurrence order.

    The reference builds this with ``list(set(...))``, whose order follows Python's string hashing and
    changes between runs. It is used only to gather texts to define and embed; scores are always indexed
    through :func:`current_targets`, so results do not depend on this order. Ours is deterministic.
    """
    if settings.use_per_set_targets:
        everything = [t for label_set in label_sets for t in current_targets(label_set, settings)]
    else:
        _check_coco_targets(settings)
        everything = list(settings.dataset_targets + settings.augmented_targets)
    return tuple(dict.fromkeys(everything))


def _check_coco_targets(settings: LabelMatchingSettings) -> None:
    if not settings.dataset_targets:
        raise LabelMatchingSettingsError(
            "dataset_targets: must not be empty when use_per_set_targets is false (docs/protocol/evaluation.md §1.3)"
        )


def _tuple_of_str(values: Iterable[str], where: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise LabelSetError(f"{where}: must be a list of strings, got a string")
    result = tuple(values)
    bad = [v for v in result if not isinstance(v, str)]
    if bad:
        raise LabelSetError(f"{where}: must be strings, got {bad[0]!r}")
    return result
