"""The label-matching settings this stage needs, as one frozen object (docs/protocol/evaluation.md §1.2).

:class:`LabelMatchingOptions` is what every function of the stage works with. :func:`as_options` builds it
from

* a :class:`LabelMatchingOptions` (returned as is);
* the project's settings model :class:`~vlm_gist_dagster.protocol.settings.LabelMatchingSettings`
  (e.g. from ``load_label_matching_settings(path)``);
* a mapping in the paper's JSON format (``label_matching_settings_{coco,per_image}.json`` as is), validated
  by :mod:`vlm_gist_dagster.protocol.settings` (string values such as ``"1.0"`` coerced, unknown keys
  refused with a :class:`~vlm_gist_dagster.protocol.settings.SettingsError` naming the key).

Constructing options directly takes explicit values; unlike the settings model, the target lists and
mapping rules default to empty (no hidden COCO defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vlm_gist_dagster.protocol.settings import CompletionParams, LabelMatchingSettings, parse_settings

from .prompts import DEFINITION_PROMPT_ITEM, DEFINITION_PROMPT_LABEL, DEFINITION_PROMPT_SYSTEM


class LabelMatchingSettingsError(ValueError):
    """Label-matching options are inconsistent (docs/protocol/evaluation.md §1.3). The message names the field."""


class HungarianAssignmentUnsupportedError(NotImplementedError):
    """``allow_duplicate_labels=False`` asks for the paper's Hungarian branch, which cannot run.

    In the reference it iterates over an integer (``for _ in len(labels[i])``), raising TypeError, and
    uses an undefined Levenshtein list, so no published run used it (docs/protocol/evaluation.md §1.8, gotcha §9.3).
    """


def _default_llm() -> CompletionParams:
    # The paper's module defaults for the definition LLM (gpt-4o-2024-11-20, T 1.0, max 2000 tokens, …);
    # both published settings files override corrections (2) and timeouts (15/15/30 s).
    return LabelMatchingSettings().llm


@dataclass(frozen=True)
class LabelMatchingOptions:
    """Everything label matching needs to know (docs/protocol/evaluation.md §1.2; field names as in the paper).

    ``fix_definition_prompt_swap`` is our opt-in: False reproduces the paper's swapped prompt selection.
    In per-image mode (``use_per_set_targets``) the targets come with each label set, so both target
    lists must be empty, as in the paper.
    """

    dataset_targets: tuple[str, ...] = ()
    augmented_targets: tuple[str, ...] = ()
    mapping_rules: Mapping[str, str] | None = field(default_factory=lambda: MappingProxyType({}))
    use_per_set_targets: bool = False
    define_labels: bool = True
    define_targets: bool = True
    definitions_write: bool = True
    definition_item_indent: int | None = 4
    definition_item_key_name: str = "object_name"
    definition_item_key_description: str = "description"
    definition_prompt_system: str = DEFINITION_PROMPT_SYSTEM
    definition_prompt_item: str = DEFINITION_PROMPT_ITEM
    definition_prompt_label: str = DEFINITION_PROMPT_LABEL
    levenshtein_threshold: float = 0
    allow_duplicate_labels: bool = True
    fix_definition_prompt_swap: bool = False
    llm: CompletionParams = field(default_factory=_default_llm)

    def __post_init__(self) -> None:
        for name in ("dataset_targets", "augmented_targets"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(t, str) for t in value):
                raise LabelMatchingSettingsError(f"{name}: must be a list of strings")
            object.__setattr__(self, name, tuple(value))
        if self.mapping_rules is not None:
            rules = dict(self.mapping_rules)
            bad = {k: v for k, v in rules.items() if not (isinstance(k, str) and isinstance(v, str))}
            if bad:
                raise LabelMatchingSettingsError(
                    f"mapping_rules: keys and values must be strings, got {bad!r}"
                )
            object.__setattr__(self, "mapping_rules", MappingProxyType(rules))
        if self.use_per_set_targets and (self.dataset_targets or self.augmented_targets):
            # docs/protocol/evaluation.md §1.3: "Both settings lists must be empty, otherwise it is an error."
            raise LabelMatchingSettingsError(
                "dataset_targets/augmented_targets: must be empty when use_per_set_targets is true "
                f"(got {len(self.dataset_targets)} and {len(self.augmented_targets)} entries)"
            )
        if not isinstance(self.llm, CompletionParams):
            raise LabelMatchingSettingsError(f"llm: expected CompletionParams, got {type(self.llm).__name__}")

    def check_assignment_supported(self) -> None:
        """Raise :class:`HungarianAssignmentUnsupportedError` unless ``allow_duplicate_labels`` is true."""
        if not self.allow_duplicate_labels:
            raise HungarianAssignmentUnsupportedError(
                "allow_duplicate_labels=false selects the paper's Hungarian assignment, which crashes in the "
                "reference code (docs/protocol/evaluation.md §1.8) and was used by no published run; only "
                "allow_duplicate_labels=true (argmax, duplicates allowed) is implemented"
            )

    @classmethod
    def from_settings(cls, settings: LabelMatchingSettings) -> LabelMatchingOptions:
        """From the project's settings model (all method fields; storage is the caller's business)."""
        return cls(
            dataset_targets=settings.dataset_targets,
            augmented_targets=settings.augmented_targets,
            mapping_rules=settings.mapping_rules,
            use_per_set_targets=settings.use_per_set_targets,
            define_labels=settings.define_labels,
            define_targets=settings.define_targets,
            definitions_write=settings.definitions_write,
            definition_item_indent=settings.definition_item_indent,
            definition_item_key_name=settings.definition_item_key_name,
            definition_item_key_description=settings.definition_item_key_description,
            definition_prompt_system=settings.definition_prompt_system,
            definition_prompt_item=settings.definition_prompt_item,
            definition_prompt_label=settings.definition_prompt_label,
            levenshtein_threshold=settings.levenshtein_threshold,
            allow_duplicate_labels=settings.allow_duplicate_labels,
            fix_definition_prompt_swap=settings.fix_definition_prompt_swap,
            llm=settings.llm,
        )


#: What every function of the stage accepts as ``settings``.
SettingsLike = LabelMatchingOptions | LabelMatchingSettings | Mapping[str, Any]


def as_options(settings: SettingsLike) -> LabelMatchingOptions:
    """Coerce options, the settings model or the paper's JSON mapping to :class:`LabelMatchingOptions`."""
    if isinstance(settings, LabelMatchingOptions):
        return settings
    if isinstance(settings, LabelMatchingSettings):
        return LabelMatchingOptions.from_settings(settings)
    if isinstance(settings, Mapping):
        return LabelMatchingOptions.from_settings(parse_settings(settings, "label_matching"))  # type: ignore[arg-type]
    raise TypeError(
        "label-matching settings must be LabelMatchingOptions, LabelMatchingSettings or the paper's JSON "
        f"mapping, got {type(settings).__name__}"
    )
