"""The MM-Grounding-DINO server's own rule, as the public server applies it after the model: prompt
de-duplication and chunking, the confidence filter, class-agnostic NMS, the selection of one box per
requested prompt and the over-detection padding, and the ``/infer`` response body (docs/nimbro_vision_api.md,
"mmgroundingdino"; ``model.py`` below is ``models/mmgroundingdino/mmgroundingdino/model.py`` of
AIS-Bonn/nimbro_vision_servers at 35b229d).

The module also holds the server's request validation (:func:`parse_infer_request`, same rules, order and
messages) and the simulated model itself (:func:`detect`): each chunk of prompts is "one model call"
whose boxes come from the ground truth (:func:`ground_chunk`). :mod:`.vision` serves it.

>>> raw = [DetectorBox("a cat", (0.0, 0.0, 10.5, 10.9), 0.9), DetectorBox("a cat", (5.0, 5.0, 20.0, 20.0), 0.8),
...        DetectorBox("a dog", (50.0, 50.0, 60.0, 60.0), 0.1)]
>>> [(d.prompt, d.confidence) for d in select_detections(raw, ["a cat"])]
[('a cat', 0.9)]
>>> gdino_response(select_detections(raw, ["a cat"]))["artifact"]["detections"][0][0]["box_xyxy"]
[0, 0, 10, 10]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..protocol.vision_requests import one_image_per_parameter_set, per_image_parameters, request_images
from ._http import RejectedRequest, request_object
from .controls import ModelControls
from .faults import rng
from .geometry import distractor_box, jitter_box
from .world import Identified

__all__ = [
    "DEFAULT_MIN_CONFIDENCE",
    "MAX_PROMPT_CHARS",
    "DetectorBox",
    "GdinoParameters",
    "chunk_prompts",
    "chunk_width",
    "detect",
    "gdino_response",
    "ground_chunk",
    "nms",
    "parse_infer_request",
    "prompt_text",
    "select_detections",
    "unique_prompts",
]

#: The server's per-call character budget for one chunk of prompts (``max_count_per_prompt``, model.py:43).
MAX_PROMPT_CHARS = 1000
#: ``min_confidence`` when a request leaves it out (``default_min_confidence``, model.py:39).
DEFAULT_MIN_CONFIDENCE = 0.05


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
    """De-duplicate prompts keeping first-occurrence order, and count each one (model.py:104-121).

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
    feasible, and also when nothing at all is (a single prompt longer than ``max_chars``):
    ``determine_bin_width``, model.py:200-233.

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

    Duplicates are removed first (model.py:181-184), then consecutive runs of :func:`chunk_width`
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
    """The MM-Grounding-DINO server's selection rule (``filter_detections``, model.py:235-323).

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
        kept = kept[nms(_box_array([raw[i] for i in kept.tolist()]), confidences[kept], float(nms_iou))]
    candidates = [raw[i] for i in kept.tolist()]
    if overdetect_factor is None:
        return candidates

    targets = Counter(prompts)
    num_targets = len(prompts)
    scores = np.asarray([d.confidence for d in candidates], dtype=np.float64)
    # model.py:271-272: descending confidence = a reversed ascending sort (see docstring on ties).
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

    # model.py:292: the float product is rounded up exactly as the server does (math.ceil).
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
    """The ``/infer`` response body of the MM-Grounding-DINO server for one image (``postprocess``,
    model.py:359-374).

    Boxes are **truncated** to int (toward zero, like ``torch.Tensor.int()``).

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
# The request, as the server's ``preprocess`` checks it (model.py:123-195)
# =====================================================================================================


@dataclass(frozen=True)
class GdinoParameters:
    """One image's inference parameters after the server's standardisation: defaults filled in, a single
    prompt string wrapped. ``prompts`` is the request's list, duplicates kept (they count)."""

    prompts: tuple[Any, ...]
    min_confidence: float
    nms_iou: float | None
    overdetect_factor: float | None


def _checked_float(params: dict[str, Any], name: str, default: float | None, i: int) -> float | None:
    """The server's check (model.py:169-180): ``min_confidence`` must be a float, ``nms_iou`` and
    ``overdetect_factor`` a float or null; a JSON int or bool is neither."""
    value = params.get(name, default)
    if (value is not None or default is not None) and not isinstance(value, float):
        raise RejectedRequest(f"Invalid '{name}' in inference_parameters[{i}]")
    return value


