"""Stage B — detection: MM-Grounding-DINO requests, the server's selection rule, and its response.

The detector prompts are the *description* strings of stage A (spec/pipeline.md §4.2, gotcha 1). This
module holds both sides of the ``/infer`` exchange as pure functions:

* the server-side rule (``select_detections``, spec §4.2 steps 1 and 3–5) that the simulator and users of
  other detectors need, plus the prompt chunking of step 2 and the response artifact of step 6;
* the client side (request body, response parsing) and the per-image association of detections with
  SAM2 tracks, direct / over-detection flags and missing prompts (spec §4.3–4.5).

>>> raw = [DetectorBox("a cat", (0.0, 0.0, 10.5, 10.9), 0.9), DetectorBox("a cat", (5.0, 5.0, 20.0, 20.0), 0.8),
...        DetectorBox("a dog", (50.0, 50.0, 60.0, 60.0), 0.1)]
>>> [(d.prompt, d.confidence) for d in select_detections(raw, ["a cat"])]
[('a cat', 0.9)]
>>> gdino_response(select_detections(raw, ["a cat"]))["artifact"]["detections"][0][0]["box_xyxy"]
[0, 0, 10, 10]
"""

from __future__ import annotations

import math
import random
from collections import Counter
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
    # server side (§4.2)
    "DetectorBox",
    "unique_prompts",
    "chunk_width",
    "chunk_prompts",
    "prompt_text",
    "nms",
    "select_detections",
    "gdino_response",
    # client side (§4.2–4.5)
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

#: The server's per-call character budget for one chunk of prompts (``max_count_per_prompt``).
MAX_PROMPT_CHARS = 1000


@dataclass(frozen=True)
class DetectorBox:
    """One raw detector output (MM-Grounding-DINO): pixel ``xyxy`` floats, the prompt it grounds, a score.

    >>> DetectorBox("a red chair", (1.0, 2.0, 3.5, 4.0), 0.5).box_xyxy
    (1.0, 2.0, 3.5, 4.0)
    """

    prompt: str
    box_xyxy: tuple[float, float, float, float]
    confidence: float

    def __post_init__(self) -> None:
        if len(self.box_xyxy) != 4:
            raise ValueError(f"box_xyxy must have 4 values, got {self.box_xyxy!r}")
        object.__setattr__(self, "box_xyxy", tuple(float(v) for v in self.box_xyxy))
        object.__setattr__(self, "confidence", float(self.confidence))


def unique_prompts(prompts: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """De-duplicate prompts keeping first-occurrence order, and count each one (spec §4.2 step 1).

    >>> unique_prompts(["a cat", "a dog", "a cat"])
    (['a cat', 'a dog'], {'a cat': 2, 'a dog': 1})
    """
    counts = Counter(prompts)
    return list(dict.fromkeys(prompts)), dict(counts)


def chunk_width(lengths: Sequence[int], max_chars: int = MAX_PROMPT_CHARS) -> int:
    """The number of prompts per chunk the server chooses for prompts of these character lengths.

    A width ``w`` is feasible when every run of ``w`` consecutive prompts (the last run may be shorter)
    sums to ≤ ``max_chars`` characters (separators not counted). Among feasible widths the smallest
    ``n mod w`` wins, ties going to the larger ``w``; ``w = 1`` is only used when nothing else is
    feasible, and also when nothing at all is (a single prompt longer than ``max_chars``): spec §4.2
    step 2.

    >>> chunk_width([400, 400, 400, 400, 400])   # w=2: 800 ≤ 1000, w≥3: 1200 > 1000; 5 mod 2 = 1
    2
    >>> chunk_width([10] * 6)                     # every w feasible; 6 mod 6 = 0 and 6 is the largest
    6
    """
    n = len(lengths)
    prefix = np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]) if n else np.zeros(1)

    def feasible(w: int) -> bool:
        starts = np.arange(0, n, w)
        ends = np.minimum(starts + w, n)
        return bool(np.all(prefix[ends] - prefix[starts] <= max_chars))

    candidates = sorted((n % w, -w) for w in range(1, n + 1) if feasible(w))
    for _leftover, negative_w in candidates:
        if -negative_w != 1:
            return -negative_w
    return 1


