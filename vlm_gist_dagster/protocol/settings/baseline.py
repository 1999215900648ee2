"""Settings of a baseline model that replaces stages A and B: Florence-2 or Kosmos-2 (docs/protocol/pipeline.md §6),
or ours, ``sam3`` (``sam3_classes``: SAM 3 prompted with the dataset's class names, a closed-vocabulary
reference; its boxes and masks are SAM 3's, so ``segmentation_name`` must be null).

>>> BaselineSettings().model_prompt
FlorencePrompt(task_prompt='<DENSE_REGION_CAPTION>', prompt_args=None)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    Strict,
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
    """Settings of a baseline model that replaces stages A and B (docs/protocol/pipeline.md §6). Defaults are
    the paper's Baseline module defaults (Florence-2 large, dense region captions)."""

    model_name: Literal["florence2", "kosmos2", "sam3"] = "florence2"
    model_id: StrictInt = 0
    model_flavor: StrictStr = "large"
    #: Florence-2: ``{"task_prompt": ..., "prompt_args": ...}``; Kosmos-2: a text prompt.
    model_prompt: FlorencePrompt | StrictStr = FlorencePrompt(task_prompt="<DENSE_REGION_CAPTION>")
    model_num_beams: StrictInt = Field(default=3, ge=1)
    model_max_new_tokens: StrictInt = Field(default=1024, ge=1)
    model_max_batch_size: StrictInt = Field(default=6, ge=1)
    #: ``sam3`` only: the concept prompts, or None for the dataset's class names (its label-matching
    #: ``dataset_targets``, or for a dataset matched per image, every label of its ground truth).
    model_classes: tuple[StrictStr, ...] | None = None
    #: ``sam3`` only: the server's ``min_confidence`` and ``mask_threshold``.
    model_min_confidence: Annotated[float, Strict(), Field(ge=0.0, le=1.0)] = 0.5
    model_mask_threshold: Annotated[float, Strict(), Field(ge=0.0, le=1.0)] = 0.5
    #: ``sam3`` only: class-agnostic NMS over all prompts' instances (one instance gets one class, as a
    #: closed-vocabulary detector answers); None keeps every instance of every class.
    model_nms_iou: Annotated[float, Strict(), Field(ge=0.0, le=1.0)] | None = 0.5

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
            if name == "sam3" and "model_prompt" in data:
                raise ValueError("sam3 takes its prompts from model_classes (or the dataset's class names)")
            if name == "sam3" and data.get("segmentation_name", "sam2_realtime") is not None:
                raise ValueError("sam3 segments its own detections: set segmentation_name to null")
            if name != "sam3" and any(
                k in data
                for k in ("model_classes", "model_min_confidence", "model_mask_threshold", "model_nms_iou")
            ):
                raise ValueError(
                    "model_classes, model_min_confidence and model_mask_threshold are for sam3 baselines"
                )
        return data
