"""Baselines that replace stages A and B: Florence-2 (OD / dense region captions) and Kosmos-2 (§6).

One vision model returns labelled boxes; SAM2 then segments them as in stage B (``object_id = j``).
Florence-2 masks come from the SAM2 *track* response (``segmentation_track: true``), Kosmos-2 masks
from the *update* response (``segmentation_track: false``).

**Association bug (docs/protocol/pipeline.md gotcha 12).** The reference gives detection ``j`` the ``j``-th SAM2 track (list
position), not the track with ``track_id == j``. SAM2 drops tracks with empty masks, and then every
later detection receives its neighbour's mask, and the last ones none at all: there the reference
raises ``IndexError`` and the image fails. :func:`assemble_baseline_detections` reproduces the
position association by default, degrades gracefully where the reference crashes (the detections
past the last track get no mask, and ``segmentation_misaligned`` is set), and offers the correct
association by track id as the opt-in ``associate_by_track_id=True``.

>>> florence2_request("QUJD", task_prompt="<OD>")["prompts"]
[{'task_prompt': '<OD>', 'prompt_args': None}]
>>> kosmos2_request("QUJD")["prompts"]
['<grounding> Describe this image in detail:']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from vlm_gist_dagster.protocol.detection import ImageDetections
from vlm_gist_dagster.protocol.detections import BoxXYXY, Detections
from vlm_gist_dagster.protocol.responses import ResponseFormatError, artifact, entries, int_box, string_field
from vlm_gist_dagster.protocol.segmentation import (
    Sam2Track,
    decode_sam2_track,
    tracks_by_id,
)
from vlm_gist_dagster.protocol.settings import BaselineSettings, FlorencePrompt

__all__ = [
    "KOSMOS2_PROMPT",
    "BaselineModel",
    "BaselineOutput",
    "assemble_baseline_detections",
    "baseline_request",
    "florence2_request",
    "kosmos2_request",
    "parse_baseline_response",
]

BaselineModel = Literal["florence2", "kosmos2"]

#: The benchmark's Kosmos-2 prompt (``settings/baseline/baseline_settings_kosmos.json``).
KOSMOS2_PROMPT = "<grounding> Describe this image in detail:"


@dataclass(frozen=True, eq=False)
class BaselineOutput:
    """A parsed baseline response for one image: its labelled boxes (a class word, a region caption or
    an entity phrase; no confidence) and Kosmos-2's caption (None for Florence-2)."""

    model: str
    detections: Detections
    caption: str | None


def _inference_parameters(num_beams: int, max_new_tokens: int, max_batch_size: int) -> dict[str, int]:
    return {
        "num_beams": int(num_beams),
        "max_new_tokens": int(max_new_tokens),
        "max_batch_size": int(max_batch_size),
    }


def florence2_request(
    image_b64: str,
    *,
    task_prompt: str = "<OD>",
    prompt_args: Any = None,
    num_beams: int = 3,
    max_new_tokens: int = 1024,
    max_batch_size: int = 6,
) -> dict[str, Any]:
    """Body of the Florence-2 ``POST /infer`` (docs/protocol/pipeline.md §6): ``<OD>`` or ``<DENSE_REGION_CAPTION>``.

    >>> florence2_request("QUJD", task_prompt="<DENSE_REGION_CAPTION>")
    {'images': ['QUJD'], 'prompts': [{'task_prompt': '<DENSE_REGION_CAPTION>', 'prompt_args': None}], 'inference_parameters': {'num_beams': 3, 'max_new_tokens': 1024, 'max_batch_size': 6}}
    """
    return {
        "images": [image_b64],
        "prompts": [{"task_prompt": task_prompt, "prompt_args": prompt_args}],
        "inference_parameters": _inference_parameters(num_beams, max_new_tokens, max_batch_size),
    }


def kosmos2_request(
    image_b64: str,
    *,
    prompt: str = KOSMOS2_PROMPT,
    num_beams: int = 3,
    max_new_tokens: int = 1024,
    max_batch_size: int = 6,
) -> dict[str, Any]:
    """Body of the Kosmos-2 ``POST /infer`` (docs/protocol/pipeline.md §6). The server ignores ``num_beams``; it is sent anyway.

    >>> kosmos2_request("QUJD")["inference_parameters"]
    {'num_beams': 3, 'max_new_tokens': 1024, 'max_batch_size': 6}
    """
    return {
        "images": [image_b64],
        "prompts": [prompt],
        "inference_parameters": _inference_parameters(num_beams, max_new_tokens, max_batch_size),
    }