def chunk_prompts(prompts: Sequence[str], max_chars: int = MAX_PROMPT_CHARS) -> list[list[str]]:
    """Split the *unique* prompts into the chunks the server sends to the model one call each.

    Duplicates are removed first (spec §4.2 step 1), then consecutive runs of :func:`chunk_width`
    prompts form the chunks (step 2). Character counts are Python ``len`` (code points).

    >>> chunks = chunk_prompts(["a" * 400, "b" * 400, "c" * 400, "a" * 400])  # 3 unique; w=3 needs 1200
    >>> [[p[0] for p in chunk] for chunk in chunks]                          # w=2 (3 mod 2 = 1) beats w=1
    [['a', 'b'], ['c']]
    """
    unique, _counts = unique_prompts(prompts)
    width = chunk_width([len(p) for p in unique], max_chars)
    return [unique[start : start + width] for start in range(0, len(unique), width)]


def prompt_text(chunk: Sequence[str]) -> str:
    """The text the server gives the grounding model for one chunk: ``"p1. p2. … pk."``.

    >>> prompt_text(["a red chair", "a cat"])
    'a red chair. a cat.'
    """
    return ". ".join(chunk) + "."


def _box_array(boxes: Sequence[DetectorBox]) -> np.ndarray:
    if not boxes:
        return np.zeros((0, 4), dtype=np.float64)
    return np.asarray([d.box_xyxy for d in boxes], dtype=np.float64)


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-agnostic non-maximum suppression with ``torchvision.ops.nms`` semantics, in numpy.

    Boxes are visited in descending score; a box is dropped when its IoU with an already kept box is
    strictly greater than ``iou_threshold``. Areas are ``(x2 − x1)·(y2 − y1)`` (no +1). Returns the kept
    indices in descending score (ties: the earlier index first).

    >>> b = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], dtype=float)
    >>> nms(b, np.array([0.9, 0.8, 0.7]), 0.5).tolist()   # IoU(0, 1) = 90 / 110 ≈ 0.82 > 0.5
    [0, 2]
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores")
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep: list[int] = []
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        rest = order[position + 1 :]
        inter_w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0.0, None)
        inter_h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0.0, None)
        inter = inter_w * inter_h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        # NaN (two degenerate boxes) compares False: not suppressed, as in torchvision.
        suppressed[rest[iou > iou_threshold]] = True
    return np.asarray(keep, dtype=np.int64)


