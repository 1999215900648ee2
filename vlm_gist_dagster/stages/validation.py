"""Stage C, the optional VLM validation of each detection's crop (docs/protocol/pipeline.md §5), for one pair.

Off by default, as in the paper's published runs: then every detection passes through unchanged with
``validation_action = "off"``. On (``"validation": true`` in a model file's header), each crop is shown
to the validation VLM of ``settings/validation/validation.json`` and the paper's keep / update / reject
algorithm decides; rejected and errored detections stay in the table with ``kept = False``, an errored
one with the reason in ``validation_error``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pandas as pd

from ..clients.chat import CacheTag, ChatClient
from ..protocol.completions import CompletionError, build_payload, postprocess
from ..protocol.images import data_uri, prepare_image
from ..protocol.settings import ValidationSettings
from ..protocol.validation import (
    assign_actions,
    encode_crop_png,
    parse_validation_response,
    validation_crop_with_settings,
    validation_messages_with_settings,
)
from .grounding import _run_images
from .services import Services
from .tables import VALIDATIONS

#: The columns this stage adds to ``masks`` (dtypes and meaning: ``stages.tables.VALIDATIONS``).
VALIDATION_COLUMNS = VALIDATIONS.names[-6:]

#: Attempts per crop. The paper re-queues a failed validation completion without limit (§5.3); we stop
#: after this many and record the detection as an error (dropped, like the paper's errors).
MAX_VALIDATION_ATTEMPTS = 4


def passthrough(masks: pd.DataFrame) -> pd.DataFrame:
    out = masks.copy()
    out["validation_outcome"] = "off"
    out["validation_action"] = "off"
    out["validated_object_name"] = out["object_name"]
    out["validation_answer"] = None
    out["validation_error"] = None
    out["kept"] = True
    return VALIDATIONS.conform(out)


async def _ask(
    chat: ChatClient,
    settings: ValidationSettings,
    messages: list[dict],
    image_sha256: str,
    detection_index: int,
) -> tuple[str | None, str | None]:
    """``(answer text, None)``, or ``(None, why the last attempt failed)`` after every attempt failed."""
    params = settings.vlm
    payload = build_payload(params, messages, "text")
    reason = None
    for attempt in range(MAX_VALIDATION_ATTEMPTS):
        tag = CacheTag.crop(image_sha256, detection_index, attempt)
        outcome = await chat.attempt(params, payload, cache_tag=tag)
        if outcome.error is None and outcome.completion is not None:
            try:
                return str(postprocess(outcome.completion, "text", params).value), None
            except CompletionError as exc:
                reason = f"{exc}"
                continue
        reason = outcome.error.reason if outcome.error is not None else "no completion"
    return None, f"no answer after {MAX_VALIDATION_ATTEMPTS} attempts: {reason}"


@dataclass(frozen=True)
class _ImageValidation:
    """One image's validation, per detection in ``detection_index`` order."""

    answers: list[str | None]
    validated: list[str | None]
    outcomes: list[str]
    actions: list[str]
    errors: list[str | None]


async def _validate_image(
    chat: ChatClient,
    settings: ValidationSettings,
    path: str,
    group: pd.DataFrame,
    structured_description: list[dict],
) -> _ImageValidation:
    """Ask the validation VLM about every detection's crop of one image (docs/protocol/pipeline.md §5.2-5.4), then decide
    keep / update / reject for the image as a whole (§5.5)."""
    full = prepare_image(path, None)
    image = cv2.imdecode(np.frombuffer(full.data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: the prepared image cannot be decoded")
    names = [o["object_name"] for o in structured_description]

    async def one(row: dict) -> tuple[str | None, str | None]:
        box = (row["box_x1"], row["box_y1"], row["box_x2"], row["box_y2"])
        crop = encode_crop_png(validation_crop_with_settings(image, box, settings, mask=row["mask"]))
        messages = validation_messages_with_settings(
            full.data_uri, data_uri(crop), structured_description, settings
        )
        return await _ask(chat, settings, messages, full.sha256, int(row["detection_index"]))

    asked = await asyncio.gather(*(one(r) for r in group.to_dict("records")))
    answers = [
        parse_validation_response(
            text, names, invalid=settings.invalid, levenshtein_threshold=settings.levenshtein_threshold
        ).validation
        for text, _ in asked
    ]
    labels = list(group["object_name"])
    actions = assign_actions(answers, labels, names, list(group["confidence"]), invalid=settings.invalid)
    return _ImageValidation(
        answers=answers,
        validated=actions.labels_validated(labels),
        outcomes=list(actions.outcomes),
        actions=list(actions.actions),
        errors=[error for _, error in asked],
    )


def _validated_rows(group: pd.DataFrame, result: _ImageValidation | BaseException) -> pd.DataFrame:
    """One image's ``masks`` rows with the validation columns; an image that failed as a whole drops
    every detection, with the reason."""
    group = group.copy()
    if isinstance(result, BaseException):
        reason = f"{type(result).__name__}: {result}"
        group["validation_outcome"] = "error"
        group["validation_action"] = f"error: {reason}"
        group["validated_object_name"] = None
        group["validation_answer"] = None
        group["validation_error"] = reason
        group["kept"] = False
    else:
        group["validation_outcome"] = result.outcomes
        group["validation_action"] = result.actions
        group["validated_object_name"] = result.validated
        group["validation_answer"] = result.answers
        group["validation_error"] = result.errors
        group["kept"] = [v is not None for v in result.validated]
    return group


def run_validations(
    images: pd.DataFrame,
    descriptions: pd.DataFrame,
    masks: pd.DataFrame,
    settings: ValidationSettings | None,
    services: Services,
    *,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """``masks`` plus the validation columns. ``settings`` None: validation off (pass-through)."""
    if settings is None or masks.empty:
        return passthrough(masks)
    paths = dict(zip(images["image_id"], images["path"]))
    objects = {
        i: list(o)
        for i, o, ok in zip(descriptions["image_id"], descriptions["objects"], descriptions["success"])
        if ok and o is not None
    }
    groups = {k: g.sort_values("detection_index") for k, g in masks.groupby("image_id", sort=False)}

    async def main() -> dict[str, Any]:
        async with services.chat_client() as chat:

            async def work(image_id: str) -> _ImageValidation:
                return await _validate_image(
                    chat, settings, paths[image_id], groups[image_id], objects.get(image_id, [])
                )

            return await _run_images(list(groups), work, "validations", log)

    results = asyncio.run(main())
    frames = [_validated_rows(group, results[image_id]) for image_id, group in groups.items()]
    return VALIDATIONS.conform(pd.concat(frames, ignore_index=True)) if frames else passthrough(masks)
