"""What every client shares below the protocol: the httpx client, transport retries, and limits.

* :func:`make_async_client` — an ``httpx.AsyncClient`` with explicit timeouts. Chat completions pass
  ``read=None`` because their three timeouts are enforced by an asyncio watchdog instead
  (docs/protocol/pipeline.md §1.4: "the HTTP library itself has no timeout").
* :class:`RetryPolicy` — **transport** retries: HTTP 429 (honouring ``Retry-After``, in seconds or as an
  HTTP date), 408, 5xx and connection errors are retried with exponential backoff and full jitter, up
  to ``max_retries`` times. These are kept apart from the model's failed attempts (docs/protocol/pipeline.md §1.6 counts
  only model failures; our issue 6). 401/403 are never retried (:class:`~.errors.AuthenticationError`).
* :class:`EndpointLimits` — a per-endpoint ``asyncio.Semaphore`` (requests in flight) and an optional
  requests-per-minute token bucket (:class:`RateLimiter`). The paper bounded concurrency only by its
  worker pool (CPU count − 1, docs/protocol/pipeline.md §1.6) and had no rate limit.
* The **status ladder** every client climbs: 401/403 → :class:`~.errors.AuthenticationError`; a
  retryable status → :class:`~.errors.TransportError` (:func:`raise_for_transport`); for the JSON APIs
  (vision, embeddings) then any other status >= 400 → :class:`~.errors.ResponseError` and a 200 with a
  cut-off body → :class:`~.errors.TransportError` (:func:`json_body`). Chat completions record other
  statuses as failed attempts instead (the model is blamed, docs/protocol/pipeline.md §1.4).

>>> RetryPolicy(max_retries=3, backoff_base_s=1.0).delay(2, retry_after_s=None, uniform=lambda a, b: b)
4.0
>>> parse_retry_after("7")
7.0
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from .errors import (
    AuthenticationError,
    ResponseError,
    TransportError,
    TransportRetriesExhausted,
    get_logger,
    redact,
)

__all__ = [
    "RETRYABLE_STATUSES",
    "EndpointLimits",
    "RateLimiter",
    "RetryPolicy",
    "check_auth",
    "json_body",
    "make_async_client",
    "parse_retry_after",
    "raise_for_transport",
    "retryable_status_error",
    "transport_error",
    "with_transport_retries",
]

T = TypeVar("T")
log = get_logger("vlm_gist_dagster.clients.transport")

#: Statuses retried as transport failures. 408: request timeout; 425: too early; 429: rate limited;
#: 5xx: the server or a gateway failed (OpenRouter answers 502 when the upstream provider fails).
RETRYABLE_STATUSES: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


def make_async_client(
    *,
    connect_timeout: float | None = 15.0,
    read_timeout: float | None = None,
    write_timeout: float | None = 120.0,
    pool_timeout: float | None = None,
    max_connections: int | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` with every timeout explicit.

    ``pool_timeout`` is None by default: waiting for a connection is bounded by our own semaphore, and a
    pool timeout would turn a long queue into spurious failures.
    """
    timeout = httpx.Timeout(
        connect=connect_timeout, read=read_timeout, write=write_timeout, pool=pool_timeout
    )
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections or 20)
    return httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or
    unreadable; never negative.

    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)   # 10 s before that date
    10.0
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        reference = datetime.now(UTC).timestamp() if now is None else now
        seconds = when.timestamp() - reference
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Transport retries: how many, and how long to wait before each.

    The wait before retry ``k`` (0-based) is full jitter, ``uniform(0, min(backoff_max_s,
    backoff_base_s · 2^k))``; when the server sent ``Retry-After`` the wait is at least that (capped at
    ``retry_after_max_s``, so a server asking for an hour does not stall a run for an hour).
    """

    max_retries: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0 or self.retry_after_max_s < 0:
            raise ValueError("backoff times must be >= 0")

    def delay(
        self,
        retry: int,
        retry_after_s: float | None,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        cap = min(self.backoff_max_s, self.backoff_base_s * 2.0**retry)
        jittered = uniform(0.0, cap)
        if retry_after_s is not None:
            return max(min(retry_after_s, self.retry_after_max_s), jittered)
        return jittered


class RateLimiter:
    """A token bucket: at most ``requests_per_minute`` request starts per minute, ``burst`` at once.

    With the default ``burst=1`` requests start at least ``60 / requests_per_minute`` seconds apart.
    """

    def __init__(
        self,
        requests_per_minute: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not requests_per_minute > 0:
            raise ValueError("requests_per_minute must be > 0")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.rate = requests_per_minute / 60.0
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._lock: asyncio.Lock | None = None

    async def acquire(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one waiter at a time: starts stay ordered and spaced
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens < 1.0:
                await self._sleep((1.0 - self._tokens) / self.rate)
                self._tokens = 1.0
                self._last = self._clock()
            self._tokens -= 1.0


class EndpointLimits:
    """Requests in flight (semaphore) and request starts per minute (optional) of one endpoint.

    Create it inside the event loop that uses it. ``max_in_flight`` records the largest number of
    concurrent :meth:`slot` holders seen (diagnostics).
    """

    def __init__(self, concurrency: int, requests_per_minute: float | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.concurrency = concurrency
        self.semaphore = asyncio.Semaphore(concurrency)
        self.rate_limiter = RateLimiter(requests_per_minute) if requests_per_minute else None
        self.in_flight = 0
        self.max_in_flight = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self.semaphore:
            if self.rate_limiter is not None:
                await self.rate_limiter.acquire()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1


def _provider_message(response: httpx.Response) -> str:
    """A short, redacted excerpt of an error body (the body must have been read)."""
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return ""
    text = " ".join(text.split())
    return redact(text[:300])


def check_auth(response: httpx.Response, service: str, hint: str = "") -> None:
    """Raise :class:`AuthenticationError` for HTTP 401/403 (the body must have been read)."""
    if response.status_code in (401, 403):
        what = "rejected the credentials" if response.status_code == 403 else "requires valid credentials"
        detail = _provider_message(response)
        raise AuthenticationError(
            f"{service}: HTTP {response.status_code} from {response.request.url.copy_with(query=None)}: the server "
            f"{what}{'; ' + hint if hint else ''}" + (f" (server says: {detail})" if detail else ""),
            status=response.status_code,
            service=service,
        )


def retryable_status_error(response: httpx.Response, service: str) -> TransportError | None:
    """A :class:`TransportError` for a retryable status (429 with its Retry-After), else None."""
    if response.status_code not in RETRYABLE_STATUSES:
        return None
    detail = _provider_message(response)
    return TransportError(
        f"{service}: HTTP {response.status_code} from {response.request.url.copy_with(query=None)}"
        + (f" ({detail})" if detail else ""),
        status=response.status_code,
        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
    )


def raise_for_transport(response: httpx.Response, service: str, hint: str = "") -> None:
    """The first rungs of the status ladder every client shares (the body must have been read):
    401/403 raise :class:`AuthenticationError` (never retried), a retryable status raises
    :class:`TransportError` (retried by :func:`with_transport_retries`)."""
    check_auth(response, service, hint)
    retryable = retryable_status_error(response, service)
    if retryable is not None:
        raise retryable


def json_body(response: httpx.Response, service: str, what: str, hint: str = "") -> Any:
    """The whole ladder of a JSON API (vision servers, embeddings): :func:`raise_for_transport`, then
    any other status >= 400 raises :class:`ResponseError`, and a 200 whose body is not JSON (the
    connection broke mid-body) raises :class:`TransportError`, so it is retried. Returns the body."""
    raise_for_transport(response, service, hint)
    if response.status_code >= 400:
        raise ResponseError(
            f"{service}: {what} → HTTP {response.status_code}: {redact(response.text[:300])}",
            status=response.status_code,
        )
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TransportError(
            f"{service}: {what} → a {response.status_code} whose body is not valid JSON"
        ) from None


def transport_error(exc: httpx.TransportError, service: str, url: str | httpx.URL) -> TransportError:
    """Our retryable error for an httpx connection-level failure (no exception chaining: httpx
    exceptions hold the request, headers included)."""
    kind = type(exc).__name__
    return TransportError(f"{service}: {kind} talking to {url}: {redact(exc) or kind}")


async def with_transport_retries(
    send_once: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    service: str,
    limits: EndpointLimits | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_retry: Callable[[TransportError, float], None] | None = None,
    before_try: Callable[[], Awaitable[None]] | None = None,
) -> tuple[T, int]:
    """Run ``send_once`` (one HTTP exchange) until it does not raise :class:`TransportError`.

    Returns (its result, the number of transport retries made). Each try holds an endpoint slot
    (semaphore + rate limiter) only while it runs, not while backing off. Raises
    :class:`TransportRetriesExhausted` after ``1 + policy.max_retries`` failed tries; any other
    exception (e.g. :class:`AuthenticationError`) propagates at once. ``before_try`` runs before each
    try, outside the slot (e.g. to reload a vision model the server lost).
    """
    retries = 0
    while True:
        try:
            if before_try is not None:
                await before_try()
            if limits is None:
                return await send_once(), retries
            async with limits.slot():
                result = await send_once()
            return result, retries
        except TransportRetriesExhausted:
            raise
        except TransportError as exc:
            if retries >= policy.max_retries:
                raise TransportRetriesExhausted(
                    f"{service}: giving up after {retries + 1} tries; last error: {exc.message}",
                    tries=retries + 1,
                    last=exc,
                ) from None
            wait = policy.delay(retries, exc.retry_after_s)
            log.warning(
                "%s; transport retry %d/%d in %.2f s", exc.message, retries + 1, policy.max_retries, wait
            )
            if on_retry is not None:
                on_retry(exc, wait)
            await sleep(wait)
            retries += 1
