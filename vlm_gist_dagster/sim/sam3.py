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
from ..protocol.vision_requests import (
    one_image_per_parameter_set,
    per_image_parameters,
    request_images,
    sam3_parameter_set,
)
from ._http import RejectedRequest, request_object
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
    images = request_images(request_object(payload), RejectedRequest)
    params = per_image_parameters(payload, images, RejectedRequest)
    parsed = [
        Sam3Parameters(tuple(prompts), min_confidence, mask_threshold, limit)
        for prompts, min_confidence, mask_threshold, limit in (
            sam3_parameter_set(i, p, RejectedRequest) for i, p in enumerate(params)
        )
    ]
    return one_image_per_parameter_set(images, parsed), parsed


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
