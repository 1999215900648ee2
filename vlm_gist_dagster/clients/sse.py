"""A streamed chat attempt: the hand-written SSE reader and its watchdog (docs/protocol/pipeline.md §1.4).

The three timeouts are enforced on the event loop's clock, per HTTP request ("the HTTP library itself
has no timeout"):

* ``timeout_completion`` caps the whole attempt (request sent → last line);
* ``timeout_chunk_first``: from the request to the first chunk — response headers are not a chunk;
* ``timeout_chunk_next``: the largest gap between two chunks.

**Only data lines are chunks**, as in the paper's client, whose watchdog moves only when its reader
reports a ``data:`` line: a JSON chunk or ``data: [DONE]``. SSE comments (OpenRouter's
``: OPENROUTER PROCESSING`` keep-alives), blank lines and ``data:`` lines that are not JSON (ignored by
the accumulator, as the paper's reader ignores them) do not move the timers, so a stream that sends only
keep-alive comments past ``timeout_chunk_first`` fails the attempt with ``timeout_first_chunk``.

A fired timeout ends the attempt with its reason and keeps the partial text. A connection that breaks
after a 200's headers fails the attempt (``ended: transport``): the model was reached and may have billed
tokens. Before the headers it is a :class:`~.errors.TransportError`, retried by the client. The result
is an exchange record of kind ``sse`` (or ``http_status``; see :mod:`.replay`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ..protocol.completions import CompletionError, StreamAccumulator
from ..protocol.settings import CompletionParams
from .endpoints import ResolvedEndpoint
from .errors import redact
from .transport import raise_for_transport, transport_error

__all__ = ["StreamWatchdog", "exchange_stream"]


def _at(deadline: float) -> float | None:
    return None if deadline == math.inf else deadline


@dataclass
class StreamWatchdog:
    """The deadlines of one streamed attempt (times on the loop's clock; None: no limit).

    >>> dog = StreamWatchdog(start=100.0, first_s=15.0, next_s=5.0, total_s=60.0)
    >>> dog.deadline()
    (115.0, 'timeout_first_chunk', 15.0)
    >>> dog.chunk(130.0); dog.deadline()
    (135.0, 'timeout_next_chunk', 5.0)
    >>> dog.chunk(158.0); dog.deadline()
    (160.0, 'timeout_completion', 60.0)
    """

    start: float
    first_s: float | None
    next_s: float | None
    total_s: float | None
    last_chunk: float | None = None

    @classmethod
    def for_params(cls, start: float, params: CompletionParams) -> StreamWatchdog:
        return cls(start, params.timeout_chunk_first, params.timeout_chunk_next, params.timeout_completion)

    def chunk(self, now: float) -> None:
        """A chunk (a data line) arrived at ``now``."""
        self.last_chunk = now

    @property
    def total_deadline(self) -> float:
        return self.start + (math.inf if self.total_s is None else self.total_s)

    def deadline(self) -> tuple[float, str, float | None]:
        """(deadline, the reason if it fires, the configured seconds) of the tightest running timer."""
        if self.last_chunk is None:
            limit, reason, base = self.first_s, "timeout_first_chunk", self.start
        else:
            limit, reason, base = self.next_s, "timeout_next_chunk", self.last_chunk
        chunk_deadline = base + (math.inf if limit is None else limit)
        if self.total_deadline <= chunk_deadline:
            return self.total_deadline, "timeout_completion", self.total_s
        return chunk_deadline, reason, limit


async def exchange_stream(
    client: httpx.AsyncClient,
    resolved: ResolvedEndpoint,
    payload: Mapping[str, Any],
    params: CompletionParams,
) -> dict[str, Any]:
    """One streamed HTTP exchange → its record. Raises :class:`~.errors.TransportError` (retryable)
    and :class:`~.errors.AuthenticationError`; every other outcome is a record."""
    loop = asyncio.get_running_loop()
    dog = StreamWatchdog.for_params(loop.time(), params)
    service = f"chat endpoint {resolved.name!r}"

    def record(**fields: Any) -> dict[str, Any]:
        return {"kind": "sse", "status": 200, **fields, "duration_s": loop.time() - dog.start}

    request = client.build_request(
        "POST", resolved.completions_url, json=dict(payload), headers=resolved.headers()
    )
    deadline, reason, seconds = dog.deadline()
    try:
        async with asyncio.timeout_at(_at(deadline)):
            response = await client.send(request, stream=True)
    except TimeoutError:
        return record(lines=[], ended=reason, timeout_s=seconds)
    except httpx.TransportError as exc:
        raise transport_error(exc, service, resolved.completions_url) from None
    try:
        if response.status_code != 200:
            return await _status_record(response, resolved, dog, loop)
        return await _read_stream(response.aiter_lines(), dog, loop, record)
    finally:
        await response.aclose()


async def _status_record(
    response: httpx.Response, resolved: ResolvedEndpoint, dog: StreamWatchdog, loop: asyncio.AbstractEventLoop
) -> dict[str, Any]:
    """A non-200 answer to a streamed request: read its body (within timeout_completion), climb the
    status ladder, and record what is left as a status the model is blamed for."""
    try:
        async with asyncio.timeout_at(_at(dog.total_deadline)):
            await response.aread()
    except (TimeoutError, httpx.TransportError):
        pass
    raise_for_transport(response, f"chat endpoint {resolved.name!r}", resolved.key_hint)
    try:
        body = response.text
    except httpx.ResponseNotRead:
        body = ""
    return {
        "kind": "http_status",
        "status": response.status_code,
        "body_text": redact(body[:2000]),
        "duration_s": loop.time() - dog.start,
    }


async def _read_stream(
    lines_in: AsyncIterator[str], dog: StreamWatchdog, loop: asyncio.AbstractEventLoop, record: Any
) -> dict[str, Any]:
    """Read SSE lines under the watchdog until ``[DONE]``, the end of the body, a failed chunk, a broken
    connection or a timeout."""
    accumulator = StreamAccumulator()
    iterator = lines_in.__aiter__()
    lines: list[str] = []
    while True:
        deadline, reason, seconds = dog.deadline()
        try:
            # asyncio.timeout_at, not wait_for: wait_for wraps every line in a new task, which was a tenth
            # of the client's CPU per streamed response (benchmarks/description_throughput.py).
            async with asyncio.timeout_at(_at(deadline)):
                line = await iterator.__anext__()
        except StopAsyncIteration:
            return record(lines=lines, ended="eof")
        except TimeoutError:
            return record(lines=lines, ended=reason, timeout_s=seconds)
        except httpx.TransportError as exc:
            message = f"{type(exc).__name__} after the response started: {redact(exc)}"
            return record(lines=lines, ended="transport", message=message)
        if not line.strip():
            continue
        received = loop.time()
        lines.append(line)
        chunks = accumulator.chunks
        try:
            done = accumulator.feed_line(line)
        except CompletionError:
            # e.g. finish_reason length: the attempt fails at once (docs/protocol/pipeline.md §1.4)
            return record(lines=lines, ended="error")
        if done:
            return record(lines=lines, ended="done")
        if accumulator.chunks != chunks:  # a JSON data line: the only kind of line that moves the timers
            dog.chunk(received)
