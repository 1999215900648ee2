"""Instance masks as COCO run-length encodings (pycocotools), the one mask format used everywhere.

An RLE here is a plain dict ``{"size": [height, width], "counts": "<compressed str>"}``: JSON- and
Parquet-friendly, and exactly what ``pycocotools.mask`` decodes.

>>> import numpy as np
>>> m = np.zeros((4, 5), dtype=bool); m[1:3, 2:4] = True
>>> rle = encode_rle(m)
>>> rle["size"], int(rle_area(rle))
([4, 5], 4)
>>> bool((decode_rle(rle) == m).all())
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]


def encode_rle(mask: np.ndarray) -> RLE:
    """Encode a 2-D boolean (or 0/1) mask as a compressed COCO RLE with ``counts`` as ``str``."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {arr.shape}")
    # pycocotools wants column-major uint8. A bool mask is viewed as uint8 (same bytes, no copy) and a
    # column-major one (paste_box_mask's canvas) is then passed as is: the full-image copies were ~75 % of
    # loading VLM-GIST (1178 masks of up to 3840x2160) and of the simulator's start in every vlm-gist run.
    arr = arr.view(np.uint8) if arr.dtype == bool else arr.astype(np.uint8, copy=False)
    encoded = mask_utils.encode(np.asfortranarray(arr))
    return {
        "size": [int(encoded["size"][0]), int(encoded["size"][1])],
        "counts": encoded["counts"].decode("ascii"),
    }


def _as_pycocotools(rle: Mapping[str, Any]) -> dict[str, Any]:
    size = [int(v) for v in rle["size"]]
    counts = rle["counts"]
    if isinstance(counts, str):
        return {"size": size, "counts": counts.encode("ascii")}
    if isinstance(counts, bytes):
        return {"size": size, "counts": counts}
    # Uncompressed RLE (a list of run lengths), as COCO uses for crowd regions.
    return mask_utils.frPyObjects({"size": size, "counts": [int(c) for c in counts]}, size[0], size[1])


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode a compressed or uncompressed COCO RLE into a boolean ``(height, width)`` array."""
    # pycocotools writes 0/1 bytes: a bool view of them, not a converted copy of a full image.
    return mask_utils.decode(_as_pycocotools(rle)).view(bool)


def rle_area(rle: Mapping[str, Any]) -> int:
    """Number of foreground pixels."""
    return int(mask_utils.area(_as_pycocotools(rle)))


def compress_rle(rle: Mapping[str, Any]) -> RLE:
    """Normalise any COCO RLE (compressed bytes/str or uncompressed counts) to ``counts`` as ``str``."""
    coco = _as_pycocotools(rle)
    counts = coco["counts"]
    return {
        "size": [int(v) for v in coco["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def polygons_to_rle(polygons: Sequence[Sequence[float]], height: int, width: int) -> RLE:
    """Rasterise COCO polygons (``[[x1, y1, x2, y2, ...], ...]``, pixel coordinates) into one RLE."""
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    merged = mask_utils.merge(rles)
    return {
        "size": [int(merged["size"][0]), int(merged["size"][1])],
        "counts": merged["counts"].decode("ascii"),
    }


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> RLE:
    """Any COCO ``segmentation`` value (polygons, uncompressed RLE, compressed RLE) as a compressed RLE."""
    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError("empty polygon list")
        return polygons_to_rle(segmentation, height, width)
    if isinstance(segmentation, Mapping) and "counts" in segmentation and "size" in segmentation:
        rle = compress_rle(segmentation)
        if rle["size"] != [height, width]:
            raise ValueError(f"RLE size {rle['size']} does not match the image size {[height, width]}")
        return rle
    raise ValueError(f"unrecognised segmentation of type {type(segmentation).__name__}")


def paste_box_mask(box_mask: np.ndarray, left: int, top: int, height: int, width: int) -> np.ndarray:
    """Paste a mask that covers only its box into a full ``(height, width)`` canvas at ``(top, left)``.

    Parts falling outside the image are clipped (FiftyOne stores instance masks relative to the box).
    """
    box_mask = np.asarray(box_mask, dtype=bool)
    canvas = np.zeros((height, width), dtype=bool, order="F")  # column-major: encode_rle needs no copy
    mh, mw = box_mask.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + mh, height), min(left + mw, width)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = box_mask[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas
