"""Reading the vision servers' ``/infer`` and ``/update`` responses: the shape every NimbRo vision server
shares (``{"artifact": {<field>: [per image or frame: [entry, ...]], ...}}``) and the typed fields of
an entry, each failure a :class:`ResponseFormatError` that names the server and the field.

>>> response = {"artifact": {"detections": [[{"box_xyxy": [1, 2, 3, 4], "label": "car"}]]}}
>>> [(where, int_box(entry, where, "Florence-2")) for where, entry in entries(response, "detections", 0, "Florence-2")]
[('artifact.detections[0][0]', (1, 2, 3, 4))]
>>> entries({"artifact": {"detections": []}}, "detections", 0, "GDINO")
Traceback (most recent call last):
...
vlm_gist_dagster.protocol.responses.ResponseFormatError: GDINO response field 'artifact.detections' must be a list with an entry for image 0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .detections import BoxXYXY

__all__ = ["ResponseFormatError", "artifact", "entries", "int_box", "string_field"]


class ResponseFormatError(ValueError):
    """A vision-server response that does not have the documented shape; the message names the field.

    Raised by every response parser of stage B and the baselines (GDINO, SAM2, Florence-2, Kosmos-2).
    """


def artifact(response: Any, server: str) -> Mapping[str, Any]:
    """The response's ``artifact`` object."""
    if not isinstance(response, Mapping):
        raise ResponseFormatError(f"{server} response must be a JSON object, got {type(response).__name__}")
    found = response.get("artifact")
    if not isinstance(found, Mapping):
        raise ResponseFormatError(f"{server} response lacks the object 'artifact'")
    return found


def entries(
    response: Any, field: str, index: int, server: str, *, what: str = "image"
) -> list[tuple[str, Mapping[str, Any]]]:
    """``(where, entry)`` for every entry of ``artifact.<field>[index]`` (one image's detections, one
    frame's tracks), ``where`` naming the entry in messages; each entry must be an object."""
    per_item = artifact(response, server).get(field)
    if not isinstance(per_item, list) or len(per_item) <= index:
        raise ResponseFormatError(
            f"{server} response field 'artifact.{field}' must be a list with an entry for {what} {index}"
        )
    items = per_item[index]
    if not isinstance(items, list):
        raise ResponseFormatError(f"{server} response field 'artifact.{field}[{index}]' must be a list")
    out = []
    for k, entry in enumerate(items):
        where = f"artifact.{field}[{index}][{k}]"
        if not isinstance(entry, Mapping):
            raise ResponseFormatError(f"{server} response field '{where}' must be an object")
        out.append((where, entry))
    return out


def int_box(entry: Mapping[str, Any], where: str, server: str) -> BoxXYXY:
    """The entry's ``box_xyxy``: exactly four ints (the servers truncate boxes to int)."""
    box = entry.get("box_xyxy")
    if (
        not isinstance(box, list)
        or len(box) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)
    ):
        raise ResponseFormatError(
            f"{server} response field '{where}.box_xyxy' must be a list of 4 ints, got {box!r}"
        )
    return (box[0], box[1], box[2], box[3])


def string_field(entry: Mapping[str, Any], key: str, where: str, server: str) -> str:
    """The entry's string field ``key``."""
    value = entry.get(key)
    if not isinstance(value, str):
        raise ResponseFormatError(f"{server} response field '{where}.{key}' must be a string, got {value!r}")
    return value
