"""Settings of a baseline model that replaces stages A and B: Florence-2 or Kosmos-2 (spec/pipeline.md §6).

>>> BaselineSettings().model_prompt
FlorencePrompt(task_prompt='<DENSE_REGION_CAPTION>', prompt_args=None)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .coercion import SettingsModel, refuse_io_keys
from .detection import SegmentationSettings
from .errors import settings_error


class FlorencePrompt(SettingsModel):
    """Florence-2 prompt: a task token such as ``<OD>`` or ``<DENSE_REGION_CAPTION>``."""

    task_prompt: StrictStr
    prompt_args: Any = None


class BaselineSettings(SegmentationSettings):
    """Settings of a baseline model that replaces stages A and B (spec/pipeline.md §6). Defaults are
    the paper's Baseline module defaults (Florence-2 large, dense region captions)."""

    model_name: Literal["florence2", "kosmos2"] = "florence2"
    model_id: StrictInt = 0
    model_flavor: StrictStr = "large"
    #: Florence-2: ``{"task_prompt": ..., "prompt_args": ...}``; Kosmos-2: a text prompt.
    model_prompt: FlorencePrompt | StrictStr = FlorencePrompt(task_prompt="<DENSE_REGION_CAPTION>")
    model_num_beams: StrictInt = Field(default=3, ge=1)
    model_max_new_tokens: StrictInt = Field(default=1024, ge=1)
    model_max_batch_size: StrictInt = Field(default=6, ge=1)

    @field_validator("model_prompt", mode="before")
    @classmethod
    def _prompt_value(cls, value: Any) -> Any:
        # Validate the dict form here so errors name 'model_prompt.<key>' instead of union branches.
        if isinstance(value, Mapping):
            try:
                return FlorencePrompt.model_validate(dict(value))
            except ValidationError as exc:
                inner = settings_error(exc, None)
                raise ValueError(inner.message) from None
        if not isinstance(value, (str, FlorencePrompt)):
            expected = "a text prompt or {'task_prompt': ..., 'prompt_args': ...}"
            raise ValueError(f"expected {expected}, got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _prompt_shape(cls, data: Any) -> Any:
        refuse_io_keys(data)
        if isinstance(data, dict):
            name = data.get("model_name", "florence2")
            prompt = data.get("model_prompt")
            if name == "florence2" and prompt is not None and not isinstance(prompt, Mapping):
                raise ValueError("florence2 takes model_prompt {'task_prompt': ..., 'prompt_args': ...}")
            if name == "kosmos2" and "model_prompt" not in data:
                raise ValueError(
                    "kosmos2 needs a text model_prompt (e.g. '<grounding> Describe this image in detail:')"
                )
            if name == "kosmos2" and not isinstance(prompt, str):
                raise ValueError("kosmos2 takes a text model_prompt")
        return data
