"""Settings of stage B, detection and segmentation (MM-Grounding-DINO + SAM2; docs/protocol/pipeline.md §4.1).

>>> DetectionSettings().over_detect, DetectionSettings.model_validate({"over_detect": 1.0}).over_detect
(0.0, 1.0)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, Strict, StrictBool, StrictInt, StrictStr, model_validator

from .coercion import SettingsModel, refuse_io_keys


class SegmentationSettings(SettingsModel):
    """The SAM2 and vision-call keys that stage B's settings and the baselines' share, with the paper's
    module defaults (the same in both modules)."""

    segmentation_name: Literal["sam2_realtime"] | None = "sam2_realtime"
    segmentation_model_id: StrictInt = 0
    segmentation_model_id_secondary: StrictInt | None = None
    segmentation_flavor: StrictStr = "large"
    segmentation_track: StrictBool = True
    segmentation_use_bbox: StrictBool = True
    crop_masks: StrictBool = True
    #: The paper retries vision calls forever; the pipeline bounds this itself.
    retry: StrictBool = True
    png_compression_level: StrictInt = Field(default=2, ge=0, le=9)
    png_max_pixels: StrictInt | None = Field(default=1920 * 1080, gt=0)


class DetectionSettings(SegmentationSettings):
    """Settings of stage B. Defaults are the paper's Detection **module** defaults; the benchmark file
    ``detection_settings_mmgd_large.json`` differs by ``over_detect = 1.0``, and the FiftyOne detect node
    forces a few values (see :meth:`as_run_by_fiftyone_node`)."""

    over_detect: Annotated[float, Strict()] | None = 0.0
    nms_iou_threshold: Annotated[float, Strict()] | None = Field(default=None, ge=0, le=1)
    conf_threshold: Annotated[float, Strict()] = 0.0
    detector_name: Literal["mmgroundingdino"] = "mmgroundingdino"
    detector_model_id: StrictInt = 0
    detector_flavor: StrictStr = "large"

    @model_validator(mode="before")
    @classmethod
    def _io(cls, data: Any) -> Any:
        refuse_io_keys(data)
        return data

    def as_run_by_fiftyone_node(self) -> DetectionSettings:
        """The values ``fiftyone_detect`` forces over the file: no secondary SAM2, cropped masks, retry,
        and **no down-scaling** (``png_max_pixels = None``) — docs/protocol/pipeline.md §4.1."""
        return self.model_copy(
            update={
                "segmentation_model_id_secondary": None,
                "crop_masks": True,
                "retry": True,
                "png_max_pixels": None,
            }
        )