def select_detections(
    raw: Sequence[DetectorBox],
    prompts: Sequence[str],
    *,
    min_confidence: float = 0.0,
    nms_iou: float | None = None,
    overdetect_factor: float | None = 1.0,
) -> list[DetectorBox]:
    """The MM-Grounding-DINO server's selection rule (spec §4.2 steps 1 and 3–5).

    1. ``prompts`` (the request's list, duplicates allowed) become a target multiset.
    2. Keep raw boxes with ``confidence > min_confidence`` (strictly greater).
    3. If ``nms_iou`` is set, class-agnostic NMS across all prompts (:func:`nms`); the survivors are
       ordered by descending confidence, as ``torchvision.ops.nms`` returns them.
    4. If ``overdetect_factor`` is None, return everything left. Otherwise walk the boxes in descending
       confidence and pick each box whose prompt is still in the multiset, removing one occurrence,
       until the multiset is empty: a prompt that occurs ``k`` times can get ``k`` boxes.
    5. Padding: ``desired = ceil(len(prompts) × overdetect_factor)``; if the factor is > 0 and fewer
       boxes were picked, append the best remaining boxes of *any* prompt until ``desired`` is reached.

    Order of the result: the picked boxes (descending confidence), then the padding (descending).
    Ties in confidence are broken by the later box first: the server reverses an ascending
    ``np.argsort``, which keeps equal scores in index order for small inputs (insertion sort) and is
    unspecified for large ones; we make the small-input behaviour the rule.

    Raw boxes whose prompt is not among ``prompts`` are never picked but may pad (the real server
    cannot produce them; a simulator might).

    >>> r = [DetectorBox("a", (0, 0, 1, 1), 0.9), DetectorBox("a", (0, 0, 2, 2), 0.8),
    ...      DetectorBox("b", (0, 0, 3, 3), 0.0)]
    >>> [d.confidence for d in select_detections(r, ["a", "b"])]   # "b" fails > 0.0; padding by 2nd "a"
    [0.9, 0.8]
    >>> [d.confidence for d in select_detections(r, ["a", "b"], overdetect_factor=0.0)]
    [0.9]
    """
    confidences = np.asarray([d.confidence for d in raw], dtype=np.float64)
    kept = np.flatnonzero(confidences > float(min_confidence))
    if nms_iou is not None and kept.size:
        kept = kept[nms(_box_array([raw[i] for i in kept]), confidences[kept], float(nms_iou))]
    candidates = [raw[i] for i in kept]
    if overdetect_factor is None:
        return candidates

    targets = Counter(prompts)
    num_targets = len(prompts)
    scores = np.asarray([d.confidence for d in candidates], dtype=np.float64)
    # spec §4.2 step 4: descending confidence = a reversed ascending sort (see docstring on ties).
    order = [int(i) for i in np.argsort(scores, kind="stable")[::-1]]

    picked: list[int] = []
    remaining = num_targets
    for i in order:
        if remaining == 0:
            break
        prompt = candidates[i].prompt
        if targets.get(prompt, 0) > 0:
            targets[prompt] -= 1
            remaining -= 1
            picked.append(i)

    # spec §4.2 step 5: the float product is rounded up exactly as the server does (math.ceil).
    desired = math.ceil(num_targets * float(overdetect_factor))
    if overdetect_factor > 0.0 and desired > len(picked):
        already = set(picked)
        for i in order:
            if len(picked) >= desired:
                break
            if i not in already:
                picked.append(i)
    return [candidates[i] for i in picked]


def gdino_response(selected: Sequence[DetectorBox]) -> dict[str, Any]:
    """The ``/infer`` response body of the MM-Grounding-DINO server for one image (spec §4.2 step 6).

    Boxes are **truncated** to int (toward zero, like ``torch.Tensor.int()``; gotcha 11).

    >>> gdino_response([DetectorBox("a cat", (1.9, 2.5, 30.99, -0.7), 0.75)])
    {'artifact': {'detections': [[{'box_xyxy': [1, 2, 30, 0], 'confidence': 0.75, 'prompt': 'a cat'}]], 'model': 'mmgroundingdino'}}
    """
    return {
        "artifact": {
            "detections": [
                [
                    {
                        "box_xyxy": [int(v) for v in d.box_xyxy],
                        "confidence": float(d.confidence),
                        "prompt": d.prompt,
                    }
                    for d in selected
                ]
            ],
            "model": "mmgroundingdino",
        }
    }


# =====================================================================================================
# Client side: the request, the response, and what the detection stage makes of them (spec §4.2–4.5)
# =====================================================================================================


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
) -> Detections:
    """The detections of one image from an MM-Grounding-DINO ``/infer`` response (spec §4.2 step 6):
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


@dataclass(frozen=True, eq=False)
class ImageDetections:
    """Stage-B result for one image (spec §4.4): its prompts, its detections (with SAM2's masks where
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
        """(N, 4) the evaluated boxes as FiftyOne's relative ``[x, y, w, h]`` (spec §4.5)."""
        return self.detections.relative_xywh(width, height, use_mask_box=self.segmentation_use_bbox)


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
    """Put one image's stage-B pieces together (spec §4.4).

    * ``detections``: the parsed GDINO response (:func:`parse_gdino_response`), in server order;
      detection ``j`` prompted SAM2 with ``object_id = j``.
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
