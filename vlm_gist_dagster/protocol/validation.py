"""Stage C — validation (optional): a VLM checks each detection's crop (docs/protocol/pipeline.md §5).

Per detection: a crop of the image (§5.2), one conversation with the VLM (§5.3), the answer matched to
an ``object_name`` or ``n/a`` (§5.4); per image: the keep / update / reject decision (§5.5). Labels
here are ``object_name`` values (docs/protocol/pipeline.md gotcha 1: detection works on descriptions, validation on names).

>>> r = parse_validation_response("object_name: chair 2", ["chair 1", "chair 2", "table"])
>>> r.validation
'chair 2'
>>> parse_validation_response("No.", ["chair 1", "table"]).validation   # "no" is 2 edits from "na"
'n/a'
>>> a = assign_actions(["chair 1", "n/a", None], ["chair 1", "table", "chair 2"], ["chair 1", "chair 2", "table"])
>>> a.keep, a.update, a.reject, a.error
((0,), {}, (1,), (2,))
>>> a.outcomes
('keep', 'reject', 'error')
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from vlm_gist_dagster.protocol.completions import (
    assistant_message,
    merge_user_messages,
    system_message,
    user_image_message,
    user_text_message,
)
from vlm_gist_dagster.protocol.detections import BoxXYXY
from vlm_gist_dagster.protocol.images import to_image_url
from vlm_gist_dagster.protocol.masks import decode_rle, paste_box_mask
from vlm_gist_dagster.protocol.settings import (
    DEFAULT_DESCRIPTION_PROMPT,
    DEFAULT_SYSTEM_PROMPT,
    DEFAULT_VALIDATION_PROMPT,
    ValidationSettings,
)
from vlm_gist_dagster.protocol.text import levenshtein_match

__all__ = [
    "Outcome",
    "ParsedValidation",
    "ValidationActions",
    "assign_actions",
    "background_image",
    "crop_box",
    "crop_file_name",
    "encode_crop_png",
    "name_groups",
    "object_name_for_description",
    "parse_validation_response",
    "pixel_box_from_relative",
    "strip_trailing_digits",
    "validation_crop",
    "validation_crop_with_settings",
    "validation_messages",
    "validation_messages_with_settings",
]


# --- §5.2 crops ---------------------------------------------------------------------------------------------


def background_image(
    image_bgr: np.ndarray, *, saturation: float = 1.0, brightness: float = 1.0
) -> np.ndarray:
    """The "background" that replaces pixels outside a detection's mask (docs/protocol/pipeline.md §5.2).

    OpenCV HSV round trip with the saturation channel × ``saturation`` (truncated to uint8), then every
    channel × ``brightness`` (rounded half to even). Even the shipped 1.0 / 1.0 are not an exact no-op:
    the BGR → HSV → BGR round trip moves some pixel values by a few levels, and the reference always
    does it. Factors that would overflow uint8 are clipped to 255 (the reference wraps around).
    """
    image = _bgr_uint8(image_bgr)
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    hsv[:, :, 1] = np.clip(np.trunc(saturation * hsv[:, :, 1].astype(np.float64)), 0, 255).astype(np.uint8)
    background = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    return np.clip(np.round(brightness * background.astype(np.float64)), 0, 255).astype(np.uint8)


def crop_box(
    box_xyxy: Sequence[int], image_width: int, image_height: int, *, bbox_scale: float = 1.0
) -> BoxXYXY:
    """The crop rectangle: the box scaled about its centre, clipped to the image, rounded (half to even).

    >>> crop_box((10, 10, 20, 30), 100, 100, bbox_scale=1.5)   # centre (15, 20), size 15 × 30
    (8, 5, 22, 35)
    """
    box = np.asarray(box_xyxy, dtype=np.float64)
    center = (box[:2] + box[2:]) / 2
    scaled = (box[2:] - box[:2]) * bbox_scale
    scaled_box = np.concatenate([center - scaled / 2, center + scaled / 2])
    clipped = np.clip(scaled_box, 0, [image_width, image_height, image_width, image_height])
    x1, y1, x2, y2 = (int(v) for v in np.round(clipped))
    return (x1, y1, x2, y2)


def _bgr_uint8(image_bgr: np.ndarray) -> np.ndarray:
    image = np.asarray(image_bgr)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an H×W×3 uint8 BGR image, got shape {image.shape} and dtype {image.dtype}"
        )
    return image


def _full_mask(
    mask: np.ndarray | Mapping[str, Any], box_xyxy: Sequence[int], height: int, width: int
) -> np.ndarray:
    if isinstance(mask, Mapping):
        mask = decode_rle(mask)
    arr = np.asarray(mask, dtype=bool)
    if arr.shape == (height, width):
        return arr
    # A mask cropped to its box is pasted at the box position first (docs/protocol/pipeline.md §5.2). The reference pastes
    # into uninitialised memory, so its pixels outside the box are arbitrary; they only show in the crop
    # when bbox_scale > 1. We paste into zeros (outside the box counts as background).
    x1, y1, x2, y2 = (int(v) for v in box_xyxy)
    if arr.shape != (y2 - y1, x2 - x1):
        raise ValueError(
            f"mask of shape {arr.shape} fits neither the image {(height, width)} nor the box {tuple(box_xyxy)}"
        )
    return paste_box_mask(arr, x1, y1, height, width)


def validation_crop(
    image_bgr: np.ndarray,
    box_xyxy: Sequence[int],
    *,
    mask: np.ndarray | Mapping[str, Any] | None = None,
    bbox_scale: float = 1.0,
    background_saturation: float = 1.0,
    background_brightness: float = 1.0,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """The BGR crop shown to the VLM for one detection (docs/protocol/pipeline.md §5.2).

    ``mask``: a full-image boolean mask, a mask cropped to ``box_xyxy``, a COCO RLE, or None. Pixels
    outside the mask come from :func:`background_image` (pass ``background`` to reuse it across the
    detections of an image). The crop is ``image[y1:y2, x1:x2]`` of :func:`crop_box`. Crops are never
    down-scaled (``max_crop_area`` cannot be set in the reference).
    """
    image = _bgr_uint8(image_bgr)
    height, width = image.shape[:2]
    shown = image
    if mask is not None:
        full = _full_mask(mask, box_xyxy, height, width)
        if background is None:
            background = background_image(
                image, saturation=background_saturation, brightness=background_brightness
            )
        shown = image.copy()
        shown[~full] = background[~full]
    x1, y1, x2, y2 = crop_box(box_xyxy, width, height, bbox_scale=bbox_scale)
    return shown[y1:y2, x1:x2]


def validation_crop_with_settings(
    image_bgr: np.ndarray,
    box_xyxy: Sequence[int],
    settings: ValidationSettings,
    *,
    mask: np.ndarray | Mapping[str, Any] | None = None,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`validation_crop` with ``bbox_scale`` and the background factors of the settings."""
    return validation_crop(
        image_bgr,
        box_xyxy,
        mask=mask,
        bbox_scale=settings.bbox_scale,
        background_saturation=settings.background_saturation,
        background_brightness=settings.background_brightness,
        background=background,
    )


