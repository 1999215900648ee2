"""The core every client is built on: one owned ``httpx.AsyncClient``, lazy per-endpoint limits, the
transport retry policy with its counters, and the response cache with the service identity its keys use.

:class:`ServiceClient` is what :class:`~.chat.ChatClient`, :class:`~.embeddings.EmbeddingsClient` and
:class:`~.vision.VisionClient` share; they add only their protocol (payloads, how a response is read).

* **Lifecycle:** ``async with Client(...) as client:`` inside one event loop; an ``http_client`` passed
  in is the caller's to close, one made here is closed on exit.
* **Limits:** :meth:`ServiceClient.limits` creates an endpoint's :class:`~.transport.EndpointLimits` on
  first use, inside the running loop (an ``asyncio.Semaphore`` belongs to one loop).
* **Sending:** :meth:`ServiceClient.send` runs one HTTP exchange under the endpoint's limits with the
  bounded transport retries of :func:`~.transport.with_transport_retries`, counting requests and retries.
* **Caching:** :meth:`ServiceClient.cache_key` keys an answer by the identity of the service that gives
  it: the request URL's origin, or ``service_identity`` when one is given (``"simulator"`` while the
  built-in simulator answers). :meth:`ServiceClient.cached` reads and writes through the cache, counting
  hits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx

from .cache import CacheKey, CacheKind, ResponseCache, Subject, service_identity
from .transport import EndpointLimits, RetryPolicy, make_async_client, with_transport_retries

__all__ = ["ServiceClient"]

T = TypeVar("T")
Limit = int | float | Mapping[str, Any] | None


def per_endpoint(value: Limit, name: str, default: Any) -> Any:
    """``value`` for endpoint ``name``: a mapping is looked up (``default`` when absent), None is
    ``default``, anything else applies to every endpoint."""
    if isinstance(value, Mapping):
        return value.get(name, default)
    return default if value is None else value


class ServiceClient:
    """Transport, limits, retry policy and response cache of one kind of client.

    * ``retry``: the transport :class:`~.transport.RetryPolicy` (default: :attr:`default_retry`).
    * ``cache``: a :class:`~.cache.ResponseCache` (None: nothing is cached).
    * ``service_identity``: the identity cache keys use for every answer of this client (None: each
      request URL's origin).
    * ``concurrency`` / ``requests_per_minute``: requests in flight and request starts per minute, for
      every endpoint or per endpoint name (a mapping); defaults :attr:`default_concurrency` / none.
    * ``connect_timeout`` / ``read_timeout``: httpx's timeouts of the client made here (ignored with
      ``http_client``); None is no limit.
    * ``sleep``: the backoff sleep (tests replace it).
    """

    default_retry = RetryPolicy()
    default_concurrency = 1

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = None,
        cache: ResponseCache | None = None,
        service_identity: str | None = None,
        concurrency: int | Mapping[str, int] | None = None,
        requests_per_minute: float | Mapping[str, float] | None = None,
        connect_timeout: float | None = 15.0,
        read_timeout: float | None = None,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.retry = retry or self.default_retry
        self.cache = cache
        self.service_identity = service_identity
        self.concurrency = concurrency
        self.requests_per_minute = requests_per_minute
        self._own_client = http_client is None
        self._client = http_client or make_async_client(
            connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self._sleep = sleep
        self._limits: dict[str, EndpointLimits] = {}
        #: Counters for diagnostics and tests: HTTP requests sent, transport retries, cache hits.
        self.requests_sent = 0
        self.transport_retries = 0
        self.cache_hits = 0

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    # ---------------------------------------------------------------- limits and sending
    def limits(self, endpoint_name: str = "") -> EndpointLimits:
        """The semaphore / rate limiter of ``endpoint_name`` (created on first use, in this loop)."""
        if endpoint_name not in self._limits:
            self._limits[endpoint_name] = EndpointLimits(
                int(per_endpoint(self.concurrency, endpoint_name, self.default_concurrency)),
                per_endpoint(self.requests_per_minute, endpoint_name, None),
            )
        return self._limits[endpoint_name]

    async def send(
        self,
        send_once: Callable[[], Awaitable[T]],
        *,
        service: str,
        endpoint_name: str = "",
        before_try: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[T, int]:
        """Run ``send_once`` (one HTTP exchange) under the endpoint's limits until it does not raise a
        :class:`~.errors.TransportError`; returns (its result, the transport retries made). Raises
        :class:`~.errors.TransportRetriesExhausted` when the retry budget is spent; any other error
        (401/403 included) at once."""

        async def counted() -> T:
            self.requests_sent += 1
            return await send_once()

        def count_retry(*_: object) -> None:
            self.transport_retries += 1

        return await with_transport_retries(
            counted,
            self.retry,
            service=service,
            limits=self.limits(endpoint_name),
            sleep=self._sleep,
            on_retry=count_retry,
            before_try=before_try,
        )

    # ---------------------------------------------------------------- the response cache
    def cache_key(
        self,
        kind: CacheKind,
        url: str | httpx.URL,
        model: str,
        payload: Any,
        *,
        route: str | None = None,
        subject: Subject | None = None,
        attempt: int | None = None,
    ) -> CacheKey:
        """The key of an answer from ``url`` (see :class:`~.cache.CacheKey`)."""
        return CacheKey.for_request(
            kind,
            url,
            model,
            payload,
            service=self.service_identity or service_identity(url),
            route=route,
            subject=subject,
            attempt=attempt,
        )

    def cache_get(self, key: CacheKey | None) -> dict[str, Any] | None:
        if key is None or self.cache is None:
            return None
        stored = self.cache.get(key)
        if stored is not None:
            self.cache_hits += 1
        return stored

    def cache_put(self, key: CacheKey | None, answer: dict[str, Any]) -> None:
        if key is not None and self.cache is not None:
            self.cache.put(key, answer)

    async def cached(self, key: CacheKey, call: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """The stored answer of ``key``, else ``call()``'s, stored (answers are JSON objects)."""
        stored = self.cache_get(key)
        if stored is not None:
            return stored
        answer = await call()
        self.cache_put(key, answer)
        return answer
