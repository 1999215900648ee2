"""The request fields every NimbRo vision server reads the same way (its ``Model.preprocess``): the
``images`` (one base64 string or a list) and the ``inference_parameters`` paired with them.

The checks run in the servers' order and fail with the servers' messages, raised as the exception class
the caller names: ``vlm-gist vision-serve`` (:mod:`vlm_gist_dagster.vision_server`) raises its
``RequestError``, the simulator (:mod:`vlm_gist_dagster.sim`) its ``RejectedRequest``; both answer HTTP
500 ``Inference failed: <message>``, as the real servers do.

>>> images = request_images({"images": "QUJD"}, ValueError)
>>> images, per_image_parameters({"inference_parameters": {"prompts": "a"}}, images, ValueError)
(['QUJD'], [{'prompts': 'a'}])
>>> per_image_parameters({"inference_parameters": [{}, {}]}, ["A", "B", "C"], ValueError)
Traceback (most recent call last):
...
ValueError: Mismatch between number of images and inference_parameters
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = [
    "listed_field",
    "one_image_per_parameter_set",
    "per_image_parameters",
    "request_images",
    "sam3_parameter_set",
]

T = TypeVar("T")


def listed_field(payload: Mapping[str, Any], field: str, single: type, error: type[Exception]) -> list[Any]:
    """The request field ``field`` as a list: a list as sent, one ``single`` value (a string, an object)
    as a list of one; ``error`` when it is missing or neither.

    >>> listed_field({"prompts": {"object_id": 1}}, "prompts", dict, ValueError)
    [{'object_id': 1}]
    >>> listed_field({"prompts": "a"}, "prompts", dict, ValueError)
    Traceback (most recent call last):
    ...
    ValueError: Invalid 'prompts' in payload
    """
    value = payload.get(field)
    if value is None:
        raise error(f"Missing '{field}' in payload")
    if isinstance(value, single):
        return [value]
    if not isinstance(value, list):
        raise error(f"Invalid '{field}' in payload")
    return value


def request_images(payload: Mapping[str, Any], error: type[Exception]) -> list[Any]:
    """The ``images`` field as a list (a single string is one image); ``error`` when it is missing or
    neither a string nor a list. The images stay as sent (base64 strings, not checked here)."""
    return listed_field(payload, "images", str, error)


def per_image_parameters(payload: Mapping[str, Any], images: list[Any], error: type[Exception]) -> list[Any]:
    """The ``inference_parameters`` field as one parameter set per image, as the servers pair them: one
    set per image, one set for all images, or one image for several sets (then the image is answered
    once per set: see :func:`one_image_per_parameter_set`). The sets stay as sent (not checked here)."""
    params = listed_field(payload, "inference_parameters", dict, error)
    if len(images) > 1 and len(params) == 1:
        return params * len(images)
    if not (len(images) == len(params) or (len(images) == 1 and len(params) > 1)):
        raise error("Mismatch between number of images and inference_parameters")
    return params


def one_image_per_parameter_set(images: list[T], parameter_sets: list[Any]) -> list[T]:
    """``images`` repeated to one per parameter set when a single image came with several sets.

    >>> one_image_per_parameter_set(["A"], [{}, {}, {}])
    ['A', 'A', 'A']
    """
    if len(images) == 1 and len(parameter_sets) > 1:
        return images * len(parameter_sets)
    return images


def sam3_parameter_set(
    i: int, params: Any, error: type[Exception]
) -> tuple[list[str], float, float, int | None]:
    """One SAM 3 parameter set (``inference_parameters[i]``) checked: its unique prompts in request order,
    ``min_confidence``, ``mask_threshold`` (numbers in [0, 1], default 0.5) and
    ``max_detections_per_prompt`` (null or an integer >= 1).

    >>> sam3_parameter_set(0, {"prompts": ["cup", "cup", "mug"], "min_confidence": 1}, ValueError)
    (['cup', 'mug'], 1.0, 0.5, None)
    >>> sam3_parameter_set(2, {"prompts": [""]}, ValueError)
    Traceback (most recent call last):
    ...
    ValueError: Invalid 'prompts' in inference_parameters[2]: a list of non-empty strings
    """
    if not isinstance(params, dict) or "prompts" not in params:
        raise error(f"Missing 'prompts' in inference_parameters[{i}]")
    prompts = [params["prompts"]] if isinstance(params["prompts"], str) else params["prompts"]
    if not isinstance(prompts, list) or not all(isinstance(s, str) and s.strip() for s in prompts):
        raise error(f"Invalid 'prompts' in inference_parameters[{i}]: a list of non-empty strings")
    values = []
    for key in ("min_confidence", "mask_threshold"):
        value = params.get(key, 0.5)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise error(f"Invalid '{key}' in inference_parameters[{i}]: a number in [0, 1]")
        values.append(float(value))
    limit = params.get("max_detections_per_prompt")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise error(
            f"Invalid 'max_detections_per_prompt' in inference_parameters[{i}]: null or an integer >= 1"
        )
    min_confidence, mask_threshold = values
    return list(dict.fromkeys(prompts)), min_confidence, mask_threshold, limit
