"""The label-matching settings this stage needs, as one typed, frozen object (spec/evaluation.md §1.2).

:class:`LabelMatchingOptions` is what every function of the stage takes. :func:`as_options` builds it from

* a :class:`LabelMatchingOptions` (returned as is);
* a mapping in the paper's JSON format (``label_matching_settings_{coco,per_image}.json``, read as is;
  its LLM values are strings such as ``"1.0"`` and ``"True"``);
* any settings object exposing the same field names as attributes (e.g. the project's pydantic
  ``LabelMatchingSettings``); ``llm`` may then be a mapping or an object too.

Run-time keys of the paper's file that do not change the method (``definitions_file``, ``usage_skip``,
``usage_delay``, ``data_path``, ``metadata_file``) are accepted and ignored: where the cache lives is the
caller's business.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from .prompts import DEFINITION_PROMPT_ITEM, DEFINITION_PROMPT_LABEL, DEFINITION_PROMPT_SYSTEM


class LabelMatchingSettingsError(ValueError):
    """Label-matching settings are malformed or inconsistent. The message names the field."""


class HungarianAssignmentUnsupportedError(NotImplementedError):
    """``allow_duplicate_labels=False`` asks for the paper's Hungarian branch, which cannot run.

    In the reference it iterates over an integer (``for _ in len(labels[i])``), raising TypeError, and
    uses an undefined Levenshtein list, so no published run used it (spec §1.8, gotcha §9.3).
    """


# Keys of the paper's settings file that configure where things are written, not the method.
_RUNTIME_KEYS = frozenset({"definitions_file", "usage_skip", "usage_delay", "data_path", "metadata_file"})

# The paper's `llm` block names (strings in the JSON) → our field names.
_LLM_ALIASES = {
    "model_temperature": "temperature",
    "model_top_p": "top_p",
    "model_max_tokens": "max_tokens",
    "model_presence_penalty": "presence_penalty",
    "model_frequency_penalty": "frequency_penalty",
    "model_reasoning_effort": "reasoning_effort",
}


@dataclass(frozen=True)
class DefinitionLLMParameters:
    """Chat-completion parameters for the definition requests.

    Defaults are the values of both published settings files (which override some code defaults:
    ``correction_attempts`` 0 → 2, timeouts 10/5/30 → 15/15/30 s, ``probe_api_connection`` False → True).
    """

    api_endpoint: str = "OpenAI"
    model_name: str = "gpt-4o-2024-11-20"
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 2000
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    reasoning_effort: str = "none"
    stream_completion: bool = True
    correction_attempts: int = 2
    timeout_chunk_first: float = 15.0
    timeout_chunk_next: float = 15.0
    timeout_completion: float = 30.0
    probe_api_connection: bool = True
    completion_parsers: tuple[str, ...] = ()
    normalize_text_completion: bool = False

    @classmethod
    def from_paper(cls, llm: Mapping[str, Any] | Any) -> DefinitionLLMParameters:
        """From the paper's ``llm`` block (string values) or any object/mapping with our field names."""
        if isinstance(llm, DefinitionLLMParameters):
            return llm
        if not isinstance(llm, Mapping):
            llm = {f.name: getattr(llm, f.name) for f in fields(cls) if hasattr(llm, f.name)}
        kwargs: dict[str, Any] = {}
        for raw_name, raw_value in llm.items():
            name = _LLM_ALIASES.get(raw_name, raw_name)
            spec = next((f for f in fields(cls) if f.name == name), None)
            if spec is None:
                raise LabelMatchingSettingsError(f"llm.{raw_name}: unknown LLM parameter")
            kwargs[name] = _coerce(raw_value, cls.__dataclass_fields__[name].type, f"llm.{raw_name}")
        return cls(**kwargs)


