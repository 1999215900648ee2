"""Stage A — the structured description (docs/protocol/pipeline.md §1), as pure functions.

* :func:`build_request` — the chat messages and request payload of one attempt (§1.3).
* :func:`parse` / :func:`parse_with_report` — the raw completion text → the validated object list,
  or :class:`InvalidDescription` with a machine-readable reason (§1.4 post-processing + §1.5).
* :func:`process_structured_description` — §1.5 on an already-decoded value (the paper's
  ``_process_structured_description``).
* :class:`DescriptionAttempts` — the retry bookkeeping of §1.6 (``retry: 3`` = 4 attempts; "Time" is
  the successful attempt's duration only; "Ret." = the number of failed attempts).
* Task relevancy (§1.7): the direct variant is part of the prompt and of parsing. The pipeline runs
  neither the decoupled variant nor the scene description: :func:`require_supported` refuses settings
  that enable them. :func:`build_scene_request` builds the scene-description request (for simulators
  and clients that send one).

>>> from vlm_gist_dagster.protocol.settings import DescriptionSettings
>>> parse('[{"object_name": "Chair", "description": "A red, wooden chair."}]', DescriptionSettings())
[{'object_name': 'Chair', 'description': 'A red, wooden chair.'}]
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .completions import (
    Completion,
    CompletionError,
    ResponseType,
    TokenUsage,
    build_payload,
    merge_user_messages,
    postprocess,
    system_message,
    user_image_message,
    user_text_message,
)
from .endpoints import Endpoint
from .grounding import parse_box_2d
from .images import PreparedImage
from .settings import DescriptionSettings, DictItem
from .text import levenshtein_match, normalize_string

__all__ = [
    "Attempt",
    "DescriptionAttempts",
    "DescriptionRequest",
    "DescriptionResult",
    "InvalidDescription",
    "UnsupportedSettings",
    "build_request",
    "build_scene_request",
    "evaluate_completion",
    "parse",
    "parse_with_report",
    "process_structured_description",
    "rename_duplicates",
    "require_supported",
    "structured_description_prompt",
]


class InvalidDescription(Exception):
    """An attempt whose output is not a usable structured description.

    ``reason``: ``empty_text``, ``invalid_json``, ``not_list_or_dict``, ``empty_dict``,
    ``uninterpretable_dict``, ``zero_valid_objects`` (or ``invalid_task_relevancy`` for the decoupled
    step). ``report`` holds the warnings gathered before the failure.
    """

    def __init__(self, reason: str, message: str, report: Sequence[str] = ()):
        self.reason = reason
        self.message = message
        self.report = tuple(report)
        super().__init__(f"{reason}: {message}")


class UnsupportedSettings(NotImplementedError):
    """Settings that enable a paper feature the caller does not run (instead of silently ignoring it)."""


@dataclass(frozen=True)
class DescriptionResult:
    """The validated objects (dicts with exactly the item keys) and the warnings of §1.5."""

    objects: list[dict[str, Any]]
    report: list[str] = field(default_factory=list)
    #: The decoded value before validation (the paper's ``structured_description_raw``).
    raw: Any = None


# --------------------------------------------------------------------------------------------------
# Request (docs/protocol/pipeline.md §1.3)


def structured_description_prompt(settings: DescriptionSettings) -> str:
    """``dict_prompt``, plus the direct task-relevancy prompt with ``{task}`` filled when active (§1.7)."""
    if settings.dict_prompt is None:
        raise UnsupportedSettings("dict_prompt is null: the paper then stops after the scene description")
    if settings.direct_task_relevancy:
        return settings.dict_prompt + settings.direct_task_relevancy_prompt.format(task=settings.task)
    return settings.dict_prompt


@dataclass(frozen=True)
class DescriptionRequest:
    """One attempt's request: where to send it, the body, and what response type to expect."""

    endpoint: Endpoint
    payload: dict[str, Any]
    response_type: ResponseType

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.payload["messages"]


