"""Chat completions as the paper's provider layer (ROS nimbro_api) sends and reads them — pure functions,
no network (docs/protocol/pipeline.md §1.3, §1.4, §2; gotchas 3–7, 21).

* **Messages:** :func:`system_message`, :func:`user_text_message`, :func:`user_image_message`,
  :func:`assistant_message`; :func:`merge_user_messages` joins consecutive user messages into one
  multi-part message, as nimbro_api does before sending.
* **Request:** :func:`build_payload` (per API flavour: token-limit key, penalties, reasoning field,
  ``response_format``, ``stream_options``, ``tool_choice``, ``detail`` removal) and :func:`build_headers`.
* **Response:** :func:`interpret_response` for a non-streaming body, :class:`StreamAccumulator` for SSE
  chunks; both give a :class:`Completion` or raise a :class:`CompletionError` with a machine-readable
  ``reason`` (``finish_reason:length``, ``empty_choices``, ``invalid_json``, ``empty_text``, …).
* **Post-processing:** :func:`postprocess` turns a completion into the value stage A parses — the
  parsed JSON in JSON mode (:func:`extract_json`: longest valid substring first), or the text, after
  ``normalize_text_completion`` and the completion parsers (``json_decoder.py``,
  ``reasoning_extractor.py``). Reasoning content is **not** searched for JSON (§1.4), and an empty text
  fails the attempt (docs/protocol/pipeline.md gotcha 21).

>>> extract_json('Sure! ```json\\n[{"object_name": "cup"}]\\n``` Hope this helps.')
[{'object_name': 'cup'}]
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .settings import CompletionParams
from .text import normalize_string

ResponseType = Literal["json", "text"]

#: Finish reasons that let an attempt continue (docs/protocol/pipeline.md §1.4, gotcha 6).
ALLOWED_FINISH_REASONS: frozenset[str | None] = frozenset({None, "stop", "tool_calls", "STOP", "end_turn"})

#: Headers nimbro_api sends with every request (besides the key).
REFERER = "https://github.com/AIS-Bonn/nimbro_api"
TITLE = "NimbRo-API"


# --------------------------------------------------------------------------------------------------
# Errors


class CompletionError(Exception):
    """A failed completion attempt.

    ``reason`` is machine-readable: ``finish_reason:<value>``, ``provider_error``, ``invalid_body``,
    ``empty_choices``, ``invalid_choice``, ``invalid_message``, ``invalid_sse_json``,
    ``stream_incomplete``, ``invalid_json``, ``empty_text``; the client adds ``timeout_first_chunk``,
    ``timeout_next_chunk``, ``timeout_completion``, ``http_status:<code>``, ``transport``.
    ``completion`` is the (partial) completion when there is one, so the raw output of a failed attempt
    can be kept (docs/protocol/pipeline.md §1.6).
    """

    def __init__(self, reason: str, message: str = "", completion: Completion | None = None):
        self.reason = reason
        self.message = message or reason
        self.completion = completion
        super().__init__(f"{reason}: {self.message}" if message else reason)


class InvalidResponse(CompletionError):
    """The provider's body does not have the shape of a chat completion."""


class BadFinishReason(CompletionError):
    """A finish reason outside :data:`ALLOWED_FINISH_REASONS` (e.g. ``length``, ``content_filter``)."""


class StreamIncomplete(CompletionError):
    """The SSE stream ended without ``data: [DONE]``."""


class InvalidJson(CompletionError):
    """JSON mode (or the ``json_decoder.py`` parser) found no valid JSON in the text."""


class EmptyText(CompletionError):
    """The completion has no text (e.g. every token went to reasoning) — docs/protocol/pipeline.md gotcha 21."""


class CompletionTimeout(CompletionError):
    """One of the three timeouts fired (raised by the client; reasons ``timeout_*``)."""


# --------------------------------------------------------------------------------------------------
# Messages


def system_message(text: str, role: Literal["system", "user"] = "system") -> dict[str, Any]:
    """The system prompt; with role ``user`` (InternVL/OVIS) it is a user text message that gets
    merged into the following user message (docs/protocol/pipeline.md gotcha 4)."""
    if role == "user":
        return user_text_message(text)
    if role != "system":
        raise ValueError(f"system prompt role must be 'system' or 'user', got {role!r}")
    return {"role": "system", "content": text.strip()}


def user_text_message(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text.strip()}]}


def image_part(url: str, detail: str = "high") -> dict[str, Any]:
    """``{"type": "image_url", "image_url": {"detail": ..., "url": ...}}`` (``url``: a data URI)."""
    return {"type": "image_url", "image_url": {"detail": detail, "url": url}}