def encode_crop_png(crop_bgr: np.ndarray) -> bytes:
    """PNG bytes of a crop as ``cv2.imwrite`` writes the reference's crop files (default parameters)."""
    if crop_bgr.size == 0:
        raise ValueError(
            f"empty crop of shape {crop_bgr.shape}: the box lies outside the image or has no area"
        )
    ok, png = cv2.imencode(".png", crop_bgr)
    if not ok:  # pragma: no cover
        raise RuntimeError("cv2 failed to encode the crop")
    return png.tobytes()


def crop_file_name(image_name: str, index: int) -> str:
    """The reference's crop file name ``<image name minus its last 4 characters>_crop_<j>.png``.

    It assumes a 3-letter extension: ``000000000139.jpg`` → ``000000000139_crop_0.png``, but
    ``a.jpeg`` → ``a._crop_0.png``.

    >>> crop_file_name("000000000139.jpg", 3)
    '000000000139_crop_3.png'
    """
    return f"{image_name[:-4]}_crop_{index}.png"


def pixel_box_from_relative(xywh: Sequence[float], image_width: int, image_height: int) -> BoxXYXY:
    """``fiftyone_validate``'s rebuild of an int box from FiftyOne's relative box (docs/protocol/pipeline.md §5.6).

    ``x1 = round(x·W)``, ``x2 = round(x1 + w·W)`` (Python rounding: half to even), same for y.

    >>> pixel_box_from_relative((0.1, 0.25, 0.5, 0.5), 10, 10)   # x1 = round(1.0), y1 = round(2.5) = 2
    (1, 2, 6, 7)
    """
    x, y, w, h = xywh
    x1 = int(round(x * image_width))
    y1 = int(round(y * image_height))
    return (x1, y1, int(round(x1 + w * image_width)), int(round(y1 + h * image_height)))


