"""Typed settings for every stage, reading the paper's JSON settings files as they are.

The paper keeps its settings in flat JSON dicts (``settings/{description,detection,label_matching,
validation,baseline}/*.json``). Its request blocks (``vlm_structured_description``, ``llm``, ``vlm``, …) are
dicts of **string-valued** nimbro_api parameters (``"False"``, ``"1.0"``, ``"10000"``, ``"[]"``); these
models coerce those strings to typed values (and accept typed values too). Keys unknown to the paper are
rejected with a :class:`SettingsError` that names the file and the key path. A key the file leaves out
takes the paper's **module default** (docs/protocol/pipeline.md §1.1, §4.1, §5, §6; docs/protocol/evaluation.md §1.2),
exactly as the paper's ``complete_settings`` does; where a benchmark file differs from the module
default the file wins (e.g. ``dict_value_normalization``).

One module per concern: ``coercion`` (the paper's string values, the base model), ``request`` (the
nimbro_api request block), one module per stage (``description``, ``detection``, ``validation``,
``label_matching`` with its target lists as data in ``targets.json``, ``baseline``), ``kinds`` and
``loading`` (a file's kind from its keys; the loaders), ``model_file`` (a model file of
``settings/models/``: our ``"model"`` header, the partition-key and display-name rules). Everything is
importable from here.

Entry points: :func:`load_settings` (kind detected from the keys present, not from the file name),
the typed helpers :func:`load_description_settings` & co., and :func:`load_model_settings` for a model
file of ``settings/models/`` (the paper's description or baseline format plus an optional ``"model"``
header).

>>> s = DescriptionSettings.model_validate({"vlm_structured_description": {"model_max_tokens": "10000"}})
>>> s.vlm_structured_description.model_max_tokens, s.vlm_structured_description.stream_completion
(10000, True)
>>> s.retry, s.png_max_pixels
(3, 2073600)
"""

from __future__ import annotations

from .baseline import BaselineSettings, FlorencePrompt
from .coercion import NonNegNumber, PaperBool, PaperFloat, PaperInt, PaperOptFloat, PaperOptInt, PaperStrTuple
from .description import (
    BENCHMARK_DICT_PROMPT,
    DEFAULT_DECOUPLED_TASK_RELEVANCY_PROMPT,
    DEFAULT_DIRECT_TASK_RELEVANCY_PROMPT,
    DEFAULT_SYSTEM_PROMPT,
    MODULE_DICT_PROMPT,
    DescriptionSettings,
    DictItem,
    ImageDetail,
    Role,
    ValueNormalization,
)
from .detection import DetectionSettings
from .errors import SettingsError
from .grounding import GROUNDING_LABELS, GROUNDING_MODES, GroundingMode, GroundingSettings, grounding_label
from .kinds import SettingsKind, detect_kind
from .label_matching import (
    AUGMENTED_TARGETS,
    COCO_TARGETS,
    DEFAULT_DEFINITION_PROMPT_ITEM,
    DEFAULT_DEFINITION_PROMPT_LABEL,
    DEFAULT_DEFINITION_PROMPT_SYSTEM,
    MAPPING_RULES,
    LabelMatchingSettings,
)
from .loading import (
    load_baseline_settings,
    load_description_settings,
    load_detection_settings,
    load_label_matching_settings,
    load_settings,
    load_validation_settings,
    parse_settings,
)
from .model_file import (
    MODEL_KEY_PATTERN,
    PAPER_PREFIXES,
    InvalidModelKey,
    ModelHeader,
    ModelSettings,
    display_name_from_stem,
    load_model_settings,
    model_key_for,
    parse_model_settings,
    validate_model_key,
)
from .request import KNOWN_COMPLETION_PARSERS, CompletionParams
from .validation import DEFAULT_DESCRIPTION_PROMPT, DEFAULT_VALIDATION_PROMPT, ValidationSettings

__all__ = [
    "AUGMENTED_TARGETS",
    "BENCHMARK_DICT_PROMPT",
    "COCO_TARGETS",
    "DEFAULT_DECOUPLED_TASK_RELEVANCY_PROMPT",
    "DEFAULT_DEFINITION_PROMPT_ITEM",
    "DEFAULT_DEFINITION_PROMPT_LABEL",
    "DEFAULT_DEFINITION_PROMPT_SYSTEM",
    "DEFAULT_DESCRIPTION_PROMPT",
    "DEFAULT_DIRECT_TASK_RELEVANCY_PROMPT",
    "DEFAULT_SYSTEM_PROMPT",
    "DEFAULT_VALIDATION_PROMPT",
    "GROUNDING_LABELS",
    "GROUNDING_MODES",
    "KNOWN_COMPLETION_PARSERS",
    "MAPPING_RULES",
    "MODEL_KEY_PATTERN",
    "MODULE_DICT_PROMPT",
    "PAPER_PREFIXES",
    "BaselineSettings",
    "CompletionParams",
    "DescriptionSettings",
    "DetectionSettings",
    "DictItem",
    "FlorencePrompt",
    "GroundingMode",
    "GroundingSettings",
    "ImageDetail",
    "InvalidModelKey",
    "LabelMatchingSettings",
    "ModelHeader",
    "ModelSettings",
    "NonNegNumber",
    "PaperBool",
    "PaperFloat",
    "PaperInt",
    "PaperOptFloat",
    "PaperOptInt",
    "PaperStrTuple",
    "Role",
    "SettingsError",
    "SettingsKind",
    "ValidationSettings",
    "ValueNormalization",
    "detect_kind",
    "display_name_from_stem",
    "grounding_label",
    "load_baseline_settings",
    "load_description_settings",
    "load_detection_settings",
    "load_label_matching_settings",
    "load_model_settings",
    "load_settings",
    "load_validation_settings",
    "model_key_for",
    "parse_model_settings",
    "parse_settings",
    "validate_model_key",
]