def user_image_message(url: str, detail: str = "high") -> dict[str, Any]:
    return {"role": "user", "content": [image_part(url, detail)]}


def assistant_message(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text.strip()}


def merge_user_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive user messages become one, their content arrays concatenated (docs/protocol/pipeline.md §1.3)."""
    merged: list[dict[str, Any]] = []
    for original in messages:
        message = copy.deepcopy(dict(original))
        if merged and message["role"] == "user" and merged[-1]["role"] == "user":
            merged[-1]["content"] = list(merged[-1]["content"]) + list(message["content"])
        else:
            merged.append(message)
    return merged


# --------------------------------------------------------------------------------------------------
# Request


def _strip_detail(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = copy.deepcopy([dict(m) for m in messages])
    for message in out:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    part.get("image_url", {}).pop("detail", None)
    return out


def build_payload(
    params: CompletionParams,
    messages: Sequence[Mapping[str, Any]],
    response_type: ResponseType,
    flavor: str | None = None,
) -> dict[str, Any]:
    """The JSON body of one chat-completions request (docs/protocol/pipeline.md §1.3 table, gotcha 3).

    ``flavor`` defaults to the flavour of ``params.api_endpoint``. Consecutive user messages are merged
    here, so callers may pass them unmerged. A ``model_max_tokens`` of None sends no token limit.
    """
    flavor = flavor or params.api_flavor
    if flavor not in ("openai", "openrouter", "mistral", "vllm"):
        raise ValueError(f"unknown API flavour {flavor!r}")
    if response_type not in ("json", "text"):
        raise ValueError(f"response_type must be 'json' or 'text', got {response_type!r}")
    wire_messages = merge_user_messages(messages)
    if flavor == "vllm":
        wire_messages = _strip_detail(wire_messages)

    payload: dict[str, Any] = {
        "model": params.model_name,
        "messages": wire_messages,
        "temperature": params.model_temperature,
        "top_p": params.model_top_p,
        "stream": params.stream_completion,
        "n": 1,
        "tools": None,
    }
    if params.model_max_tokens is not None:
        payload["max_completion_tokens" if flavor == "openai" else "max_tokens"] = params.model_max_tokens
    if flavor != "mistral":
        payload["presence_penalty"] = params.model_presence_penalty
        payload["frequency_penalty"] = params.model_frequency_penalty
    effort = params.model_reasoning_effort
    if flavor == "openai" and params.reasoning_requested:
        payload["reasoning_effort"] = effort
    elif flavor == "openrouter" and params.reasoning_requested:
        payload["reasoning"] = {"effort": effort, "exclude": False}
    elif flavor == "vllm":
        payload["chat_template_kwargs"] = {"enable_thinking": params.reasoning_requested}
    payload["response_format"] = {"type": "json_object" if response_type == "json" else "text"}
    if flavor == "mistral":
        payload["tool_choice"] = "none"
    elif params.stream_completion:
        payload["stream_options"] = {"include_usage": True}
    return payload


def build_headers(api_key: str | None) -> dict[str, str]:
    """Request headers; the key is passed in by the client (read from the endpoint's env variable)."""
    headers = {"HTTP-Referer": REFERER, "X-Title": TITLE, "Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


# --------------------------------------------------------------------------------------------------
# Responses


@dataclass(frozen=True)
class TokenUsage:
    """Provider token counts. The paper records ``prompt_tokens`` as ``tokens_input_uncached`` and
    ``prompt_tokens_details.cached_tokens`` as ``tokens_input_cached`` (docs/protocol/pipeline.md §1.4)."""

    prompt_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None

    @classmethod
    def from_provider(cls, usage: Any) -> TokenUsage | None:
        if not isinstance(usage, Mapping):
            return None

        def count(mapping: Any, key: str) -> int | None:
            value = mapping.get(key) if isinstance(mapping, Mapping) else None
            return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        return cls(
            prompt_tokens=count(usage, "prompt_tokens"),
            cached_prompt_tokens=count(usage.get("prompt_tokens_details"), "cached_tokens"),
            completion_tokens=count(usage, "completion_tokens"),
            reasoning_tokens=count(usage.get("completion_tokens_details"), "reasoning_tokens"),
        )


@dataclass(frozen=True)
class Completion:
    """What a chat completion produced: the raw text as received, reasoning kept apart."""

    text: str
    reasoning: str | None = None
    finish_reason: str | None = None
    usage: TokenUsage | None = None
    model: str | None = None


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some providers answer with content parts
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return str(content)


def _reasoning_of(mapping: Mapping[str, Any]) -> str | None:
    # nimbro_api reads ``reasoning`` and ``reasoning_content``; providers that send both send the same
    # text, so the first non-empty one is taken rather than concatenating duplicates.
    for key in ("reasoning", "reasoning_content"):
        value = mapping.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _check_finish_reason(value: Any, partial: Completion | None) -> None:
    if value not in ALLOWED_FINISH_REASONS:
        raise BadFinishReason(f"finish_reason:{value}", f"finish reason {value!r} is not allowed", partial)


def interpret_response(body: Any) -> Completion:
    """A non-streaming chat-completions body (HTTP status already checked by the client)."""
    if not isinstance(body, Mapping):
        raise InvalidResponse("invalid_body", f"expected a JSON object, got {type(body).__name__}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        if body.get("error") is not None:
            raise InvalidResponse("provider_error", f"provider error: {json.dumps(body['error'])[:500]}")
        raise InvalidResponse("empty_choices", "response has no choices")
    choice = choices[0]
    if not isinstance(choice, Mapping):
        raise InvalidResponse("invalid_choice", "choices[0] is not an object")
    message = choice.get("message")
    usage = TokenUsage.from_provider(body.get("usage"))
    model = body.get("model") if isinstance(body.get("model"), str) else None
    partial = None
    if isinstance(message, Mapping):
        partial = Completion(
            _content_text(message.get("content")),
            _reasoning_of(message),
            choice.get("finish_reason"),
            usage,
            model,
        )
    for index, other in enumerate(choices):
        # The paper's client checks every choice and fails the attempt when one has no finish_reason key
        # (a null value is allowed; docs/protocol/pipeline.md §1.4).
        if not isinstance(other, Mapping):
            raise InvalidResponse("invalid_choice", f"choices[{index}] is not an object", partial)
        if "finish_reason" not in other:
            raise InvalidResponse("invalid_choice", f"choices[{index}] has no 'finish_reason'", partial)
    _check_finish_reason(choice.get("finish_reason"), partial)
    if not isinstance(message, Mapping):
        raise InvalidResponse("invalid_message", "choices[0].message is not an object")
    assert partial is not None
    return partial


@dataclass
class StreamAccumulator:
    """Feed it the SSE lines (or the parsed ``data:`` chunks) of a streamed completion, then call
    :meth:`result`. A disallowed finish reason raises at once (docs/protocol/pipeline.md §1.4)."""

    text_parts: list[str] = field(default_factory=list)
    reasoning_parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: TokenUsage | None = None
    model: str | None = None
    done: bool = False
    chunks: int = 0

    def partial(self) -> Completion:
        reasoning = "".join(self.reasoning_parts) or None
        return Completion("".join(self.text_parts), reasoning, self.finish_reason, self.usage, self.model)

    def feed_line(self, line: str) -> bool:
        """One SSE line; returns True once ``data: [DONE]`` arrived. Comment lines (``: OPENROUTER
        PROCESSING``), blank lines, other SSE fields and ``data:`` lines that are not JSON are ignored
        (the paper's reader logs a warning for the last and goes on, docs/protocol/pipeline.md §1.4); :attr:`chunks` counts
        the JSON chunks fed."""
        line = line.strip()
        if not line.startswith("data:"):
            return self.done
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            self.done = True
            return True
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            return self.done
        self.feed(chunk)
        return self.done

    def feed(self, chunk: Any) -> None:
        """One parsed ``data:`` chunk."""
        if not isinstance(chunk, Mapping):
            raise InvalidResponse("invalid_sse_json", "SSE chunk is not a JSON object", self.partial())
        self.chunks += 1
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if chunk.get("usage") is not None:
            self.usage = TokenUsage.from_provider(chunk["usage"]) or self.usage
        if "finish_reason" in chunk:
            _check_finish_reason(chunk["finish_reason"], self.partial())
        choices = chunk.get("choices")
        if not choices and chunk.get("error") is not None:
            message = f"provider error: {json.dumps(chunk['error'])[:500]}"
            raise InvalidResponse("provider_error", message, self.partial())
        if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                content = delta.get("content")
                if content:
                    self.text_parts.append(_content_text(content))
                reasoning = _reasoning_of(delta)
                if reasoning:
                    self.reasoning_parts.append(reasoning)
            reason = choice.get("finish_reason")
            if reason is not None:
                self.finish_reason = reason
            _check_finish_reason(reason, self.partial())

    def result(self) -> Completion:
        if not self.done:
            message = "the stream ended without data: [DONE]"
            raise StreamIncomplete("stream_incomplete", message, self.partial())
        return self.partial()


# --------------------------------------------------------------------------------------------------
# JSON extraction and post-processing

_DECODER = json.JSONDecoder()
_OPENERS = re.compile(r"[{\[]")
_CLOSERS = re.compile(r"[}\]]")


def extract_json(text: str) -> Any | None:
    """The longest substring from a ``{``/``[`` to a later ``}``/``]`` that parses as JSON; ties go to the
    earlier start. None when there is none (nimbro_utils ``extract_json``, docs/protocol/pipeline.md §1.4).

    The reference tries every (opening, closing) pair longest first, O(n²) candidates each parsed in
    O(n). Same result in O(n · openings) at worst: a JSON value starting at a given ``{``/``[`` has one
    fixed end, so at most one candidate per opening can parse, and ``raw_decode`` finds it directly. We
    visit openings left to right and stop once no later opening can beat the best length found.
    """
    closers = [m.start() for m in _CLOSERS.finditer(text)]
    if not closers:
        return None
    last_closer = closers[-1]
    best: tuple[int, Any] | None = None  # (length, value)
    for match in _OPENERS.finditer(text):
        start = match.start()
        if start > last_closer or (best is not None and last_closer - start + 1 <= best[0]):
            break
        try:
            value, end = _DECODER.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):
            continue
        length = end - start
        if best is None or length > best[0]:
            best = (length, value)
    return None if best is None else best[1]


def decode_json_text(text: str) -> Any:
    """JSON mode: ``json.loads`` of the text, else :func:`extract_json`; raises :class:`InvalidJson`."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        pass
    value = extract_json(text)
    if value is None:
        raise InvalidJson("invalid_json", "no valid JSON in the completion text")
    return value


_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def split_think_tags(text: str) -> tuple[str, str]:
    """``reasoning_extractor.py``: (reasoning inside the first ``<think>…</think>``, text outside all)."""
    match = _THINK.search(text)
    if not match:
        return "", text
    return match.group(1).strip(), _THINK.sub("", text).strip()


@dataclass(frozen=True)
class ParsedCompletion:
    """A completion after post-processing: ``value`` is what stage A parses (parsed JSON or text)."""

    completion: Completion
    value: Any
    logs: tuple[str, ...] = ()


def postprocess(
    completion: Completion, response_type: ResponseType, params: CompletionParams
) -> ParsedCompletion:
    """Turn a completion into the value a stage parses (docs/protocol/pipeline.md §1.4).

    * Empty text (after stripping) fails the attempt: ``empty_text`` (docs/protocol/pipeline.md gotcha 21).
    * ``json``: :func:`decode_json_text` (``invalid_json`` when nothing parses).
    * ``text``: ``normalize_text_completion`` (``normalize_string`` with default flags =
      transliteration + strip, docs/protocol/pipeline.md gotcha 22), then the completion parsers in order.
    * The reasoning is never searched for JSON.
    """
    logs: list[str] = []
    text = completion.text
    if not text.strip():
        raise EmptyText("empty_text", "the completion has no text", completion)
    if response_type == "json":
        try:
            value: Any = decode_json_text(text)
        except InvalidJson as exc:
            raise InvalidJson(exc.reason, exc.message, completion) from None
    else:
        value = normalize_string(text) if params.normalize_text_completion else text
    for parser in params.completion_parsers:
        if parser == "reasoning_extractor.py":
            if isinstance(value, str):
                reasoning, outside = split_think_tags(value)
                if reasoning:
                    joined = f"{completion.reasoning} {reasoning}" if completion.reasoning else reasoning
                    completion = replace(completion, reasoning=joined)
                    logs.append("moved <think> reasoning out of the text")
                    if not outside:
                        raise EmptyText("empty_text", "only <think> reasoning in the text", completion)
                    value = outside
        elif parser == "json_decoder.py":
            # The parser fails the completion when no JSON is found, or when what it found is falsy
            # ([] or {}), since it tests the decoded value's truthiness.
            if not isinstance(value, str):
                raise InvalidJson("invalid_json", "json_decoder.py needs a text completion", completion)
            decoded = extract_json(value)
            if not decoded:
                raise InvalidJson("invalid_json", "json_decoder.py found no JSON in the text", completion)
            value = decoded
            logs.append("decoded text completion as JSON")
        else:  # guarded by the settings model, kept for direct callers
            raise ValueError(f"unknown completion parser {parser!r}")
    return ParsedCompletion(completion, value, tuple(logs))
