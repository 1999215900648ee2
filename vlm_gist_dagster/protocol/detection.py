"""Stage B — detection, client side: MM-Grounding-DINO requests and responses, and the per-image
association of detections with SAM2 tracks, direct / over-detection flags and missing prompts (spec
§4.2–4.5). The detector server's own rule (de-duplication, chunking, confidence filter, NMS, selection and
padding) lives next to the simulator that uses it, in :mod:`vlm_gist_dagster.sim.gdino`.

>>> gdino_request("QUJD", ["a cat"])["inference_parameters"][0]["prompts"]
['a cat']
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vlm_gist_dagster.protocol.masks import RLE
from vlm_gist_dagster.protocol.segmentation import (
    BoxXYXY,
    ResponseFormatError,
    Sam2Track,
    decode_sam2_track,
    tracks_by_id,
)
from vlm_gist_dagster.protocol.settings import DetectionSettings

__all__ = [
    "DetectionRecord",
    "GdinoDetection",
    "ImageDetections",
    "ResponseFormatError",
    "assemble_detections",
    "assemble_detections_with_settings",
    "gdino_request",
    "gdino_request_with_settings",
    "instance_for_description",
    "missing_and_over_detections",
    "over_detection_flags",
    "parse_gdino_response",
    "relative_xywh",
]



@dataclass(frozen=True)
class GdinoDetection:
    """One detection as the client receives it: the prompt (a description string), int box, score."""

    prompt: str
    box_xyxy: BoxXYXY
    confidence: float


def gdino_request(
    image_b64: str,
    prompts: Sequence[str],
    *,
    min_confidence: float = 0.0,
    nms_iou: float | None = None,
    overdetect_factor: float | None = 1.0,
) -> dict[str, Any]:
    """Body of the MM-Grounding-DINO ``POST /infer`` for one image (spec §4.2).

    ``prompts`` are the description strings in description order, duplicates included (the server
    counts them). Numbers are sent as JSON floats because the server rejects ints for these fields.
    An image with zero prompts is never sent (spec §4.2), so an empty list is an error here.

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
) -> list[GdinoDetection]:
    """The detections of one image from an MM-Grounding-DINO ``/infer`` response (spec §4.2 step 6).

    With ``prompts`` (the request's), a detection whose prompt was not requested is an error.
    Raises :class:`ResponseFormatError` naming the offending field.
    """
    if not isinstance(response, Mapping):
        raise ResponseFormatError(f"GDINO response must be a JSON object, got {type(response).__name__}")
    artifact = response.get("artifact")
    if not isinstance(artifact, Mapping):
        raise ResponseFormatError("GDINO response lacks the object 'artifact'")
    per_image = artifact.get("detections")
    if not isinstance(per_image, list) or len(per_image) <= image:
        raise ResponseFormatError(
            f"GDINO response field 'artifact.detections' must be a list with an entry for image {image}"
        )
    entries = per_image[image]
    if not isinstance(entries, list):
        raise ResponseFormatError(f"GDINO response field 'artifact.detections[{image}]' must be a list")
    allowed = None if prompts is None else set(prompts)
    parsed: list[GdinoDetection] = []
    for k, entry in enumerate(entries):
        where = f"artifact.detections[{image}][{k}]"
        if not isinstance(entry, Mapping):
            raise ResponseFormatError(f"GDINO response field '{where}' must be an object")
        box = entry.get("box_xyxy")
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)
        ):
            raise ResponseFormatError(
                f"GDINO response field '{where}.box_xyxy' must be a list of 4 ints, got {box!r}"
            )
        confidence = entry.get("confidence")
        if not isinstance(confidence, (int, float)) or isinstance(confidence, bool):
            raise ResponseFormatError(
                f"GDINO response field '{where}.confidence' must be a number, got {confidence!r}"
            )
        prompt = entry.get("prompt")
        if not isinstance(prompt, str):
            raise ResponseFormatError(
                f"GDINO response field '{where}.prompt' must be a string, got {prompt!r}"
            )
        if allowed is not None and prompt not in allowed:
            raise ResponseFormatError(
                f"GDINO response field '{where}.prompt' is {prompt!r}, which was not requested"
            )
        parsed.append(
            GdinoDetection(
                prompt=prompt, box_xyxy=(box[0], box[1], box[2], box[3]), confidence=float(confidence)
            )
        )
    return parsed