def _image_url(image: PreparedImage | str) -> str:
    return image.data_uri if isinstance(image, PreparedImage) else image


def build_request(
    image: PreparedImage | str, settings: DescriptionSettings, *, flavor: str | None = None
) -> DescriptionRequest:
    """Messages and payload of one structured-description attempt: reset context, system prompt (with
    its role), a user message holding the image, a user message holding the prompt — the two (or, with
    system role ``user``, three) user messages merged into one (§1.3, docs/protocol/pipeline.md gotcha 4).

    ``image`` is a :class:`PreparedImage` or an image URL / data URI.
    """
    params = settings.vlm_structured_description
    messages = [
        system_message(
            settings.system_prompt_structured_description, settings.system_prompt_structured_description_role
        ),
        user_image_message(_image_url(image), settings.image_resolution_structured_description),
        user_text_message(structured_description_prompt(settings)),
    ]
    response_type: ResponseType = "json" if settings.use_json_mode else "text"
    payload = build_payload(params, merge_user_messages(messages), response_type, flavor)
    return DescriptionRequest(params.endpoint, payload, response_type)


def build_scene_request(
    image: PreparedImage | str, settings: DescriptionSettings, *, flavor: str | None = None
) -> DescriptionRequest:
    """The scene-description request (§1.7): its own context, system prompt, image, ``scene_prompt``;
    response type text. Its answer is stored, never fed into the structured-description request."""
    if settings.scene_prompt is None:
        raise ValueError("scene_prompt is null: there is no scene description")
    params = settings.vlm_scene_description
    messages = [
        system_message(
            settings.system_prompt_scene_description, settings.system_prompt_scene_description_role
        ),
        user_image_message(_image_url(image), settings.image_resolution_scene_description),
        user_text_message(settings.scene_prompt),
    ]
    return DescriptionRequest(params.endpoint, build_payload(params, messages, "text", flavor), "text")


def require_supported(settings: DescriptionSettings) -> None:
    """Raise :class:`UnsupportedSettings` when the settings enable a sub-step the pipeline does not run
    (the scene description, the decoupled task relevancy). All shipped settings pass."""
    if settings.scene_prompt is not None:
        raise UnsupportedSettings(
            "scene_prompt is set: the scene-description step (docs/protocol/pipeline.md §1.7) is not run by this pipeline; set "
            "scene_prompt to null"
        )
    if settings.dict_prompt is None:
        raise UnsupportedSettings("dict_prompt is null (scene description only) is not supported")
    if settings.decoupled_task_relevancy_active:
        raise UnsupportedSettings(
            "task is set with decoupled_task_relevancy true: the decoupled task-relevancy step (docs/protocol/pipeline.md §1.7) "
            "is not run by this pipeline; set decoupled_task_relevancy to false (direct) or task to null"
        )


# --------------------------------------------------------------------------------------------------
# Parsing and validation (docs/protocol/pipeline.md §1.5)


def _normalize_value(value: str, settings: DescriptionSettings) -> str:
    flags = settings.dict_value_normalization
    return normalize_string(
        value,
        remove_underscores=flags.remove_underscores,
        remove_punctuation=flags.remove_punctuation,
        remove_common_specials=flags.remove_common_specials,
        reduce_whitespaces=True,
        remove_whitespaces=flags.remove_whitespaces,
        lowercase=flags.lowercase,
    )


_TYPES: dict[str, type] = {"str": str, "bool": bool, "int": int, "float": float}


def _object_list(value: Any, report: list[str]) -> list[Any]:
    """Step 1: the top-level shape."""
    if isinstance(value, list):
        return value
    if not isinstance(value, dict):
        raise InvalidDescription(
            "not_list_or_dict", f"the response is a {type(value).__name__}, not a list or a dict", report
        )
    keys = list(value)
    if not keys:
        raise InvalidDescription("empty_dict", "the response is a dict without keys", report)
    if len(keys) > 1:
        report.append(f"Response is a dict with {len(keys)} keys {keys}; using the first, {keys[0]!r}.")
    inner = value[keys[0]]
    if isinstance(inner, list):
        return inner
    if isinstance(inner, dict):
        report.append("Interpreting the dict under the first key as a single list element.")
        return [inner]
    raise InvalidDescription(
        "uninterpretable_dict",
        f"the value under {keys[0]!r} is a {type(inner).__name__}, not a list or dict",
        report,
    )


