"""SAM2 (``sam2_realtime``) requests and responses, and the mask/box rules of its server.

Spec/pipeline.md §4.3 and gotchas 11–12, both directions:

* server side (for the simulator): :func:`mask_to_box` (SAM2's ``mask_to_box``: min/max pixel indices,
  **max inclusive**, empty → dropped) and :func:`encode_sam2_mask` (the ``mask`` field: base64 of a
  single-channel 0/255 PNG of ``mask[y1:y2, x1:x2]``, so one row and one column short of the mask);
* client side (for the pipeline): request bodies for ``/update`` and ``/infer``, :func:`parse_sam2_response`
  and :func:`decode_sam2_track` → the track's mask as a full-image COCO RLE.

>>> import numpy as np
>>> m = np.zeros((6, 8), dtype=bool); m[1:4, 2:6] = True        # a 3 × 4 block: rows 1–3, columns 2–5
>>> box, png = encode_sam2_mask(m)
>>> box                                                           # inclusive max: (x1, y1, x2, y2)
(2, 1, 5, 3)
>>> decode_mask_png(png).shape                                    # (y2 − y1, x2 − x1): one short each way
(2, 3)
>>> encode_sam2_mask(np.zeros((6, 8), dtype=bool)) is None         # empty masks are dropped by the server
True
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from vlm_gist_dagster.protocol.detections import BoxXYXY
from vlm_gist_dagster.protocol.masks import RLE, encode_rle, paste_box_mask
from vlm_gist_dagster.protocol.responses import ResponseFormatError, artifact, entries, int_box

__all__ = [
    "ResponseFormatError",
    "DegenerateMaskError",
    "BoxXYXY",
    "Sam2Track",
    "sam2_update_request",
    "sam2_track_request",
    "mask_to_box",
    "encode_mask_png",
    "decode_mask_png",
    "encode_sam2_mask",
    "sam2_track_entry",
    "sam2_response",
    "parse_sam2_response",
    "decode_sam2_track",
    "tracks_by_id",
]


class DegenerateMaskError(ValueError):
    """A non-empty mask whose server-side crop has no pixels (the mask is one pixel wide or tall).

    The crop is ``mask[y1:y2, x1:x2]`` with the inclusive max, so a one-column mask crops to width 0
    and ``cv2.imencode`` fails on the real server (HTTP 500, which the reference client retries
    forever). A simulator may turn this into a 500 to be faithful, or drop the track.
    """


@dataclass(frozen=True)
class Sam2Track:
    """One entry of a SAM2 response: ``track_id`` (= the prompt's ``object_id``), box, cropped-mask PNG."""

    track_id: int
    box_xyxy: BoxXYXY
    mask_png_b64: str

    def cropped_mask(self) -> np.ndarray:
        """The decoded mask crop, shape ``(y2 − y1, x2 − x1)``."""
        return decode_mask_png(self.mask_png_b64, field=f"mask of track {self.track_id}")


# --- requests -------------------------------------------------------------------------------------------


def sam2_update_request(image_b64: str, boxes_xyxy: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Body of ``POST /update``: one box prompt per detection, ``object_id`` = detection index (§4.3).

    The index becomes the ``track_id`` of the response, which is how masks find their detection.

    >>> sam2_update_request("QUJD", [(1, 2, 3, 4), [5, 6, 7, 8]])
    {'image': 'QUJD', 'prompts': [{'object_id': 0, 'bbox': [1, 2, 3, 4]}, {'object_id': 1, 'bbox': [5, 6, 7, 8]}]}
    """
    prompts = []
    for j, box in enumerate(boxes_xyxy):
        if len(box) != 4:
            raise ValueError(f"box {j} must have 4 coordinates, got {box!r}")
        prompts.append({"object_id": j, "bbox": [int(v) for v in box]})
    return {"image": image_b64, "prompts": prompts}


def sam2_track_request(images_b64: str | Sequence[str]) -> dict[str, Any]:
    """Body of ``POST /infer`` (track): the frames to propagate the tracks over, in order (§4.3).

    >>> sam2_track_request("QUJD")
    {'images': ['QUJD']}
    """
    images = [images_b64] if isinstance(images_b64, str) else list(images_b64)
    return {"images": images}


# --- masks and boxes (server rules) ------------------------------------------------------------------------


def mask_to_box(mask: np.ndarray) -> BoxXYXY | None:
    """SAM2's ``mask_to_box``: ``(min x, min y, max x, max y)`` of the foreground, max **inclusive**.

    Returns None for an empty mask (SAM2 gives ``(W, H, −1, −1)``, which the server discards).

    >>> m = np.zeros((5, 5), dtype=bool); m[2, 3] = True
    >>> mask_to_box(m)
    (3, 2, 3, 2)
    """
    arr = np.asarray(mask, dtype=bool)
    if arr.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {arr.shape}")
    rows = np.flatnonzero(arr.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(arr.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))


def encode_mask_png(mask: np.ndarray) -> str:
    """Base64 (standard alphabet, padded, no prefix) of a single-channel 8-bit PNG, 0 / 255.

    Raises :class:`DegenerateMaskError` for a mask with no pixels (PNG cannot hold one).
    """
    arr = np.asarray(mask, dtype=bool)
    if arr.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {arr.shape}")
    if arr.size == 0:
        raise DegenerateMaskError(f"cannot encode a mask of shape {arr.shape} as PNG")
    ok, png = cv2.imencode(".png", arr.astype(np.uint8) * 255)
    if not ok:  # pragma: no cover - cv2 raises rather than returning False for valid input
        raise RuntimeError("cv2 failed to encode the mask as PNG")
    return base64.b64encode(png.tobytes()).decode("ascii")


def decode_mask_png(mask_png_b64: str, *, field: str = "mask") -> np.ndarray:
    """Decode a base64 PNG mask into a boolean array (foreground = value > 0)."""
    if not isinstance(mask_png_b64, str):
        raise ResponseFormatError(f"{field} must be a base64 string, got {type(mask_png_b64).__name__}")
    try:
        data = base64.b64decode(mask_png_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ResponseFormatError(f"{field} is not valid base64: {exc}") from exc
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ResponseFormatError(f"{field} is not a decodable PNG")
    if decoded.ndim != 2:
        raise ResponseFormatError(f"{field} must be a single-channel PNG, got shape {decoded.shape}")
    return decoded > 0


def encode_sam2_mask(full_mask: np.ndarray) -> tuple[BoxXYXY, str] | None:
    """What the SAM2 server makes of one full-image mask: ``(box_xyxy, base64 PNG)``, or None if dropped.

    The box is :func:`mask_to_box` (inclusive max); the PNG holds ``mask[y1:y2, x1:x2]``, which misses
    the last foreground row and column (docs/protocol/pipeline.md gotcha 11). Empty masks are dropped (None). A mask one pixel
    wide or tall raises :class:`DegenerateMaskError` (the real server fails on it).
    """
    arr = np.asarray(full_mask, dtype=bool)
    box = mask_to_box(arr)
    if box is None:
        return None
    x1, y1, x2, y2 = box
    crop = arr[y1:y2, x1:x2]
    if crop.size == 0:
        raise DegenerateMaskError(
            f"mask with box {box} crops to shape {crop.shape}: the real server cannot encode it (HTTP 500)"
        )
    return box, encode_mask_png(crop)


def sam2_track_entry(track_id: int, full_mask: np.ndarray) -> dict[str, Any] | None:
    """One ``tracks`` entry as the server writes it, or None when the server would discard the track."""
    encoded = encode_sam2_mask(full_mask)
    if encoded is None:
        return None
    box, png = encoded
    return {"box_xyxy": list(box), "mask": png, "track_id": int(track_id)}


def sam2_response(frames: Sequence[Sequence[tuple[int, np.ndarray]]]) -> dict[str, Any]:
    """A full ``/update`` or ``/infer`` response for ``frames`` of ``(track_id, full mask)`` pairs.

    Tracks with empty masks are dropped. ``metadata`` per frame is ``{"image_width", "image_height"}``
    taken from the first mask the server looked at (dropped ones included), or None without tracks.
    """
    tracks: list[list[dict[str, Any]]] = []
    metadata: list[dict[str, int] | None] = []
    for frame in frames:
        entries: list[dict[str, Any]] = []
        meta: dict[str, int] | None = None
        for track_id, mask in frame:
            arr = np.asarray(mask, dtype=bool)
            if meta is None:
                meta = {"image_width": int(arr.shape[1]), "image_height": int(arr.shape[0])}
            entry = sam2_track_entry(track_id, arr)
            if entry is not None:
                entries.append(entry)
        tracks.append(entries)
        metadata.append(meta)
    return {"artifact": {"tracks": tracks, "model": "sam2_realtime", "metadata": metadata}}


# --- responses (client side) ---------------------------------------------------------------------------------


def parse_sam2_response(response: Mapping[str, Any], *, frame: int = 0) -> list[Sam2Track]:
    """The tracks of one frame of a SAM2 ``/update`` or ``/infer`` response (the client takes frame 0).

    Raises :class:`ResponseFormatError` naming the field when the shape is wrong, when ``tracks`` is
    empty (the tracker was never initialised: call ``/update`` first), or when a track id repeats
    (the reference asserts uniqueness).
    """
    tracks = artifact(response, "SAM2").get("tracks")
    if not isinstance(tracks, list):
        raise ResponseFormatError("SAM2 response field 'artifact.tracks' must be a list")
    if len(tracks) <= frame:
        raise ResponseFormatError(
            f"SAM2 response field 'artifact.tracks' has {len(tracks)} frame(s), frame {frame} requested"
            + (" (an empty list means the tracker was never initialised)" if not tracks else "")
        )
    parsed: list[Sam2Track] = []
    seen: set[int] = set()
    for where, entry in entries(response, "tracks", frame, "SAM2", what="frame"):
        track_id = entry.get("track_id")
        if not isinstance(track_id, int) or isinstance(track_id, bool):
            raise ResponseFormatError(
                f"SAM2 response field '{where}.track_id' must be an int, got {track_id!r}"
            )
        if track_id in seen:
            raise ResponseFormatError(f"SAM2 response field '{where}.track_id' repeats track id {track_id}")
        seen.add(track_id)
        box = int_box(entry, where, "SAM2")
        mask = entry.get("mask")
        if not isinstance(mask, str):
            raise ResponseFormatError(f"SAM2 response field '{where}.mask' must be a base64 string")
        parsed.append(Sam2Track(track_id=track_id, box_xyxy=box, mask_png_b64=mask))
    return parsed


def decode_sam2_track(track: Sam2Track, image_width: int, image_height: int) -> RLE:
    """Paste a track's cropped mask at ``(x1, y1)`` into the full image and encode it as COCO RLE
    (the mask box is the track's ``box_xyxy``).

    The crop must have shape ``(y2 − y1, x2 − x1)`` (the server's one-short crop, docs/protocol/pipeline.md gotcha 11); the
    pasted mask therefore misses the box's last row and column, exactly like the reference's
    ``crop_masks=False`` output and its FiftyOne box-relative masks.
    """
    x1, y1, x2, y2 = track.box_xyxy
    crop = track.cropped_mask()
    expected = (y2 - y1, x2 - x1)
    if crop.shape != expected:
        raise ResponseFormatError(
            f"mask of track {track.track_id} has shape {crop.shape}, expected {expected} for box {track.box_xyxy}"
        )
    return encode_rle(paste_box_mask(crop, x1, y1, image_height, image_width))


def tracks_by_id(tracks: Sequence[Sam2Track]) -> dict[int, Sam2Track]:
    """Map ``track_id → track`` (the association key of docs/protocol/pipeline.md §4.4 step 2; ids are unique)."""
    mapping: dict[int, Sam2Track] = {}
    for track in tracks:
        if track.track_id in mapping:
            raise ResponseFormatError(f"track id {track.track_id} occurs twice")
        mapping[track.track_id] = track
    return mapping
