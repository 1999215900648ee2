"""A settings file's kind, told from the keys it holds (not from its file name).

>>> detect_kind({"over_detect": 1.0}), detect_kind({"vlm": {}, "validation_prompt": "x"})
('detection', 'validation')
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from .baseline import BaselineSettings
from .description import DescriptionSettings
from .detection import DetectionSettings
from .errors import SettingsError
from .label_matching import LabelMatchingSettings
from .validation import ValidationSettings

SettingsKind = Literal["description", "detection", "label_matching", "validation", "baseline"]

#: Keys that only one kind of settings file has; a file's kind is the one whose markers it holds.
_KIND_MARKERS: dict[str, frozenset[str]] = {
    "description": frozenset(
        {
            "vlm_structured_description",
            "vlm_scene_description",
            "vlm_decoupled_attribution",
            "dict_prompt",
            "dict_items",
            "scene_prompt",
            "dict_value_normalization",
            "use_json_mode",
            "system_prompt_structured_description",
            "dict_direct_task_relevancy_item",
        }
    ),
    "detection": frozenset(
        {
            "over_detect",
            "nms_iou_threshold",
            "conf_threshold",
            "detector_name",
            "detector_model_id",
            "detector_flavor",
        }
    ),
    "label_matching": frozenset(
        {
            "llm",
            "dataset_targets",
            "augmented_targets",
            "use_per_set_targets",
            "mapping_rules",
            "definition_prompt_item",
            "definition_prompt_label",
            "define_labels",
            "define_targets",
            "allow_duplicate_labels",
        }
    ),
    "validation": frozenset(
        {
            "vlm",
            "validation_prompt",
            "description_prompt",
            "bbox_scale",
            "background_saturation",
            "background_brightness",
            "image_resolution_crop",
            "image_resolution_full",
        }
    ),
    "baseline": frozenset(
        {
            "model_prompt",
            "model_num_beams",
            "model_max_new_tokens",
            "model_max_batch_size",
            "model_flavor",
            "model_name",
            "model_id",
        }
    ),
}
KIND_MODELS: dict[str, type[BaseModel]] = {
    "description": DescriptionSettings,
    "detection": DetectionSettings,
    "label_matching": LabelMatchingSettings,
    "validation": ValidationSettings,
    "baseline": BaselineSettings,
}


def detect_kind(data: Mapping[str, Any], file: str | Path | None = None) -> SettingsKind:
    """The kind of a settings dict, from the keys it holds (not from the file name)."""
    scores = {kind: len(markers & set(data)) for kind, markers in _KIND_MARKERS.items()}
    best = max(scores.values())
    winners = [kind for kind, score in scores.items() if score == best]
    if best == 0:
        raise SettingsError(
            file,
            None,
            f"cannot tell the kind of settings: none of its keys {sorted(data)[:8]} identifies one of "
            f"{list(_KIND_MARKERS)}",
        )
    if len(winners) > 1:
        raise SettingsError(file, None, f"ambiguous settings: its keys fit {winners} equally well")
    return winners[0]  # type: ignore[return-value]