def _match(word: str, labels: Sequence[str], settings: DescriptionSettings) -> str | None:
    return levenshtein_match(
        word, list(labels), settings.levenshtein_threshold, normalization=settings.levenshtein_normalization
    )


def _match_valid(
    value: str,
    item: DictItem,
    valid: Sequence[str],
    where: str,
    settings: DescriptionSettings,
    report: list[str],
) -> str | None:
    """The entry of ``valid`` that ``value`` matches, reported when it is not ``value`` itself; None
    (reported: not valid) when none matches."""
    matched = _match(value, valid, settings)
    if matched is None:
        report.append(f"{where} key '{item.key}' value {value!r} is not valid.")
        return None
    if matched != value:
        report.append(f"{where} key '{item.key}' value {value!r} matched to valid value {matched!r}.")
    return matched


def _validate_item(
    item: DictItem, value: Any, where: str, settings: DescriptionSettings, report: list[str]
) -> tuple[bool, Any]:
    """(keep, stored value) for one matched key of one object — the paper's branch order."""
    if item.type == "box_2d":  # ours (VLM-box grounding modes): four numbers in 0-1000, stored as floats
        try:
            return True, list(parse_box_2d(value))
        except ValueError as exc:
            report.append(f"{where} key '{item.key}': {exc}.")
            return False, None
    target = _TYPES[item.type]
    # isinstance, as in the paper: a JSON bool passes an 'int' item, an int does not pass a 'float' one.
    if not isinstance(value, target):
        report.append(f"{where} key '{item.key}' is a {type(value).__name__}, not a {item.type}.")
        return False, None
    if isinstance(value, str):  # target is str (a str value passes only a 'str' item)
        if item.invalid is not None:
            if _match(value, item.invalid, settings) is not None:
                report.append(f"{where} key '{item.key}' value {value!r} is invalid.")
                return False, None
            if item.valid is None:
                normalized = _normalize_value(value, settings)
                if _match(normalized, item.invalid, settings) is not None:
                    report.append(f"{where} key '{item.key}' value {value!r} is invalid after normalisation.")
                    return False, None
                return True, normalized
            matched = _match_valid(value, item, item.valid, where, settings, report)
            if matched is None:
                return False, None
            return True, matched  # the paper stores the valid entry itself here (not normalised)
        if item.valid is not None and _match_valid(value, item, item.valid, where, settings, report) is None:
            return False, None
        return True, _normalize_value(value, settings)
    if item.invalid is not None and value in item.invalid:
        report.append(f"{where} key '{item.key}' value {value!r} is invalid.")
        return False, None
    if item.valid is not None and value not in item.valid:
        report.append(f"{where} key '{item.key}' value {value!r} is not valid.")
        return False, None
    return True, value


