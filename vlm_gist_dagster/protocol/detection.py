"""Stage B — detection, client side: MM-Grounding-DINO requests and responses, and the per-image
association of detections with SAM2 tracks, direct / over-detection flags and missing prompts (docs/protocol/pipeline.md
§4.2–4.5). The detector server's own rule (de-duplication, chunking, confidence filter, NMS, selection and
padding) is :mod:`vlm_gist_dagster.protocol.gdino_selection`, which both servers apply:
:mod:`vlm_gist_dagster.sim.gdino` (the simulator) and :mod:`vlm_gist_dagster.vision_server`
(``vlm-gist vision-serve``).

>>> gdino_request("QUJD", ["a cat"])["inference_parameters"][0]["prompts"]
['a cat']
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlm_gist_dagster.protocol.detections import BoxXYXY, Detections, relative_xywh
from vlm_gist_dagster.protocol.responses import ResponseFormatError, entries, int_box, string_field
from vlm_gist_dagster.protocol.segmentation import (
    Sam2Track,
    decode_sam2_track,
    tracks_by_id,
)
from vlm_gist_dagster.protocol.settings import DetectionSettings

__all__ = [
    "ResponseFormatError",
    "gdino_request",
    "parse_gdino_response",
    "over_detection_flags",
    "missing_and_over_detections",
    "ImageDetections",
    "assemble_detections",
    "assemble_detections_with_settings",
    "gdino_request_with_settings",
    "instance_for_description",
    "relative_xywh",
]


# =====================================================================================================
# Client side: the request, the response, and what the detection stage makes of them (docs/protocol/pipeline.md §4.2–4.5)
# =====================================================================================================


def gdino_request(
    image_b64: str,
    prompts: Sequence[str],
    *,
    min_confidence: float = 0.0,
    nms_iou: float | None = None,
    overdetect_factor: float | None = 1.0,
) -> dict[str, Any]:
    """Body of the MM-Grounding-DINO ``POST /infer`` for one image (docs/protocol/pipeline.md §4.2).

    ``prompts`` are the description strings in description order, duplicates included (the server
    counts them). Numbers are sent as JSON floats because the server rejects ints for these fields.
    An image with zero prompts is never sent (docs/protocol/pipeline.md §4.2), so an empty list is an error here.

    >>> gdino_request("QUJD", ["a cat", "a cat"], overdetect_factor=1)
    {'images': ['QUJD'], 'inference_parameters': [{'prompts': ['a cat', 'a cat'], 'min_confidence': 0.0, 'nms_iou': None, 'overdetect_factor': 1.0}]}
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts: an image without descriptions is not sent to the detector")
    for k, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompt {k} must be a non-empty string, got {prompt!r}")
    return {
        "images": [image_b64],
        "inference_parameters": [
            {
                "prompts": prompts,
                "min_confidence": float(min_confidence),
                "nms_iou": None if nms_iou is None else float(nms_iou),
                "overdetect_factor": None if overdetect_factor is None else float(overdetect_factor),
            }
        ],
    }


def parse_gdino_response(
    response: Mapping[str, Any], *, prompts: Sequence[str] | None = None, image: int = 0
) -> Detections:
    """The detections of one image from an MM-Grounding-DINO ``/infer`` response (docs/protocol/pipeline.md §4.2 step 6):
    labels are the prompts, boxes the server's int ``box_xyxy``, in the server's order.

    With ``prompts`` (the request's), a detection whose prompt was not requested is an error.
    Raises :class:`ResponseFormatError` naming the offending field.
    """
    allowed = None if prompts is None else set(prompts)
    labels: list[str] = []
    boxes: list[BoxXYXY] = []
    confidences: list[float] = []
    for where, entry in entries(response, "detections", image, "GDINO"):
        box = int_box(entry, where, "GDINO")
        confidence = entry.get("confidence")
        if not isinstance(confidence, (int, float)) or isinstance(confidence, bool):
            raise ResponseFormatError(
                f"GDINO response field '{where}.confidence' must be a number, got {confidence!r}"
            )
        prompt = string_field(entry, "prompt", where, "GDINO")
        if allowed is not None and prompt not in allowed:
            raise ResponseFormatError(
                f"GDINO response field '{where}.prompt' is {prompt!r}, which was not requested"
            )
        labels.append(prompt)
        boxes.append(box)
        confidences.append(float(confidence))
    return Detections.from_boxes(labels, np.asarray(boxes, dtype=np.int64).reshape(-1, 4), confidences)


