"""Loading the paper's settings files: any kind (:func:`load_settings`, the kind told from the keys) or
one expected kind (:func:`load_description_settings` & co.)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .baseline import BaselineSettings
from .description import DescriptionSettings
from .detection import DetectionSettings
from .errors import SettingsError, read_settings_json, validate_settings
from .kinds import KIND_MODELS, SettingsKind, detect_kind
from .label_matching import LabelMatchingSettings
from .model_file import ModelSettings, load_model_settings
from .validation import ValidationSettings


def parse_settings(
    data: Mapping[str, Any], kind: SettingsKind | None = None, *, file: str | Path | None = None
) -> BaseModel:
    """Typed settings from an already-parsed dict (``kind`` detected when None)."""
    if kind is None:
        kind = detect_kind(data, file)
    if kind not in KIND_MODELS:
        raise SettingsError(file, None, f"unknown settings kind {kind!r}")
    return validate_settings(KIND_MODELS[kind], data, file)


def load_settings(
    path: str | Path,
) -> (
    DescriptionSettings
    | DetectionSettings
    | LabelMatchingSettings
    | ValidationSettings
    | BaselineSettings
    | ModelSettings
):
    """The typed settings of any of the paper's settings files; the kind comes from the content. A file
    with our ``"model"`` header is returned as :class:`ModelSettings`."""
    data = read_settings_json(path)
    if isinstance(data, Mapping) and "model" in data:
        return load_model_settings(path)
    if not isinstance(data, Mapping):
        raise SettingsError(path, None, f"expected a JSON object, got {type(data).__name__}")
    return parse_settings(data, file=path)  # type: ignore[return-value]


def _load_kind(path: str | Path, kind: SettingsKind) -> Any:
    data = read_settings_json(path)
    if not isinstance(data, Mapping):
        raise SettingsError(path, None, f"expected a JSON object, got {type(data).__name__}")
    found = detect_kind(data, path)
    if found != kind:
        message = f"expected {kind} settings, but the keys are those of {found} settings"
        raise SettingsError(path, None, message)
    return parse_settings(data, kind, file=path)


def load_description_settings(path: str | Path) -> DescriptionSettings:
    return _load_kind(path, "description")


def load_detection_settings(path: str | Path) -> DetectionSettings:
    return _load_kind(path, "detection")


def load_label_matching_settings(path: str | Path) -> LabelMatchingSettings:
    return _load_kind(path, "label_matching")


def load_validation_settings(path: str | Path) -> ValidationSettings:
    return _load_kind(path, "validation")


def load_baseline_settings(path: str | Path) -> BaselineSettings:
    return _load_kind(path, "baseline")