@dataclass(frozen=True)
class LabelMatchingOptions:
    """Everything label matching needs to know (spec/evaluation.md §1.2; field names as in the paper).

    ``fix_definition_prompt_swap`` is our opt-in: False reproduces the paper's swapped prompt selection.
    The targets of per-image mode (``use_per_set_targets``) come with each label set, so both target
    lists must then be empty, as in the paper.
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
    llm: DefinitionLLMParameters = field(default_factory=DefinitionLLMParameters)

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
                raise LabelMatchingSettingsError(f"mapping_rules: keys and values must be strings, got {bad!r}")
            object.__setattr__(self, "mapping_rules", MappingProxyType(rules))
        if self.use_per_set_targets and (self.dataset_targets or self.augmented_targets):
            # spec §1.3: "Both settings lists must be empty, otherwise it is an error."
            raise LabelMatchingSettingsError(
                "dataset_targets/augmented_targets: must be empty when use_per_set_targets is true "
                f"(got {len(self.dataset_targets)} and {len(self.augmented_targets)} entries)"
            )
        if not isinstance(self.llm, DefinitionLLMParameters):
            object.__setattr__(self, "llm", DefinitionLLMParameters.from_paper(self.llm))

    def check_assignment_supported(self) -> None:
        """Raise :class:`HungarianAssignmentUnsupportedError` unless ``allow_duplicate_labels`` is true."""
        if not self.allow_duplicate_labels:
            raise HungarianAssignmentUnsupportedError(
                "allow_duplicate_labels=false selects the paper's Hungarian assignment, which crashes in the "
                "reference code (spec/evaluation.md §1.8) and was used by no published run; only "
                "allow_duplicate_labels=true (argmax, duplicates allowed) is implemented"
            )

    @classmethod
    def from_paper_json(cls, settings: Mapping[str, Any], *, source: str = "settings") -> LabelMatchingOptions:
        """From the paper's settings JSON (a parsed mapping). Unknown keys are an error naming the key."""
        if not isinstance(settings, Mapping):
            raise LabelMatchingSettingsError(f"{source}: expected a JSON object, got {type(settings).__name__}")
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, value in settings.items():
            if name in _RUNTIME_KEYS:
                continue
            if name not in known:
                raise LabelMatchingSettingsError(f"{source}: unknown label-matching setting {name!r}")
            if name == "llm":
                kwargs[name] = DefinitionLLMParameters.from_paper(value)
            elif name == "mapping_rules":
                if value is not None and not isinstance(value, Mapping):
                    raise LabelMatchingSettingsError(f"{source}: mapping_rules must be an object or null")
                kwargs[name] = value
            elif name in ("dataset_targets", "augmented_targets"):
                if not isinstance(value, list | tuple):
                    raise LabelMatchingSettingsError(f"{source}: {name} must be a list of strings")
                kwargs[name] = tuple(value)
            else:
                kwargs[name] = _coerce(value, cls.__dataclass_fields__[name].type, f"{source}: {name}")
        try:
            return cls(**kwargs)
        except LabelMatchingSettingsError as error:
            raise LabelMatchingSettingsError(f"{source}: {error}") from None


def as_options(settings: Any) -> LabelMatchingOptions:
    """Coerce settings (options, the paper's JSON mapping, or a settings object) to options."""
    if isinstance(settings, LabelMatchingOptions):
        return settings
    if isinstance(settings, Mapping):
        return LabelMatchingOptions.from_paper_json(settings)
    if settings is None:
        raise LabelMatchingSettingsError("label-matching settings are required (got None)")
    kwargs: dict[str, Any] = {}
    for spec in fields(LabelMatchingOptions):
        if hasattr(settings, spec.name):
            value = getattr(settings, spec.name)
            if spec.name == "llm":
                value = DefinitionLLMParameters.from_paper(value)
            elif spec.name not in ("dataset_targets", "augmented_targets", "mapping_rules"):
                value = _coerce(value, spec.type, spec.name)
            kwargs[spec.name] = value
    return LabelMatchingOptions(**kwargs)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Parse the paper's stringly-typed values ("1.0", "True", "[]") into the annotated type."""
    text = str(annotation)
    try:
        if text == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip() in ("True", "true", "False", "false"):
                return value.strip() in ("True", "true")
            raise ValueError(f"expected a boolean, got {value!r}")
        if text == "int | None":
            return None if value is None else _coerce(value, "int", where)
        if text == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"expected an integer, got {value!r}")
            return int(value)
        if text == "float":
            if isinstance(value, bool):
                raise ValueError(f"expected a number, got {value!r}")
            return float(value)
        if text == "str":
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {value!r}")
            return value
        if text == "tuple[str, ...]":
            parsed = json.loads(value) if isinstance(value, str) else value
            if not isinstance(parsed, list | tuple) or not all(isinstance(v, str) for v in parsed):
                raise ValueError(f"expected a list of strings, got {value!r}")
            return tuple(parsed)
    except (TypeError, ValueError) as error:
        raise LabelMatchingSettingsError(f"{where}: {error}") from None
    return value