def over_detection_flags(
    prompts: Sequence[str],
    labels: Sequence[str],
    confidences: Sequence[float],
    *,
    over_detect: float | None,
    conf_threshold: float = 0.0,
) -> list[bool]:
    """``is_over_detection`` per detection (spec §4.4 step 4).

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
    """Multiset differences (spec §4.4 step 4): ``(prompts − labels, labels − prompts)``, in order.

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


def relative_xywh(box_xyxy: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """FiftyOne's relative box ``[x1/W, y1/H, (x2 − x1)/W, (y2 − y1)/H]`` (spec §4.5).

    >>> relative_xywh((10, 20, 30, 60), 100, 200)
    (0.1, 0.1, 0.2, 0.2)
    """
    x1, y1, x2, y2 = box_xyxy
    return (x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height)


@dataclass(frozen=True)
class DetectionRecord:
    """One detection of an image after stage B (or a baseline), with its SAM2 mask if it got one.

    ``label`` is the detector prompt (a description string; for baselines the model's label).
    ``box`` is the preferred box (``segmentation_use_bbox``: the mask box when a mask exists, else the
    detector box). ``confidence`` is None for baselines, and so is ``is_over_detection``.
    """

    index: int
    label: str
    box_detection: BoxXYXY
    confidence: float | None
    box_mask: BoxXYXY | None
    mask_rle: RLE | None
    mask_png_b64: str | None
    track_id: int | None
    box: BoxXYXY
    is_over_detection: bool | None

    def relative_xywh(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The preferred box as FiftyOne's relative ``[x, y, w, h]``."""
        return relative_xywh(self.box, width, height)


@dataclass(frozen=True)
class ImageDetections:
    """Stage-B result for one image: prompts, detections, missing prompts and over-detections."""

    prompts: tuple[str, ...]
    detections: tuple[DetectionRecord, ...]
    missing_prompts: tuple[str, ...]
    over_detections: tuple[str, ...]
    #: Set by the baseline assembly when the paper's position association paired a detection with
    #: another detection's track or ran out of tracks (the reference raises IndexError there).
    segmentation_misaligned: bool = False
    #: ``"detection"`` (stage B) or ``"baseline"`` (§6): decides the ``detections.json`` layout.
    kind: Literal["detection", "baseline"] = "detection"

    @property
    def has_masks(self) -> bool:
        """Whether any detection got a mask (the reference writes null mask lists otherwise)."""
        return any(d.mask_rle is not None for d in self.detections)

    def to_detections_json(self) -> dict[str, Any]:
        """The result fields of the paper's per-image ``detections.json`` record (spec §4.5; no stamps).

        Masks are the server's cropped PNGs (``masks_cropped: true``); mask boxes, masks and track ids
        are null for the whole image when no detection got a mask. With zero prompts only
        ``prompts`` and ``num_prompts`` are written, as in the reference.
        """
        dets = self.detections
        masked = self.has_masks
        if self.kind == "baseline":
            # The baselines write a subset: no prompts, confidences or over-detection flags (§4.5, §6).
            return {
                "num_detections": len(dets),
                "labels": [d.label for d in dets],
                "bboxes_detection": [list(d.box_detection) for d in dets],
                "bboxes_mask": [None if d.box_mask is None else list(d.box_mask) for d in dets]
                if masked
                else None,
                "masks_cropped": True,
                "masks": [d.mask_png_b64 for d in dets] if masked else None,
                "bboxes": [list(d.box) for d in dets],
                "track_ids": [d.track_id for d in dets] if masked else None,
            }
        record: dict[str, Any] = {"prompts": list(self.prompts), "num_prompts": len(self.prompts)}
        if not self.prompts:
            return record
        record["num_detections"] = len(dets)
        record["num_missing_prompts"] = len(self.missing_prompts)
        if self.missing_prompts:
            record["missing_prompts"] = list(self.missing_prompts)
        record["num_over_detections"] = len(self.over_detections)
        if self.over_detections:
            record["over_detections"] = list(self.over_detections)
        record["labels"] = [d.label for d in dets]
        record["bboxes_detection"] = [list(d.box_detection) for d in dets]
        record["confidences"] = [d.confidence for d in dets]
        record["bboxes_mask"] = (
            [None if d.box_mask is None else list(d.box_mask) for d in dets] if masked else None
        )
        record["masks_cropped"] = True
        record["masks"] = [d.mask_png_b64 for d in dets] if masked else None
        record["bboxes"] = [list(d.box) for d in dets]
        record["track_ids"] = [d.track_id for d in dets] if masked else None
        record["is_over_detection"] = [bool(d.is_over_detection) for d in dets]
        return record


def _mask_sources(
    update_tracks: Sequence[Sam2Track] | None,
    track_tracks: Sequence[Sam2Track] | None,
    reproduce_track_fallback_bug: bool,
) -> list[dict[int, Sam2Track]]:
    # spec §4.4 step 2 / gotcha 13: the reference looks up the *track* response, and its fallback meant
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
    detections: Sequence[GdinoDetection],
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
    """Put one image's stage-B pieces together (spec §4.4).

    * ``detections``: the parsed GDINO response, in server order; detection ``j`` prompted SAM2 with
      ``object_id = j``.
    * ``update_tracks`` / ``track_tracks``: the parsed SAM2 ``/update`` and ``/infer`` (track)
      responses; ``track_tracks`` is None when ``segmentation_track`` is off, both are None without
      segmentation. Masks are associated **by track id** (``track_id == j``), never by position,
      because SAM2 drops empty masks (gotcha 12).
    * ``reproduce_track_fallback_bug`` (default True, the paper's behaviour, gotcha 13): masks come
      from the track response only, so ``segmentation_track=false`` yields no masks. False: a
      detection missing from the track response falls back to its update-response track, which is
      what the reference intended (and gives masks with ``segmentation_track=false``). The shipped
      benchmark setting tracks, so the two differ only when the tracker drops an object that the
      update step segmented.
    """
    labels = [d.prompt for d in detections]
    confidences = [d.confidence for d in detections]
    flags = over_detection_flags(
        prompts, labels, confidences, over_detect=over_detect, conf_threshold=conf_threshold
    )
    sources = _mask_sources(update_tracks, track_tracks, reproduce_track_fallback_bug) if detections else []

    records: list[DetectionRecord] = []
    for j, det in enumerate(detections):
        track = next((source[j] for source in sources if j in source), None)
        if track is None:
            box_mask = rle = png = track_id = None
        else:
            decoded = decode_sam2_track(track, image_width, image_height)
            box_mask, rle, png, track_id = (
                decoded.box_xyxy,
                decoded.rle,
                decoded.mask_png_b64,
                decoded.track_id,
            )
        preferred = box_mask if (segmentation_use_bbox and box_mask is not None) else det.box_xyxy
        records.append(
            DetectionRecord(
                index=j,
                label=det.prompt,
                box_detection=det.box_xyxy,
                confidence=det.confidence,
                box_mask=box_mask,
                mask_rle=rle,
                mask_png_b64=png,
                track_id=track_id,
                box=preferred,
                is_over_detection=flags[j],
            )
        )
    missing, over = missing_and_over_detections(prompts, labels) if prompts else ([], [])
    return ImageDetections(
        prompts=tuple(prompts),
        detections=tuple(records),
        missing_prompts=tuple(missing),
        over_detections=tuple(over),
    )


def instance_for_description(
    structured_description: Sequence[Mapping[str, Any]],
    description: str,
    *,
    key: str = "description",
    rng: random.Random | None = None,
) -> Mapping[str, Any]:
    """The structured-description element a detection label (a description string) belongs to.

    Default: the **first** element with that ``description``, ``fiftyone_detect``'s rule (spec §4.4
    step 5), which produced the benchmark. With ``rng``: ``vlm_gist.py``'s rule (spec §7), a
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
    ``over_detect`` (sent as ``min_confidence``, ``nms_iou`` and ``overdetect_factor``; spec §4.1)."""
    return gdino_request(
        image_b64,
        prompts,
        min_confidence=settings.conf_threshold,
        nms_iou=settings.nms_iou_threshold,
        overdetect_factor=settings.over_detect,
    )


def assemble_detections_with_settings(
    prompts: Sequence[str],
    detections: Sequence[GdinoDetection],
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
