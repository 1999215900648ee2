"""Settings of the optional stage C, validation (docs/protocol/pipeline.md §5), with the paper's Validation
module defaults.

>>> ValidationSettings().vlm.model_max_tokens, ValidationSettings().invalid
(50, 'n/a')
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, Strict, StrictBool, StrictInt, StrictStr, model_validator

from .coercion import NonNegNumber, SettingsModel
from .description import DEFAULT_SYSTEM_PROMPT, ImageDetail
from .request import CompletionParams, fill_blocks, request_block

DEFAULT_DESCRIPTION_PROMPT = "Provide a JSON description of all object instances in the image above."
DEFAULT_VALIDATION_PROMPT = (
    "Is this cropped image taken from the full image above a tight bounding box around any one of the "
    "objects mentioned in the description? If yes, your answer must only contain the one corresponding "
    "object_name. Otherwise, respond with '{invalid}'."
)

_DEFAULT_VLM_BLOCK = request_block(
    model_max_tokens=50,
    normalize_text_completion=True,
    timeout_chunk_first=15.0,
    timeout_chunk_next=10.0,
    timeout_completion=30.0,
)


class ValidationSettings(SettingsModel):
    """Settings of the optional validation stage (docs/protocol/pipeline.md §5). Defaults are the paper's
    Validation module defaults (the benchmark file differs only in its timeouts, 20/20/30 s)."""

    vlm: CompletionParams = Field(default_factory=lambda: CompletionParams(**_DEFAULT_VLM_BLOCK))
    image_resolution_full: ImageDetail = "high"
    image_resolution_crop: ImageDetail = "high"
    bbox_scale: Annotated[float, Strict()] = Field(default=1.0, gt=0)
    background_saturation: Annotated[float, Strict()] = Field(default=1.0, ge=0)
    background_brightness: Annotated[float, Strict()] = Field(default=1.0, ge=0)
    #: Exists in the paper but is unused (docs/protocol/pipeline.md §5.3).
    prepend_image: StrictBool = True
    system_prompt: StrictStr = DEFAULT_SYSTEM_PROMPT
    description_prompt: StrictStr = DEFAULT_DESCRIPTION_PROMPT
    validation_prompt: StrictStr = DEFAULT_VALIDATION_PROMPT
    #: Exists in the paper but is unused (docs/protocol/pipeline.md §5.3).
    image_res: ImageDetail = "high"
    invalid: StrictStr = "n/a"
    indent: StrictInt | None = 4
    levenshtein_threshold: NonNegNumber = 2
    #: The paper re-queues a failed validation completion without limit.
    retry: StrictBool = True
    timeout: Annotated[float, Strict()] | None = Field(default=None, gt=0)
    png_compression_level: StrictInt = Field(default=2, ge=0, le=9)
    png_max_pixels: StrictInt | None = Field(default=1920 * 1080, gt=0)
    crop_masks: StrictBool = True

    @model_validator(mode="before")
    @classmethod
    def _fill_vlm(cls, data: Any) -> Any:
        return fill_blocks(data, {"vlm": _DEFAULT_VLM_BLOCK})
