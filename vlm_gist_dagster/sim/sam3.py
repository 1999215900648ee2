"""The simulated SAM 3 server (family ``sam3``): concept prompts → every matching instance with its box,
score and mask, in the shape ``vlm-gist vision-serve --family sam3`` answers (docs/nimbro_vision_api.md,
"sam3"; :mod:`vlm_gist_dagster.vision_server.sam3`).

Request checks are the real server's (same order and messages, :func:`parse_infer_request`). Answers
come from the ground truth: a prompt refers to the GT instances the simulator's grounding finds for it
(:meth:`~.world.SimImage.candidates_for_prompt`: an exact description variant, or a class name / head noun
in the prompt, which for SAM 3's concept prompts means *every* instance of that concept). Each is found
with probability ``recall``, its box jittered by ``box_jitter``, scored in [0.6, 0.95) (exact) or
[0.55, 0.9) (by concept); ``distractors`` wrong boxes per prompt score in [0.2, 0.6), so some pass the
default ``min_confidence`` of 0.5, unless the concept is not in the image at all ([0.05, 0.45): SAM 3's
presence score keeps absent concepts quiet, which matters for the ``sam3_classes`` baseline's 80 prompts). Masks are the GT mask cut to the box (:func:`.sam2.mask_for_box`),
encoded as SAM 2's crops. A result depends on the seed, the flavour, the image and the prompt only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..protocol.segmentation import encode_sam2_mask
from ._http import RejectedRequest
from .controls import ModelControls
from .faults import rng
from .geometry import distractor_box, jitter_box
from .sam2 import mask_for_box
from .world import Identified

__all__ = ["Sam3Parameters", "parse_infer_request", "sam3_detections"]


@dataclass(frozen=True)
class Sam3Parameters:
    """One image's parameters: unique prompts (request order), thresholds, the per-prompt cap."""

    prompts: tuple[str, ...]
    min_confidence: float
    mask_threshold: float
    max_detections: int | None


def parse_infer_request(payload: Any) -> tuple[list[Any], list[Sam3Parameters]]:
    """The images (base64, one per parameter set) and parameters of a SAM 3 ``/infer`` body, checked in
    the order and with the messages of ``vision_server.sam3.Sam3.prepare``.

    >>> parse_infer_request({"images": "QUJD", "inference_parameters": {"prompts": ["cup", "cup"]}})[1]
    [Sam3Parameters(prompts=('cup',), min_confidence=0.5, mask_threshold=0.5, max_detections=None)]
    >>> parse_infer_request({"images": ["QUJD"], "inference_parameters": {"prompts": [""]}})
    Traceback (most recent call last):
    ...
    vlm_gist_dagster.sim._http.RejectedRequest: Invalid 'prompts' in inference_parameters[0]: a list of non-empty strings
    """
    if not isinstance(payload, dict):
        raise RejectedRequest(f"'{type(payload).__name__}' object has no attribute 'get'")
    images = payload.get("images")
    if images is None:
        raise RejectedRequest("Missing 'images' in payload")
    if isinstance(images, str):
        images = [images]
    elif not isinstance(images, list):
        raise RejectedRequest("Invalid 'images' in payload")
    params = payload.get("inference_parameters")
    if params is None:
        raise RejectedRequest("Missing 'inference_parameters' in payload")
    if isinstance(params, dict):
        params = [params]
    elif not isinstance(params, list):
        raise RejectedRequest("Invalid 'inference_parameters' in payload")
    if len(images) > 1 and len(params) == 1:
        params = params * len(images)
    elif not (len(images) == len(params) or (len(images) == 1 and len(params) > 1)):
        raise RejectedRequest("Mismatch between number of images and inference_parameters")
    parsed: list[Sam3Parameters] = []
    for i, p in enumerate(params):
        if not isinstance(p, dict) or "prompts" not in p:
            raise RejectedRequest(f"Missing 'prompts' in inference_parameters[{i}]")
        prompts = [p["prompts"]] if isinstance(p["prompts"], str) else p["prompts"]
        if not isinstance(prompts, list) or not all(isinstance(s, str) and s.strip() for s in prompts):
            raise RejectedRequest(
                f"Invalid 'prompts' in inference_parameters[{i}]: a list of non-empty strings"
            )
        values = []
        for key in ("min_confidence", "mask_threshold"):
            value = p.get(key, 0.5)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise RejectedRequest(f"Invalid '{key}' in inference_parameters[{i}]: a number in [0, 1]")
            values.append(float(value))
        limit = p.get("max_detections_per_prompt")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise RejectedRequest(
                f"Invalid 'max_detections_per_prompt' in inference_parameters[{i}]: null or an integer >= 1"
            )
        parsed.append(Sam3Parameters(tuple(dict.fromkeys(prompts)), values[0], values[1], limit))
    if len(images) == 1 and len(parsed) > 1:
        images = images * len(parsed)
    return images, parsed


def sam3_detections(
    identified: Identified, params: Sam3Parameters, controls: ModelControls, parts: tuple
) -> list[dict[str, Any]]:
    """One image's ``detections`` entries: per prompt (request order), its instances above
    ``min_confidence``, best first, at most ``max_detections``; masks as SAM 2's crops."""
    image, width, height = identified.image, identified.width, identified.height
    out: list[dict[str, Any]] = []
    for prompt in params.prompts:
        gen = rng(*parts, "sam3", prompt)
        candidates, exact = image.candidates_for_prompt(prompt)
        found: list[tuple[float, np.ndarray]] = []
        used: set[int] = set()
        for index in candidates:
            if gen.random() >= controls.recall:
                continue
            box = jitter_box(
                image.box_xyxy(image.instances[index], width, height), controls.box_jitter, gen, width, height
            )
            found.append(((0.6 if exact else 0.55) + 0.35 * gen.random(), box))
            used.add(index)
        others = [i for i in range(len(image.instances)) if i not in used]
        look_alikes = [image.box_xyxy(image.instances[i], width, height) for i in others]
        for _ in range(controls.distractors):
            box = distractor_box(look_alikes, controls.box_jitter, gen, width, height)
            # a concept that is in the image draws look-alikes that may pass 0.5; an absent one is caught by
            # SAM 3's presence head (its distractors stay below 0.45)
            found.append(((0.2 if candidates else 0.05) + 0.4 * gen.random(), box))
        found = sorted((f for f in found if f[0] > params.min_confidence), key=lambda f: -f[0])
        for score, box in found[: params.max_detections]:
            mask = mask_for_box(image, width, height, box, grow_thin=True)
            encoded = encode_sam2_mask(mask)
            out.append(
                {
                    "prompt": prompt,
                    "confidence": float(score),
                    "box_xyxy": [int(np.clip(v, 0, limit)) for v, limit in zip(box, (width, height) * 2)],
                    "mask_box_xyxy": list(encoded[0]) if encoded else None,
                    "mask": encoded[1] if encoded else None,
                }
            )
    return out