def baseline_request(image_b64: str, settings: BaselineSettings) -> dict[str, Any]:
    """The request body of the baseline described by ``settings`` (a paper baseline settings file)."""
    prompt = settings.model_prompt
    if settings.model_name == "florence2":
        if not isinstance(prompt, FlorencePrompt):
            raise ValueError("florence2 needs model_prompt {'task_prompt': ..., 'prompt_args': ...}")
        return florence2_request(
            image_b64,
            task_prompt=prompt.task_prompt,
            prompt_args=prompt.prompt_args,
            num_beams=settings.model_num_beams,
            max_new_tokens=settings.model_max_new_tokens,
            max_batch_size=settings.model_max_batch_size,
        )
    if not isinstance(prompt, str):
        raise ValueError("kosmos2 needs a text model_prompt")
    return kosmos2_request(
        image_b64,
        prompt=prompt,
        num_beams=settings.model_num_beams,
        max_new_tokens=settings.model_max_new_tokens,
        max_batch_size=settings.model_max_batch_size,
    )


def parse_baseline_response(
    response: Mapping[str, Any], *, model: BaselineModel | None = None, image: int = 0
) -> BaselineOutput:
    """Labels, int boxes and the caption of one image from a Florence-2 or Kosmos-2 response (§6).

    Shape: ``{"artifact": {"detections": [[{"box_xyxy": [int × 4], "label": str}, …]], "captions":
    [str | null], "model": "florence2" | "kosmos2"}}``. With ``model``, the artifact's model must match.
    Raises :class:`ResponseFormatError` naming the offending field.
    """
    found = artifact(response, "baseline")
    name = found.get("model")
    if not isinstance(name, str):
        raise ResponseFormatError("baseline response field 'artifact.model' must be a string")
    if model is not None and name != model:
        raise ResponseFormatError(f"baseline response field 'artifact.model' is {name!r}, expected {model!r}")
    labels: list[str] = []
    boxes: list[BoxXYXY] = []
    for where, entry in entries(response, "detections", image, "baseline"):
        boxes.append(int_box(entry, where, "baseline"))
        labels.append(string_field(entry, "label", where, "baseline"))
    captions = found.get("captions")
    caption: str | None = None
    if captions is not None:
        if not isinstance(captions, list) or len(captions) <= image:
            raise ResponseFormatError(
                f"baseline response field 'artifact.captions' must be a list with an entry for image {image}"
            )
        caption = captions[image]
        if caption is not None and not isinstance(caption, str):
            raise ResponseFormatError(
                f"baseline response field 'artifact.captions[{image}]' must be a string or null"
            )
    detections = Detections.from_boxes(labels, np.asarray(boxes, dtype=np.int64).reshape(-1, 4))
    return BaselineOutput(model=name, detections=detections, caption=caption)


def assemble_baseline_detections(
    detections: Detections,
    *,
    image_width: int,
    image_height: int,
    segmentation: Sequence[Sam2Track] | None,
    segmentation_use_bbox: bool = True,
    associate_by_track_id: bool = False,
) -> ImageDetections:
    """One image's baseline detections with their SAM2 masks (docs/protocol/pipeline.md §6).

    ``segmentation`` is the parsed SAM2 response whose masks the baseline uses (the track response for
    Florence-2, the update response for Kosmos-2), or None without segmentation. Detections carry no
    confidence (NaN) and no over-detection flag (``is_over_detection`` None).

    By default detection ``j`` takes ``segmentation[j]`` (the paper's position association, docs/protocol/pipeline.md gotcha 12);
    past the end of the list it gets no mask (the reference crashes there) and the result is marked
    ``segmentation_misaligned``, as it is whenever a position-paired track id differs from ``j``.
    ``associate_by_track_id=True`` pairs detection ``j`` with ``track_id == j`` instead.
    """
    n = len(detections)
    misaligned = False
    if segmentation is None:
        paired: list[Sam2Track | None] = [None] * n
    elif associate_by_track_id:
        by_id = tracks_by_id(segmentation)
        paired = [by_id.get(j) for j in range(n)]
    else:
        paired = [segmentation[j] if j < len(segmentation) else None for j in range(n)]
        misaligned = len(segmentation) < n or any(
            t is not None and t.track_id != j for j, t in enumerate(paired)
        )
    masks = [
        None if t is None else (t.track_id, t.box_xyxy, decode_sam2_track(t, image_width, image_height))
        for t in paired
    ]
    return ImageDetections(
        prompts=(),
        detections=detections.with_masks(masks),
        is_over_detection=None,
        missing_prompts=(),
        over_detections=(),
        segmentation_use_bbox=segmentation_use_bbox,
        segmentation_misaligned=misaligned,
    )