# --- §5.3 messages --------------------------------------------------------------------------------------------


def validation_messages(
    full_image_url: str,
    crop_image_url: str,
    structured_description: Sequence[Mapping[str, Any]],
    *,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    description_prompt: str = DEFAULT_DESCRIPTION_PROMPT,
    validation_prompt: str = DEFAULT_VALIDATION_PROMPT,
    invalid: str = "n/a",
    indent: int | None = 4,
    image_resolution_full: str = "high",
    image_resolution_crop: str = "high",
) -> list[dict[str, Any]]:
    """The chat messages of one validation request, as they go on the wire (docs/protocol/pipeline.md §5.3).

    system prompt; user [full image, description prompt]; assistant ``json.dumps(structured_description,
    indent=4)``; user [crop, validation prompt with ``{invalid}`` filled in]. Consecutive user messages
    are already merged, as nimbro_api merges them before sending (docs/protocol/pipeline.md gotcha 4). The response type is
    **text**. Image URLs may be ``data:image/jpeg;base64,…`` URIs, bare base64 or http(s) URLs; the
    caller removes ``detail`` for vLLM endpoints (docs/protocol/pipeline.md gotcha 5).

    >>> m = validation_messages("QUJD", "REVG", [{"object_name": "cup", "description": "a cup"}])
    >>> [message["role"] for message in m]
    ['system', 'user', 'assistant', 'user']
    >>> m[3]["content"][1]["text"].endswith("respond with 'n/a'.")
    True
    """
    return merge_user_messages(
        [
            system_message(system_prompt),
            user_image_message(to_image_url(full_image_url), image_resolution_full),
            user_text_message(description_prompt),
            assistant_message(json.dumps(list(structured_description), indent=indent)),
            user_image_message(to_image_url(crop_image_url), image_resolution_crop),
            user_text_message(validation_prompt.format(invalid=invalid)),
        ]
    )


def validation_messages_with_settings(
    full_image_url: str,
    crop_image_url: str,
    structured_description: Sequence[Mapping[str, Any]],
    settings: ValidationSettings,
) -> list[dict[str, Any]]:
    """:func:`validation_messages` with the prompts, ``invalid``, ``indent`` and image details of the settings."""
    return validation_messages(
        full_image_url,
        crop_image_url,
        structured_description,
        system_prompt=settings.system_prompt,
        description_prompt=settings.description_prompt,
        validation_prompt=settings.validation_prompt,
        invalid=settings.invalid,
        indent=settings.indent,
        image_resolution_full=settings.image_resolution_full,
        image_resolution_crop=settings.image_resolution_crop,
    )


# --- §5.4 parsing ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedValidation:
    """The matched answer (an object_name, the invalid token, or None) and the parsing report."""

    validation: str | None
    report: tuple[str, ...] = ()


def parse_validation_response(
    text: str | None,
    object_names: Sequence[str],
    *,
    identifier: str = "object_name",
    invalid: str = "n/a",
    levenshtein_threshold: int | float = 2,
    levenshtein_normalization: bool = True,
) -> ParsedValidation:
    """Match a validation answer to an object_name or ``invalid`` (docs/protocol/pipeline.md §5.4).

    1. A JSON object holding ``identifier`` is replaced by that value (a non-string value is cast with
       ``str()``; the reference would crash on it).
    2. Every occurrence of ``identifier`` is removed (``"object_name: chair 2"`` → ``": chair 2"``).
    3. :func:`~vlm_gist_dagster.protocol.text.levenshtein_match` against ``object_names + [invalid]``
       (threshold 2, normalised: lower case, only alphanumerics). No match → None.

    ``text`` None (a completion without text) gives None. The completion text is expected as the client
    returns it (``normalize_text_completion`` already applied).
    """
    report: list[str] = []
    if text is None:
        return ParsedValidation(None, ("Completion has no text.",))
    response = text
    try:
        decoded = json.loads(response)
    except (ValueError, TypeError):
        pass
    else:
        if isinstance(decoded, dict) and identifier in decoded:
            report.append("Response is JSON that contains the identifier.")
            value = decoded[identifier]
            response = value if isinstance(value, str) else str(value)
    replaced = response.replace(identifier, "")
    if replaced != response:
        report.append("Response contains the identifier.")
        response = replaced
    matched = levenshtein_match(
        response,
        [*object_names, invalid],
        threshold=levenshtein_threshold,
        normalization=levenshtein_normalization,
    )
    if matched is None:
        report.append("Failed to match response to target.")
    elif matched != response:
        report.append("Matched response to target.")
    return ParsedValidation(matched, tuple(report))