def _process_object(
    obj: dict[str, Any],
    where: str,
    items: Sequence[DictItem],
    settings: DescriptionSettings,
    report: list[str],
) -> dict[str, Any] | None:
    obj = dict(obj)  # the paper casts values in place; later items see the cast value
    processed: dict[str, Any] = {}
    requirements: dict[str, str | None] = {}
    for item in items:
        matched_key = _match(item.key, list(obj), settings)
        if matched_key is None:
            kind = "required" if item.required else "optional"
            report.append(f"{where} has no {kind} key '{item.key}'.")
            continue
        if matched_key != item.key:
            report.append(f"{where} key '{matched_key}' matched to '{item.key}'.")
        if item.type == "str" and not isinstance(obj[matched_key], str):
            report.append(f"{where} key '{item.key}' is a {type(obj[matched_key]).__name__}, cast to str.")
            obj[matched_key] = str(obj[matched_key])
        keep, value = _validate_item(item, obj[matched_key], where, settings, report)
        if keep:
            processed[item.key] = value
            requirements[item.key] = item.requires

    # The paper checks required keys *before* resolving 'requires' (docs/protocol/pipeline.md §1.5 lists them the other way).
    missing = [item.key for item in items if item.required and item.key not in processed]
    if missing:
        report.append(f"{where} misses required key(s) {missing}; dropped.")
        return None

    deleted: list[str] = []
    changed = True
    while changed:  # repeat until a full pass deletes nothing
        changed = False
        for key in processed:
            requirement = requirements[key]
            if key in deleted or requirement is None:
                continue
            if requirement in deleted or requirement not in processed:
                report.append(f"{where} key '{key}' requires '{requirement}', which is missing.")
                deleted.append(key)
                changed = True
                break
    for key in deleted:
        del processed[key]
    if not processed:
        report.append(f"{where} has no valid key left; dropped.")
        return None
    return processed


def rename_duplicates(names: Sequence[Any]) -> list[Any]:
    """Exact duplicates get `` 1``, `` 2``, … in order of appearance; unique names stay (§1.5 step 4).

    >>> rename_duplicates(["chair", "chair", "table"])
    ['chair 1', 'chair 2', 'table']
    """
    counts = collections.Counter(names)
    seen: dict[Any, int] = {}
    out: list[Any] = []
    for name in names:
        if counts[name] > 1:
            seen[name] = seen.get(name, 0) + 1
            out.append(f"{name} {seen[name]}")
        else:
            out.append(name)
    return out


def process_structured_description(value: Any, settings: DescriptionSettings) -> DescriptionResult:
    """Validate a decoded response (list or dict) into the object list (docs/protocol/pipeline.md §1.5)."""
    report: list[str] = []
    objects_raw = _object_list(value, report)
    items = settings.active_dict_items()
    objects: list[dict[str, Any]] = []
    for j, obj in enumerate(objects_raw):
        where = f"Object {j + 1}/{len(objects_raw)}"
        if not isinstance(obj, dict):
            report.append(f"{where} is a {type(obj).__name__}, not a dict; dropped.")
            continue
        processed = _process_object(obj, where, items, settings, report)
        if processed is not None:
            objects.append(processed)
    if not objects:
        raise InvalidDescription("zero_valid_objects", "Found zero valid object dictionaries.", report)
    name_key = settings.name_key
    for obj, name in zip(objects, rename_duplicates([obj[name_key] for obj in objects]), strict=True):
        obj[name_key] = name
    return DescriptionResult(objects, report, value)


def evaluate_completion(completion: Completion, settings: DescriptionSettings) -> DescriptionResult:
    """A received completion → validated objects: §1.4 post-processing (JSON extraction, parsers, empty
    text) then §1.5. Raises :class:`InvalidDescription` (post-processing failures keep their reason,
    ``invalid_json`` / ``empty_text``)."""
    response_type: ResponseType = "json" if settings.use_json_mode else "text"
    try:
        parsed = postprocess(completion, response_type, settings.vlm_structured_description)
    except CompletionError as exc:
        raise InvalidDescription(exc.reason, exc.message) from None
    result = process_structured_description(parsed.value, settings)
    if parsed.logs:
        return DescriptionResult(result.objects, list(parsed.logs) + result.report, result.raw)
    return result


def parse_with_report(completion_text: str, settings: DescriptionSettings) -> DescriptionResult:
    """The raw completion text as received → objects and warnings (or :class:`InvalidDescription`)."""
    return evaluate_completion(Completion(text=completion_text), settings)


def parse(completion_text: str, settings: DescriptionSettings) -> list[dict[str, Any]]:
    """The raw completion text as received → the validated object list, or :class:`InvalidDescription`."""
    return parse_with_report(completion_text, settings).objects


