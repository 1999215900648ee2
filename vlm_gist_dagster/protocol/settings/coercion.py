"""Coercion of the paper's string-valued parameters, and the base model of every settings class.

The paper's request blocks are dicts of **string-valued** nimbro_api parameters (``"False"``, ``"1.0"``,
``"10000"``, ``"[]"``); the ``Paper*`` types below turn those strings into typed values (and accept typed
values too).

>>> from pydantic import TypeAdapter
>>> TypeAdapter(PaperBool).validate_python("False"), TypeAdapter(PaperOptInt).validate_python("None")
(False, None)
>>> TypeAdapter(PaperStrTuple).validate_python('["json_decoder.py"]')
('json_decoder.py',)
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
)


def _paper_none(value: Any) -> Any:
    if isinstance(value, str) and value.strip() in ("None", "none", "null"):
        return None
    return value


def _paper_bool(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "true":
            return True
        if text == "false":
            return False
        raise ValueError(f"expected a boolean ('True' or 'False'), got {value!r}")
    return value


def _paper_number(kind: type) -> Any:
    def coerce(value: Any) -> Any:
        value = _paper_none(value)
        if isinstance(value, str):
            try:
                return kind(value.strip())
            except ValueError:
                expected = "an integer" if kind is int else "a number"
                raise ValueError(f"expected {expected}, got {value!r}") from None
        return value

    return coerce


def _paper_str_list(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise ValueError(
                    f"expected a list such as '[]' or '[\"json_decoder.py\"]', got {value!r}"
                ) from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list, got {value!r}")
    return tuple(value)


PaperBool = Annotated[StrictBool, BeforeValidator(_paper_bool)]
PaperFloat = Annotated[float, Strict(), BeforeValidator(_paper_number(float))]
PaperInt = Annotated[StrictInt, BeforeValidator(_paper_number(int))]
PaperOptFloat = Annotated[Annotated[float, Strict()] | None, BeforeValidator(_paper_number(float))]
PaperOptInt = Annotated[StrictInt | None, BeforeValidator(_paper_number(int))]
PaperStrTuple = Annotated[tuple[StrictStr, ...], BeforeValidator(_paper_str_list)]


def _non_negative_number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    if value < 0:
        raise ValueError(f"must be >= 0, got {value!r}")
    return value


#: An int stays an int (an edit distance), a float stays a float (a fraction when in (0, 1)).
NonNegNumber = Annotated[int | float, PlainValidator(_non_negative_number)]


class SettingsModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: Paper keys that only steer the paper's own file handling (paths, metadata files, usage polling).
#: The pipeline manages storage itself, so these are refused with a message instead of being ignored.
_IO_KEYS = frozenset(
    {
        "leave_images_in_place",
        "keep_image_name",
        "usage_skip",
        "usage_delay",
        "data_path",
        "image_folder",
        "crop_folder",
        "metadata_file",
        "metadata_write_relative_paths",
        "metadata_write_no_paths",
        "definitions_file",
    }
)


def refuse_io_keys(data: Any) -> None:
    if isinstance(data, Mapping):
        found = sorted(set(data) & _IO_KEYS)
        if found:
            raise ValueError(
                f"key(s) {found} steer the paper's own file handling; the pipeline manages storage "
                "itself (data/ directory, Parquet assets, response cache): remove them"
            )