def over_detection_flags(
    prompts: Sequence[str],
    labels: Sequence[str],
    confidences: Sequence[float],
    *,
    over_detect: float | None,
    conf_threshold: float = 0.0,
) -> list[bool]:
    """``is_over_detection`` per detection (docs/protocol/pipeline.md §4.4 step 4).

    Only when ``over_detect > 0``: for each prompt occurrence in order, the not yet assigned detection
    with that label, the highest confidence (the first on ties) and confidence ``> conf_threshold`` is
    *direct*. Everything else is an over-detection; with ``over_detect`` 0 or None, everything is.

    >>> over_detection_flags(["a", "b", "a"], ["a", "a", "b", "a"], [0.5, 0.9, 0.4, 0.2], over_detect=1.0)
    [False, False, False, True]
    >>> over_detection_flags(["a"], ["a"], [0.9], over_detect=0.0)
    [True]
    """
    if len(labels) != len(confidences):
        raise ValueError(f"{len(labels)} labels but {len(confidences)} confidences")
    flags = [True] * len(labels)
    if over_detect is None or not float(over_detect) > 0.0:
        return flags
    assigned: set[int] = set()
    for prompt in prompts:
        best_j: int | None = None
        best_confidence = -1.0
        for j, (label, confidence) in enumerate(zip(labels, confidences)):
            if (
                label == prompt
                and j not in assigned
                and confidence > best_confidence
                and confidence > conf_threshold
            ):
                best_j, best_confidence = j, confidence
        if best_j is not None:
            assigned.add(best_j)
    for j in assigned:
        flags[j] = False
    return flags


def missing_and_over_detections(prompts: Sequence[str], labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """Multiset differences (docs/protocol/pipeline.md §4.4 step 4): ``(prompts − labels, labels − prompts)``, in order.

    >>> missing_and_over_detections(["a", "b", "a", "c"], ["a", "a", "a", "b"])
    (['c'], ['a'])
    """
    over = list(labels)
    missing: list[str] = []
    for prompt in prompts:
        if prompt in over:
            over.remove(prompt)
        else:
            missing.append(prompt)
    return missing, over


@dataclass(frozen=True, eq=False)
class ImageDetections:
    """Stage-B result for one image (docs/protocol/pipeline.md §4.4): its prompts, its detections (with SAM2's masks where
    they got one), the direct / over-detection flag per detection, the missing prompts and the
    over-detections (multiset differences). ``is_over_detection`` is None for baselines, which have no
    prompts and no confidence (§6)."""

    prompts: tuple[str, ...]
    detections: Detections
    is_over_detection: np.ndarray | None
    missing_prompts: tuple[str, ...]
    over_detections: tuple[str, ...]
    #: The settings' ``segmentation_use_bbox``: the mask box replaces the detector box where there is one.
    segmentation_use_bbox: bool = True
    #: Set by the baseline assembly when the paper's position association paired a detection with
    #: another detection's track or ran out of tracks (the reference raises IndexError there).
    segmentation_misaligned: bool = False

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) the evaluated box per detection (``Detections.preferred_xyxy``)."""
        return self.detections.preferred_xyxy(self.segmentation_use_bbox)

    def relative_xywh(self, width: int, height: int) -> np.ndarray:
        """(N, 4) the evaluated boxes as FiftyOne's relative ``[x, y, w, h]`` (docs/protocol/pipeline.md §4.5)."""
        return self.detections.relative_xywh(width, height, use_mask_box=self.segmentation_use_bbox)


def _mask_sources(
    update_tracks: Sequence[Sam2Track] | None,
    track_tracks: Sequence[Sam2Track] | None,
    reproduce_track_fallback_bug: bool,
) -> list[dict[int, Sam2Track]]:
    # docs/protocol/pipeline.md §4.4 step 2 / gotcha 13: the reference looks up the *track* response, and its fallback meant
    # for the update response reads the track response again. So only track masks are ever used, and
    # with segmentation_track=false (no track call) no detection gets a mask.
    sources: list[dict[int, Sam2Track]] = []
    if track_tracks is not None:
        sources.append(tracks_by_id(track_tracks))
    if not reproduce_track_fallback_bug and update_tracks is not None:
        sources.append(tracks_by_id(update_tracks))
    return sources


