"""Exchange records: the raw, cacheable result of one chat attempt, and how it is read back.

A chat attempt produces a record (a JSON-able dict) whether it succeeded or not; the client interprets
it with :func:`outcome_from_record`, the same code for a live exchange and a cached replay, so a
replay yields exactly the live outcome. Kinds:

=================  ==================================================================================
``kind``           fields
=================  ==================================================================================
``json``           ``status`` 200, ``body_text``: a non-streaming body as received
``http_status``    ``status``, ``body_text`` (redacted, cut): a non-200 status the model is blamed for
``timeout``        ``reason`` (``timeout_completion``), ``timeout_s``: a non-streaming attempt that timed out
``transport``      ``message``: the connection broke after the response started (not retryable)
``sse``            ``lines`` (every non-empty line received), ``ended``: ``eof``, ``done`` (``[DONE]``),
                   ``error`` (the accumulator failed the stream at once), ``transport`` (+ ``message``)
                   or a timeout reason (+ ``timeout_s``)
=================  ==================================================================================

Every record also has ``duration_s`` (the HTTP exchange) and, once sent, ``http_retries``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..protocol.completions import (
    Completion,
    CompletionError,
    CompletionTimeout,
    InvalidResponse,
    StreamAccumulator,
    interpret_response,
)
from ..protocol.settings import CompletionParams
from .errors import redact

__all__ = ["TIMEOUT_REASONS", "outcome_from_record", "replayable", "timeout_error"]

TIMEOUT_REASONS = ("timeout_first_chunk", "timeout_next_chunk", "timeout_completion")
_TIMEOUT_TEXT = {
    "timeout_first_chunk": "no chunk arrived within timeout_chunk_first",
    "timeout_next_chunk": "the gap between two chunks exceeded timeout_chunk_next",
    "timeout_completion": "the completion exceeded timeout_completion",
}


def timeout_error(reason: str, seconds: float | None, partial: Completion | None) -> CompletionTimeout:
    what = _TIMEOUT_TEXT[reason]
    return CompletionTimeout(reason, f"{what} ({seconds:g} s)" if seconds is not None else what, partial)


def _from_json(record: Mapping[str, Any]) -> tuple[Completion | None, CompletionError | None]:
    try:
        body = json.loads(record["body_text"])
    except json.JSONDecodeError:
        return None, InvalidResponse(
            "invalid_body", f"response body is not JSON: {record['body_text'][:200]!r}"
        )
    try:
        return interpret_response(body), None
    except CompletionError as exc:
        return exc.completion, exc


def _from_sse(record: Mapping[str, Any]) -> tuple[Completion | None, CompletionError | None]:
    accumulator = StreamAccumulator()
    try:
        for line in record["lines"]:
            if accumulator.feed_line(line):
                break
    except CompletionError as exc:
        return exc.completion, exc
    ended = record.get("ended")
    if ended in TIMEOUT_REASONS:
        partial = accumulator.partial()
        return partial, timeout_error(ended, record.get("timeout_s"), partial)
    if ended == "transport":
        partial = accumulator.partial()
        message = redact(record.get("message", "connection broke mid-stream"))
        return partial, CompletionError("transport", message, partial)
    try:
        return accumulator.result(), None
    except CompletionError as exc:
        return exc.completion, exc


def outcome_from_record(record: Mapping[str, Any]) -> tuple[Completion | None, CompletionError | None]:
    """Interpret an exchange record into (completion, model-side error)."""
    kind = record.get("kind")
    if kind == "json":
        return _from_json(record)
    if kind == "sse":
        return _from_sse(record)
    if kind == "http_status":
        status = record["status"]
        return None, CompletionError(
            f"http_status:{status}", f"HTTP {status}: {redact(record.get('body_text', ''))[:300]}"
        )
    if kind == "timeout":
        return None, timeout_error(record["reason"], record.get("timeout_s"), None)
    if kind == "transport":
        return None, CompletionError(
            "transport", redact(record.get("message", "connection broke after the response started"))
        )
    raise ValueError(f"unknown exchange record kind {kind!r}")


def replayable(stored: Mapping[str, Any], params: CompletionParams) -> bool:
    """Whether a stored record may stand for a new attempt with ``params``: a stored timeout is replayed
    only while the timeout that fired is unchanged (after raising a timeout the user wants the attempt
    made again)."""
    reason = stored.get("ended") if stored.get("kind") == "sse" else stored.get("reason")
    if reason not in TIMEOUT_REASONS:
        return True
    current = {
        "timeout_first_chunk": params.timeout_chunk_first,
        "timeout_next_chunk": params.timeout_chunk_next,
        "timeout_completion": params.timeout_completion,
    }[reason]
    return current is not None and stored.get("timeout_s") == current