# --- §5.5 keep / update / reject ------------------------------------------------------------------------------


def strip_trailing_digits(name: str) -> str:
    """A name's group base: trailing digits removed, then trailing whitespace (``"chair 2"`` → ``"chair"``).

    >>> strip_trailing_digits("chair 12"), strip_trailing_digits("bottle"), strip_trailing_digits("a4")
    ('chair', 'bottle', 'a')
    """
    return re.sub(r"[0-9]+$", "", name).rstrip()


def name_groups(object_names: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Groups of names sharing a base (only bases with ≥ 2 names), and the name → base map (§5.5 step 0).

    >>> name_groups(["chair 1", "table", "chair 2"])
    ({'chair': ['chair 1', 'chair 2']}, {'chair 1': 'chair', 'chair 2': 'chair'})
    """
    groups: dict[str, list[str]] = {}
    for name in object_names:
        groups.setdefault(strip_trailing_digits(name), []).append(name)
    groups = {base: members for base, members in groups.items() if len(members) > 1}
    group_of = {name: base for base, members in groups.items() for name in members}
    return groups, group_of


#: The decision for one detection, as a field (the ``actions`` strings are the reference's prose).
Outcome = Literal["keep", "update", "reject", "error"]


@dataclass(frozen=True)
class ValidationActions:
    """The decision for one image: indices kept, updated (→ new name), rejected, errored, and a
    human-readable action per detection (the reference's ``action`` strings). Every detection index
    is in exactly one of the four."""

    keep: tuple[int, ...]
    update: dict[int, str]
    reject: tuple[int, ...]
    error: tuple[int, ...]
    actions: tuple[str, ...] = field(default=())

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        """Per detection, in index order: ``keep``, ``update``, ``reject`` or ``error``."""
        outcome: dict[int, Outcome] = {j: "keep" for j in self.keep}
        outcome.update({j: "update" for j in self.update})
        outcome.update({j: "reject" for j in self.reject})
        outcome.update({j: "error" for j in self.error})
        return tuple(outcome[j] for j in range(len(outcome)))

    def labels_validated(self, labels: Sequence[str]) -> list[str | None]:
        """Per detection: the original label if kept, the new one if updated, else None."""
        keep = set(self.keep)
        return [labels[j] if j in keep else self.update.get(j) for j in range(len(labels))]

    def surviving(self, labels: Sequence[str]) -> list[tuple[int, str]]:
        """``(index, final label)`` of the kept and updated detections, in original order (§5.5 step 6)."""
        return [(j, label) for j, label in enumerate(self.labels_validated(labels)) if label is not None]


def _descending(indices: list[int], confidences: Sequence[float] | None) -> list[int]:
    # The reference reverses an ascending np.argsort: equal confidences come out later-index first
    # (for small inputs; see select_detections). Without confidences the order is unchanged.
    if confidences is None or not indices:
        return indices
    order = np.argsort(np.asarray([confidences[i] for i in indices], dtype=np.float64), kind="stable")[::-1]
    return [indices[int(k)] for k in order]


@dataclass
class _Assignment:
    """The state of the reference's ``_assign_actions`` for one image while its steps run (see
    :func:`assign_actions`): the decisions so far, the names already given out, the handled indices."""

    responses: Sequence[str | None]
    labels: Sequence[str]
    object_names: Sequence[str]
    confidences: Sequence[float] | None
    invalid: str
    keep: list[int] = field(default_factory=list)
    update: dict[int, str] = field(default_factory=dict)
    reject: list[int] = field(default_factory=list)
    error: list[int] = field(default_factory=list)
    actions: dict[int, str] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)
    handled: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.n = len(self.responses)
        self.duplicate_counts = {r: c for r, c in Counter(self.responses).items() if c > 1}
        # Step 0: groups of names by stripped trailing digits.
        self.groups, self.group_of = name_groups(self.object_names)

    # Each decision: the detection's list, its action text and, for keep and update, the name given out.
    def _keep(self, j: int, name: str, action: str) -> None:
        self.keep.append(j)
        self.actions[j] = action
        self.used.append(name)

    def _update(self, j: int, name: str, action: str) -> None:
        self.update[j] = name
        self.actions[j] = action
        self.used.append(name)

    def _reject(self, j: int, action: str) -> None:
        self.reject.append(j)
        self.actions[j] = action

    def reject_errors_and_invalid(self) -> None:
        """Step 1: None → error; ``invalid`` → reject."""
        labels = self.labels
        for j, response in enumerate(self.responses):
            if response is None:
                self.error.append(j)
                self.actions[j] = f"Reject detection '{labels[j]}' after completion error."
                self.handled.append(j)
            elif response == self.invalid:
                self._reject(j, f"Reject invalidated detection '{labels[j]}'.")
                self.handled.append(j)

    def keep_unique_agreements(self) -> list[int]:
        """Step 2: keep a detection whose response is its own label when no other detection agrees on
        that name; return the duplicate agreements."""
        responses, labels = self.responses, self.labels
        duplicates: list[int] = []
        for j, response in enumerate(responses):
            if response != labels[j]:
                continue
            agreeing = sum(1 for k in range(self.n) if labels[k] == response and responses[k] == response)
            if agreeing == 1:
                self._keep(j, response, f"Accept unique validation of detection '{response}'.")
                self.handled.append(j)
            elif agreeing > 1:
                duplicates.append(j)
        return duplicates

    def resolve_duplicate_agreements(self, duplicates: list[int]) -> None:
        """Step 3, by descending confidence: keep if the name is unused; else a group member."""
        for j in _descending(duplicates, self.confidences):
            response = self.responses[j]
            assert response is not None
            if response not in self.used:
                self._keep(j, response, f"Accept best duplicate validation of detection '{response}'.")
            elif response in self.group_of:
                self._update_duplicate_to_group_member(j, response)
            else:
                self._reject(
                    j,
                    (
                        f"Reject duplicate validation of detection '{response}' that cannot be associated to a group."
                    ),
                )
            self.handled.append(j)

    def _update_duplicate_to_group_member(self, j: int, response: str) -> None:
        members = self.groups[self.group_of[response]]
        fresh = next((m for m in members if m not in self.used and m not in self.responses), None)
        if fresh is not None:
            self._update(
                j,
                fresh,
                (
                    f"Update duplicate validation of detection '{response}' to unassigned group member "
                    f"'{fresh}' not featured in all validation responses."
                ),
            )
            return
        spare = next((m for m in members if m not in self.used), None)
        if spare is not None:
            count = self.duplicate_counts[response]
            self._update(
                j,
                spare,
                (
                    f"Update duplicate validation of detection '{response}' to unassigned group member "
                    f"'{spare}' featured '{count}' time{'s' if count != 1 else ''} in all validation responses."
                ),
            )
        else:
            self._reject(
                j,
                (
                    f"Reject duplicate validation of detection '{response}' for which all group members "
                    "are already assigned."
                ),
            )

    def update_to_unused_corrections(self) -> list[int]:
        """Step 4, by descending confidence: update to the response if that name is unused; return the
        detections still left."""
        remaining = _descending([j for j in range(self.n) if j not in self.handled], self.confidences)
        for j in list(remaining):
            response = self.responses[j]
            assert response is not None
            if response not in self.used:
                best = "best" if response in self.duplicate_counts else ""
                self._update(
                    j, response, f"Update detection '{self.labels[j]}' to {best} correction '{response}'."
                )
                remaining.remove(j)
                self.handled.append(j)
        return remaining

    def resolve_used_corrections(self, remaining: list[int]) -> None:
        """Step 5: a response in a group keeps the label when it is an unused member of that group,
        else updates to the first unused member, else rejects; no group → reject."""
        labels = self.labels
        for j in remaining:
            response = self.responses[j]
            assert response is not None
            if response in self.group_of:
                base = self.group_of[response]
                members = self.groups[base]
                if labels[j] in members and labels[j] not in self.used:
                    self._keep(
                        j,
                        labels[j],
                        (
                            f"Accept detection label '{labels[j]}' which is an unassigned group member of group "
                            f"'{base}' for validation response '{response}'."
                        ),
                    )
                else:
                    spare = next((m for m in members if m not in self.used), None)
                    if spare is not None:
                        self._update(
                            j,
                            spare,
                            (
                                f"Update detection '{labels[j]}' with already used validation response '{response}' to "
                                f"unassigned group member '{spare}' not featured in all validation responses."
                            ),
                        )
                    else:
                        self._reject(
                            j,
                            (
                                f"Reject detection '{labels[j]}' with already used validation response '{response}' for "
                                f"which all group members of group '{base}' are already assigned."
                            ),
                        )
            else:
                self._reject(
                    j,
                    (
                        f"Reject detection '{labels[j]}' with already used validation response '{response}' that "
                        "cannot be associated to a group."
                    ),
                )
            self.handled.append(j)

    def result(self) -> ValidationActions:
        return ValidationActions(
            keep=tuple(self.keep),
            update=self.update,
            reject=tuple(self.reject),
            error=tuple(self.error),
            actions=tuple(self.actions[j] for j in range(self.n)),
        )


def assign_actions(
    responses: Sequence[str | None],
    labels: Sequence[str],
    object_names: Sequence[str],
    confidences: Sequence[float] | None = None,
    *,
    invalid: str = "n/a",
) -> ValidationActions:
    """The reference's ``_assign_actions`` (docs/protocol/pipeline.md §5.5), step by step.

    ``responses[j]``: the matched answer for detection ``j`` (an object name, ``invalid`` or None);
    ``labels[j]``: its current object_name; ``object_names``: all names of the structured description.

    0. Groups of names by stripped trailing digits; ``used`` names start empty.
    1. None → error; ``invalid`` → reject.
    2. Agreements (response == label): keep when exactly one detection agrees on that name, otherwise
       remember it as a duplicate agreement.
    3. Duplicates by descending confidence: keep if the name is unused; else, if the name is in a group,
       update to the first group member unused *and in no response*, else to the first unused member,
       else reject; names without a group are rejected.
    4. The remaining detections (response ≠ label) by descending confidence: update to the response if
       that name is unused.
    5. Still left: if the response is in a group, keep the label when it is an unused member of that
       group, else update to the first unused member, else reject; no group → reject.
    """
    n = len(responses)
    if len(labels) != n:
        raise ValueError(f"{n} responses but {len(labels)} labels")
    if confidences is not None and len(confidences) != n:
        raise ValueError(f"{n} responses but {len(confidences)} confidences")
    state = _Assignment(responses, labels, object_names, confidences, invalid)
    state.reject_errors_and_invalid()
    duplicates = state.keep_unique_agreements()
    state.resolve_duplicate_agreements(duplicates)
    remaining = state.update_to_unused_corrections()
    state.resolve_used_corrections(remaining)
    return state.result()


# --- §5.1 inputs -----------------------------------------------------------------------------------------------


def object_name_for_description(
    structured_description: Sequence[Mapping[str, Any]],
    description: str,
    *,
    rng: random.Random | None = None,
    name_key: str = "object_name",
    description_key: str = "description",
) -> str:
    """The validation label (an object_name) of a detection whose label is ``description`` (docs/protocol/pipeline.md §5.1).

    When several names share the description, ``fiftyone_validate`` picks one with
    ``random.randrange``; pass ``rng`` to do the same (it is called even for a single name, as in the
    reference, so the random stream stays aligned). Without ``rng`` the first name is taken.
    Raises LookupError when no element has that description.

    >>> sd = [{"object_name": "cup 1", "description": "a cup"}, {"object_name": "cup 2", "description": "a cup"}]
    >>> object_name_for_description(sd, "a cup")
    'cup 1'
    """
    names = [item[name_key] for item in structured_description if item.get(description_key) == description]
    if not names:
        raise LookupError(f"no structured-description element has {description_key} {description!r}")
    if rng is None:
        return names[0]
    return names[rng.randrange(len(names))]
