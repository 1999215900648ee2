"""The settings every function of this stage takes: the project's settings model, one type
(docs/protocol/evaluation.md §1.2).

Every function of the stage takes a
:class:`~vlm_gist_dagster.protocol.settings.LabelMatchingSettings` (e.g. from
``load_label_matching_settings(path)``) or, for convenience, a mapping in the paper's JSON format
(``label_matching_settings_{coco,per_image}.json`` as is); :func:`as_settings` validates the mapping with
:mod:`vlm_gist_dagster.protocol.settings` (string values such as ``"1.0"`` coerced, unknown keys refused
with a :class:`~vlm_gist_dagster.protocol.settings.SettingsError` naming the key).

The model's defaults are the paper's module defaults, so a model built in code matches against the COCO
target lists and mapping rules unless told otherwise; per-image mode needs both target lists empty.

>>> settings = as_settings({"use_per_set_targets": True, "dataset_targets": [], "augmented_targets": []})
>>> settings.use_per_set_targets, settings.dataset_targets, len(settings.mapping_rules)
(True, (), 11)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from vlm_gist_dagster.protocol.settings import LabelMatchingSettings, parse_settings


class LabelMatchingSettingsError(ValueError):
    """Label-matching settings are inconsistent (docs/protocol/evaluation.md §1.3). The message names the field.

    The settings model refuses these combinations when it is validated; this error guards the functions
    of the stage against a model that skipped validation (``model_copy(update=...)``, ``model_construct``).
    """


class HungarianAssignmentUnsupportedError(NotImplementedError):
    """``allow_duplicate_labels=False`` asks for the paper's Hungarian branch, which cannot run.

    In the reference it iterates over an integer (``for _ in len(labels[i])``), raising TypeError, and
    uses an undefined Levenshtein list, so no published run used it (docs/protocol/evaluation.md §1.8, gotcha §9.3).
    """


#: What every function of the stage accepts as ``settings``.
SettingsLike = LabelMatchingSettings | Mapping[str, Any]


def as_settings(settings: SettingsLike) -> LabelMatchingSettings:
    """The settings model as is, or the paper's JSON mapping validated into it."""
    if isinstance(settings, LabelMatchingSettings):
        return settings
    if isinstance(settings, Mapping):
        return cast(LabelMatchingSettings, parse_settings(settings, "label_matching"))
    raise TypeError(
        "label-matching settings must be LabelMatchingSettings or the paper's JSON mapping, "
        f"got {type(settings).__name__}"
    )


def check_assignment_supported(settings: LabelMatchingSettings) -> None:
    """Raise :class:`HungarianAssignmentUnsupportedError` unless ``allow_duplicate_labels`` is true."""
    if not settings.allow_duplicate_labels:
        raise HungarianAssignmentUnsupportedError(
            "allow_duplicate_labels=false selects the paper's Hungarian assignment, which crashes in the "
            "reference code (docs/protocol/evaluation.md §1.8) and was used by no published run; only "
            "allow_duplicate_labels=true (argmax, duplicates allowed) is implemented"
        )
