"""The MM-Grounding-DINO server's own rule, as the public server applies it after the model: prompt
de-duplication and chunking, the confidence filter, class-agnostic NMS, the selection of one box per
requested prompt and the over-detection padding (docs/nimbro_vision_api.md, "mmgroundingdino";
``model.py`` below is ``models/mmgroundingdino/mmgroundingdino/model.py`` of
AIS-Bonn/nimbro_vision_servers at 35b229d).

Both servers of this project apply it: the simulator (:mod:`vlm_gist_dagster.sim.gdino`) and
``vlm-gist vision-serve`` (:mod:`vlm_gist_dagster.vision_server.mmgroundingdino`).

>>> raw = [DetectorBox("a cat", (0.0, 0.0, 10.5, 10.9), 0.9), DetectorBox("a cat", (5.0, 5.0, 20.0, 20.0), 0.8),
...        DetectorBox("a dog", (50.0, 50.0, 60.0, 60.0), 0.1)]
>>> [(d.prompt, d.confidence) for d in select_detections(raw, ["a cat"])]
[('a cat', 0.9)]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_MIN_CONFIDENCE",
    "MAX_PROMPT_CHARS",
    "DetectorBox",
    "chunk_prompts",
    "chunk_width",
    "nms",
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