def parse_infer_request(payload: Any) -> tuple[list[Any], list[GdinoParameters]]:
    """The images (still base64, one per parameter set) and parameters of an ``/infer`` body.

    Raises :class:`RejectedRequest` with the server's message, checked in the server's order:

    >>> parse_infer_request({"images": "QUJD", "inference_parameters": {"prompts": "a cat"}})[1]
    [GdinoParameters(prompts=('a cat',), min_confidence=0.05, nms_iou=None, overdetect_factor=None)]
    >>> parse_infer_request({"images": ["QUJD"], "inference_parameters": [{"prompts": ["a"], "min_confidence": 0}]})
    Traceback (most recent call last):
    ...
    vlm_gist_dagster.sim._http.RejectedRequest: Invalid 'min_confidence' in inference_parameters[0]
    """
    if request_object(payload).get("inference_parameters") is None:  # the server reads them first
        raise RejectedRequest("Missing 'inference_parameters' in payload")
    images = request_images(payload, RejectedRequest)
    parameters = per_image_parameters(payload, images, RejectedRequest)
    parsed: list[GdinoParameters] = []
    for i, params in enumerate(parameters):
        if not isinstance(params, dict):  # the server calls params.copy()
            raise RejectedRequest(f"'{type(params).__name__}' object has no attribute 'copy'")
        if "prompts" not in params:
            raise RejectedRequest(f"Missing 'prompts' in inference_parameters[{i}]")
        prompts = params["prompts"]
        if not isinstance(prompts, list):
            if not isinstance(prompts, str):
                raise RejectedRequest(f"Invalid 'prompts' in inference_parameters[{i}]")
            prompts = [prompts]
        min_confidence = _checked_float(params, "min_confidence", DEFAULT_MIN_CONFIDENCE, i)
        nms_iou = _checked_float(params, "nms_iou", None, i)
        factor = _checked_float(params, "overdetect_factor", None, i)
        try:
            Counter(prompts)  # the server counts duplicates: an unhashable prompt fails here
        except TypeError as exc:
            raise RejectedRequest(str(exc)) from None
        parsed.append(GdinoParameters(tuple(prompts), float(min_confidence), nms_iou, factor))  # type: ignore[arg-type]
    return one_image_per_parameter_set(images, parsed), parsed


# =====================================================================================================
# The simulated model
# =====================================================================================================


def ground_chunk(
    identified: Identified, chunk: Sequence[str], controls: ModelControls, parts: tuple
) -> list[DetectorBox]:
    """Raw boxes of one model call on one chunk of prompts (text ``"p1. p2. … pk."``).

    Each prompt is mapped to the GT instance(s) it was derived from
    (:meth:`~.world.SimImage.candidates_for_prompt`): an exactly recognised prompt yields its GT box, each
    edge shifted by ``N(0, box_jitter × box size)``, with a score in [0.55, 0.95) (missed with probability
    1 − ``recall``); a prompt recognised only by class / head noun scores lower; plus ``distractors``
    wrong boxes per prompt (another GT instance's box or a random box) scored in [0.05, 0.4). The draws
    of a prompt depend on the chunk's text, as a real call's scores depend on the whole text prompt.
    """
    image, width, height = identified.image, identified.width, identified.height
    text = prompt_text(chunk)
    raw: list[DetectorBox] = []
    for prompt in chunk:
        gen = rng(*parts, "ground", text, prompt)
        candidates, exact = image.candidates_for_prompt(prompt)
        used: set[int] = set()
        for rank, index in enumerate(candidates[:8]):
            if gen.random() >= controls.recall:
                continue
            inst = image.instances[index]
            box = jitter_box(image.box_xyxy(inst, width, height), controls.box_jitter, gen, width, height)
            if exact:
                score = 0.55 + 0.4 * gen.random()
            else:
                score = (0.42 + 0.2 * gen.random()) * 0.85**rank
            raw.append(DetectorBox(prompt, tuple(box), score))
            used.add(index)
        others = [i for i in range(len(image.instances)) if i not in used]
        look_alikes = [image.box_xyxy(image.instances[i], width, height) for i in others]
        for _ in range(controls.distractors):
            box = distractor_box(look_alikes, controls.box_jitter, gen, width, height)
            raw.append(DetectorBox(prompt, tuple(box), 0.05 + 0.35 * gen.random()))
    return raw


def detect(
    identified: Identified, params: GdinoParameters, controls: ModelControls, parts: tuple
) -> list[DetectorBox]:
    """What the server answers for one image: its unique prompts in chunks of at most
    :data:`MAX_PROMPT_CHARS` characters, one :func:`ground_chunk` per chunk, then
    :func:`select_detections` over the request's prompt list. ``parts`` seed the draws and must not
    contain the attempt: the same request always gets the same boxes."""
    try:
        chunks = chunk_prompts(list(params.prompts))
        for chunk in chunks:
            prompt_text(chunk)  # the server joins each chunk: a non-string prompt fails there
    except TypeError as exc:
        raise RejectedRequest(str(exc)) from None
    raw = [box for chunk in chunks for box in ground_chunk(identified, chunk, controls, parts)]
    return select_detections(
        raw,
        list(params.prompts),
        min_confidence=params.min_confidence,
        nms_iou=params.nms_iou,
        overdetect_factor=params.overdetect_factor,
    )
