"""Box geometry shared by the simulated models: jittered ground-truth boxes, random boxes, IoU.

Boxes are pixel ``xyxy`` float arrays.

>>> box_iou(np.array([0.0, 0.0, 10.0, 10.0]), np.array([5.0, 0.0, 15.0, 10.0]))  # 50 / 150
0.3333333333333333
"""

from __future__ import annotations

import numpy as np


def jitter_box(
    box: np.ndarray, jitter: float, gen: np.random.Generator, width: int, height: int
) -> np.ndarray:
    """``box`` (pixel xyxy floats) with each edge moved by ``N(0, jitter × box size)``, kept inside the
    image and at least 1 px wide and tall."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    shift = gen.normal(0.0, jitter, 4) * np.array([w, h, w, h]) if jitter > 0 else np.zeros(4)
    out = np.array([x1, y1, x2, y2]) + shift
    out[[0, 2]] = np.clip(out[[0, 2]], 0.0, float(width))
    out[[1, 3]] = np.clip(out[[1, 3]], 0.0, float(height))
    if out[2] - out[0] < 1.0 or out[3] - out[1] < 1.0:
        out = np.array([x1, y1, x2, y2])
    return out


def random_box(gen: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A box of 5–40 % of the image's width and height, anywhere inside it."""
    w = width * gen.uniform(0.05, 0.4)
    h = height * gen.uniform(0.05, 0.4)
    x = gen.uniform(0, width - w)
    y = gen.uniform(0, height - h)
    return np.array([x, y, x + w, y + h])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (0 for disjoint or degenerate ones)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def distractor_box(
    candidates: list[np.ndarray], jitter: float, gen: np.random.Generator, width: int, height: int
) -> np.ndarray:
    """A simulated detector's false box: with probability 0.6 a jittered box of one of ``candidates`` (other
    objects of the image, pixel xyxy), else a random box. The draws are the ones both simulated detectors
    (MM-Grounding-DINO, SAM 3) have always made, so their answers are unchanged."""
    if candidates and gen.random() < 0.6:
        return jitter_box(candidates[int(gen.integers(0, len(candidates)))], jitter, gen, width, height)
    return random_box(gen, width, height)