def assemble_detections(
    prompts: Sequence[str],
    detections: Detections,
    *,
    image_width: int,
    image_height: int,
    update_tracks: Sequence[Sam2Track] | None = None,
    track_tracks: Sequence[Sam2Track] | None = None,
    over_detect: float | None = 1.0,
    conf_threshold: float = 0.0,
    segmentation_use_bbox: bool = True,
    reproduce_track_fallback_bug: bool = True,
) -> ImageDetections:
    """Put one image's stage-B pieces together (docs/protocol/pipeline.md §4.4).

    * ``detections``: the parsed GDINO response (:func:`parse_gdino_response`), in server order;
      detection ``j`` prompted SAM2 with ``object_id = j``.
    * ``update_tracks`` / ``track_tracks``: the parsed SAM2 ``/update`` and ``/infer`` (track)
      responses; ``track_tracks`` is None when ``segmentation_track`` is off, both are None without
      segmentation. Masks are associated **by track id** (``track_id == j``), never by position,
      because SAM2 drops empty masks (docs/protocol/pipeline.md gotcha 12).
    * ``reproduce_track_fallback_bug`` (default True, the paper's behaviour, docs/protocol/pipeline.md gotcha 13): masks come
      from the track response only, so ``segmentation_track=false`` yields no masks. False: a
      detection missing from the track response falls back to its update-response track, which is
      what the reference intended (and gives masks with ``segmentation_track=false``). The shipped
      benchmark setting tracks, so the two differ only when the tracker drops an object that the
      update step segmented.
    """
    labels = detections.label.tolist()
    flags = over_detection_flags(
        prompts,
        labels,
        detections.confidence.tolist(),
        over_detect=over_detect,
        conf_threshold=conf_threshold,
    )
    sources = (
        _mask_sources(update_tracks, track_tracks, reproduce_track_fallback_bug) if len(detections) else []
    )
    masks = []
    for j in range(len(detections)):
        track = next((source[j] for source in sources if j in source), None)
        masks.append(
            None
            if track is None
            else (track.track_id, track.box_xyxy, decode_sam2_track(track, image_width, image_height))
        )
    missing, over = missing_and_over_detections(prompts, labels) if prompts else ([], [])
    return ImageDetections(
        prompts=tuple(prompts),
        detections=detections.with_masks(masks),
        is_over_detection=np.asarray(flags, dtype=bool),
        missing_prompts=tuple(missing),
        over_detections=tuple(over),
        segmentation_use_bbox=segmentation_use_bbox,
    )


def instance_for_description(
    structured_description: Sequence[Mapping[str, Any]],
    description: str,
    *,
    key: str = "description",
    rng: random.Random | None = None,
) -> Mapping[str, Any]:
    """The structured-description element a detection label (a description string) belongs to.

    Default: the **first** element with that ``description``, ``fiftyone_detect``'s rule (docs/protocol/pipeline.md §4.4
    step 5), which produced the benchmark. With ``rng``: ``vlm_gist.py``'s rule (docs/protocol/pipeline.md §7), a
    ``rng.randrange`` pick among the elements sharing the description, drawn only when there are
    several. Raises LookupError when no element has that description.

    >>> sd = [{"object_name": "cup 1", "description": "a cup"}, {"object_name": "cup 2", "description": "a cup"}]
    >>> instance_for_description(sd, "a cup")["object_name"]
    'cup 1'
    """
    candidates = [instance for instance in structured_description if instance.get(key) == description]
    if not candidates:
        raise LookupError(f"no structured-description element has {key} {description!r}")
    if rng is not None and len(candidates) > 1:
        return candidates[rng.randrange(len(candidates))]
    return candidates[0]


def gdino_request_with_settings(
    image_b64: str, prompts: Sequence[str], settings: DetectionSettings
) -> dict[str, Any]:
    """:func:`gdino_request` with the detection settings' ``conf_threshold``, ``nms_iou_threshold`` and
    ``over_detect`` (sent as ``min_confidence``, ``nms_iou`` and ``overdetect_factor``; docs/protocol/pipeline.md §4.1)."""
    return gdino_request(
        image_b64,
        prompts,
        min_confidence=settings.conf_threshold,
        nms_iou=settings.nms_iou_threshold,
        overdetect_factor=settings.over_detect,
    )


def assemble_detections_with_settings(
    prompts: Sequence[str],
    detections: Detections,
    settings: DetectionSettings,
    *,
    image_width: int,
    image_height: int,
    update_tracks: Sequence[Sam2Track] | None = None,
    track_tracks: Sequence[Sam2Track] | None = None,
    reproduce_track_fallback_bug: bool = True,
) -> ImageDetections:
    """:func:`assemble_detections` with ``over_detect``, ``conf_threshold`` and ``segmentation_use_bbox``
    from the settings. ``track_tracks`` must be None when ``segmentation_track`` is off."""
    if track_tracks is not None and not settings.segmentation_track:
        raise ValueError("track_tracks given although segmentation_track is off")
    return assemble_detections(
        prompts,
        detections,
        image_width=image_width,
        image_height=image_height,
        update_tracks=update_tracks,
        track_tracks=track_tracks,
        over_detect=settings.over_detect,
        conf_threshold=settings.conf_threshold,
        segmentation_use_bbox=settings.segmentation_use_bbox,
        reproduce_track_fallback_bug=reproduce_track_fallback_bug,
    )
