"""How stage B grounds a VLM's described objects: the ``"grounding"`` entry of a model file's header.

The paper grounds each description with MM-Grounding-DINO and segments the boxes with SAM2
(``mmgd_sam2``, the default: nothing else changes, byte for byte). The other modes answer the question
the paper could not: is a detector still worth it against SAM 3's concept segmentation, or against the
VLM's own boxes?

* ``mmgd_sam2`` — the paper's stage B: each description string is a MM-Grounding-DINO prompt, its boxes
  are segmented by SAM2 (docs/protocol/pipeline.md §4).
* ``sam3`` — each described object's name (or, with ``sam3_prompt: "description"``, its description) is a
  SAM 3 concept prompt; SAM 3's boxes and masks are used as they are (no SAM2).
* ``vlm_boxes`` — the VLM returns a box per object (``box_2d`` = ``[y_min, x_min, y_max, x_max]`` normalised
  to 0–1000, as the authors' ``nimbro-api`` asks by default), used directly as the detection (no mask).
* ``vlm_boxes_sam2`` — those boxes, segmented by SAM2 as the paper segments MM-Grounding-DINO's boxes.

>>> GroundingSettings.model_validate("sam3").mode, GroundingSettings().mode
('sam3', 'mmgd_sam2')
>>> grounding_label("vlm_boxes_sam2")
'VLM boxes + SAM2'
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, Strict, StrictBool, StrictStr, model_validator

from .coercion import SettingsModel

__all__ = ["GROUNDING_LABELS", "GROUNDING_MODES", "GroundingMode", "GroundingSettings", "grounding_label"]

GroundingMode = Literal["mmgd_sam2", "sam3", "vlm_boxes", "vlm_boxes_sam2"]
GROUNDING_MODES: tuple[str, ...] = ("mmgd_sam2", "sam3", "vlm_boxes", "vlm_boxes_sam2")
#: How each mode is named in tables (appended to a model's display name for the non-default modes).
GROUNDING_LABELS: dict[str, str] = {
    "mmgd_sam2": "MM-GDINO + SAM2",
    "sam3": "SAM 3",
    "vlm_boxes": "VLM boxes",
    "vlm_boxes_sam2": "VLM boxes + SAM2",
}


def grounding_label(mode: str) -> str:
    """The table label of a grounding mode."""
    return GROUNDING_LABELS[mode]


Unit = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]


class GroundingSettings(SettingsModel):
    """Stage B's grounding mode of one VLM model file (``"grounding": "sam3"`` or an object)."""

    mode: GroundingMode = "mmgd_sam2"
    #: ``sam3``: what each described object sends as its concept prompt: its name (``object_name``
    #: without the `` 2`` that tells duplicates apart) or its description string.
    sam3_prompt: Literal["name", "description"] = "name"
    #: ``sam3``: the flavour the SAM 3 server loads.
    sam3_flavor: StrictStr = "sam3"
    #: ``sam3``: the server's ``min_confidence`` and ``mask_threshold``.
    sam3_min_confidence: Unit = 0.5
    sam3_mask_threshold: Unit = 0.5
    #: ``sam3``: a prompt that ``k`` described objects share keeps SAM 3's ``k`` best instances (one per
    #: object, as MM-Grounding-DINO keeps one box per prompt). True: every instance above
    #: ``sam3_min_confidence`` is kept, the extra ones flagged as over-detections.
    sam3_keep_all: StrictBool = False
    #: ``vlm_boxes``/``vlm_boxes_sam2``: the described objects' key that holds the box (a ``box_2d``
    #: item of the description settings' ``dict_items``).
    box_key: StrictStr = "box_2d"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"mode": data} if isinstance(data, str) else data

    @property
    def uses_sam2(self) -> bool:
        """Whether the ``masks`` stage asks SAM2 (the paper's mode and ``vlm_boxes_sam2``)."""
        return self.mode in ("mmgd_sam2", "vlm_boxes_sam2")

    @property
    def uses_vlm_boxes(self) -> bool:
        return self.mode in ("vlm_boxes", "vlm_boxes_sam2")