# --------------------------------------------------------------------------------------------------
# Attempt bookkeeping (docs/protocol/pipeline.md §1.6)


@dataclass(frozen=True)
class Attempt:
    """One attempt: what came back and how it ended (``error`` None = success)."""

    duration_s: float
    raw_text: str | None = None
    reasoning: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    error_message: str | None = None
    usage: TokenUsage | None = None
    report: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_completion(
        cls,
        completion: Completion | None,
        duration_s: float,
        *,
        error: str | None = None,
        error_message: str | None = None,
        report: Sequence[str] = (),
    ) -> Attempt:
        if completion is None:
            return cls(duration_s, error=error, error_message=error_message, report=tuple(report))
        return cls(
            duration_s,
            raw_text=completion.text,
            reasoning=completion.reasoning,
            finish_reason=completion.finish_reason,
            error=error,
            error_message=error_message,
            usage=completion.usage,
            report=tuple(report),
        )


@dataclass
class DescriptionAttempts:
    """The per-image retry loop of §1.6 as a small state object.

    ``max_attempts = 1 + retry`` (``retry: 3`` → 4, docs/protocol/pipeline.md gotcha 2); ``retry: -1`` is unlimited in the paper
    and capped by ``DescriptionSettings.unlimited_retry_cap`` here. Sub-steps share the counter.

    >>> from vlm_gist_dagster.protocol.settings import DescriptionSettings
    >>> book = DescriptionAttempts.for_settings(DescriptionSettings())
    >>> book.record(Attempt(2.0, error="finish_reason:length")); book.record(Attempt(3.5))
    >>> (book.success, book.failed_attempts, book.duration_s, book.can_retry)
    (True, 1, 3.5, False)
    """

    max_attempts: int
    attempts: list[Attempt] = field(default_factory=list)

    @classmethod
    def for_settings(cls, settings: DescriptionSettings) -> DescriptionAttempts:
        return cls(settings.max_attempts)

    def record(self, attempt: Attempt) -> None:
        if self.finished:
            raise RuntimeError("no attempt left to record: the image succeeded or ran out of attempts")
        self.attempts.append(attempt)

    @property
    def success(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].ok

    @property
    def finished(self) -> bool:
        return self.success or len(self.attempts) >= self.max_attempts

    @property
    def can_retry(self) -> bool:
        """True while another attempt should be made."""
        return not self.finished

    @property
    def failed_attempts_total(self) -> int:
        """Every failed attempt, the last one of a failed image included (0 … max_attempts)."""
        return sum(not a.ok for a in self.attempts)

    @property
    def failed_attempts(self) -> int:
        """The README "Ret." count for this image: the paper's ``failed_structured_description_completions``
        gets an entry only when a failure is followed by a retry (the final failure goes to the error
        branch instead), so it is 0–3 with ``retry: 3`` and 3 for an image that failed completely
        (docs/protocol/evaluation.md §2.10)."""
        return min(self.failed_attempts_total, self.max_attempts - 1)

    @property
    def duration_s(self) -> float | None:
        """The README "Time": the duration of the successful attempt only (the paper overwrites the
        start stamp at every attempt); None when the image failed."""
        return self.attempts[-1].duration_s if self.success else None

    @property
    def last_error(self) -> str | None:
        return None if self.success or not self.attempts else self.attempts[-1].error

    def _sum(self, name: str) -> int | None:
        values = [getattr(a.usage, name) for a in self.attempts if a.usage is not None]
        values = [v for v in values if v is not None]
        return sum(values) if values else None

    @property
    def prompt_tokens(self) -> int | None:
        """Input tokens over **all** attempts (the paper attributes every attempt's usage to the image)."""
        return self._sum("prompt_tokens")

    @property
    def cached_prompt_tokens(self) -> int | None:
        return self._sum("cached_prompt_tokens")

    @property
    def completion_tokens(self) -> int | None:
        """Output tokens over all attempts."""
        return self._sum("completion_tokens")
