"""The simulated MM-Grounding-DINO server: the server's own rule (de-duplication and chunking, the
confidence filter, NMS, selection and padding: :mod:`vlm_gist_dagster.protocol.gdino_selection`, re-exported
here) and the ``/infer`` response body (docs/nimbro_vision_api.md, "mmgroundingdino"; ``model.py`` below is
``models/mmgroundingdino/mmgroundingdino/model.py`` of AIS-Bonn/nimbro_vision_servers at 35b229d).

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

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..protocol.gdino_selection import (
    DEFAULT_MIN_CONFIDENCE,
    MAX_PROMPT_CHARS,
    DetectorBox,
    chunk_prompts,
    chunk_width,
    nms,
    select_detections,
    unique_prompts,
)
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


def prompt_text(chunk: Sequence[str]) -> str:
    """The text the server gives the grounding model for one chunk: ``"p1. p2. … pk."``.

    >>> prompt_text(["a red chair", "a cat"])
    'a red chair. a cat.'
    """
    return ". ".join(chunk) + "."


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
