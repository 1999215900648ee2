"""Errors of the settings layer: :class:`SettingsError` names the file and the key path, and the two
readers every loader uses (a JSON file; a dict validated into a settings model)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError


class SettingsError(ValueError):
    """A settings file (or dict) that cannot be used.

    ``str(error)`` names the file and the key path, e.g.
    ``description_settings_x.json: unknown key 'vlm_structured_description.model_tempreature'``.
    """

    def __init__(self, file: str | Path | None, key: str | None, message: str):
        self.file = Path(file) if file is not None else None
        self.key = key
        self.message = message
        where = self.file.name if self.file is not None else "<settings>"
        super().__init__(f"{where}: {message}")


def _loc_to_key(loc: tuple[Any, ...]) -> str:
    """``('dict_items', 0, 'key')`` → ``'dict_items[0].key'``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def settings_error(
    exc: ValidationError, file: str | Path | None, prefix: tuple[Any, ...] = ()
) -> SettingsError:
    messages: list[str] = []
    first_key: str | None = None
    for error in exc.errors():
        key = _loc_to_key(prefix + tuple(error["loc"]))
        first_key = first_key or key or None
        if error["type"] == "extra_forbidden":
            messages.append(f"unknown key '{key}'")
            continue
        msg = str(error["msg"])
        for noise in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(noise)
        value = error.get("input")
        if "got" not in msg and isinstance(value, (str, int, float, bool)) and error["type"] != "missing":
            # pydantic says what it wanted, not what it found: "key 'retry': … valid integer, got 'three'"
            shown = repr(value)
            msg += f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
        messages.append(f"key '{key}': {msg}" if key else msg)
    return SettingsError(file, first_key, "; ".join(messages))


def read_settings_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(path, None, "file not found") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(path, None, f"not valid JSON: {exc}") from None


def validate_settings(
    model: type[BaseModel], data: Any, file: str | Path | None, prefix: tuple[Any, ...] = ()
) -> Any:
    if not isinstance(data, Mapping):
        raise SettingsError(file, None, f"expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise settings_error(exc, file, prefix) from None
