"""Chat completions over httpx, exactly as the paper's provider layer sends and reads them
(docs/protocol/pipeline.md §1.3, §1.4, §2.1), plus what the paper lacked: transport retries, limits, a cache.

One **attempt** is one HTTP exchange that reached the model (docs/protocol/pipeline.md §1.6: "each attempt is exactly one
HTTP request"). :meth:`ChatClient.attempt` returns an :class:`AttemptOutcome` — a completion, or the
model-side :class:`~vlm_gist_dagster.protocol.completions.CompletionError` that failed it (bad finish
reason, invalid body, truncated stream, one of the three timeouts, a non-200 status the model is
blamed for) — and raises only for what is *not* the model's fault:

* :class:`~.errors.TransportRetriesExhausted` when 429 / 5xx / connection errors persist past the
  :class:`~.transport.RetryPolicy` (each of those is retried first, and never counts as an attempt);
* :class:`~.errors.AuthenticationError` for 401/403, at once, without retrying;
* :class:`~.errors.ConfigurationError` for a missing key variable or a bad endpoint / URL override.

The parts live next door: endpoint resolution and URL overrides in :mod:`.endpoints`, the streamed
exchange and its timeout watchdog in :mod:`.sse`, the exchange records and their (cached) replay in
:mod:`.replay`; transport, limits, retries and the cache come from :class:`~.base.ServiceClient`.
A non-streaming attempt is capped by ``timeout_completion`` only (docs/protocol/pipeline.md §1.4).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..protocol.completions import Completion, CompletionError
from ..protocol.settings import CompletionParams
from .base import ServiceClient
from .cache import ResponseCache, Subject
from .endpoints import EndpointLike, ResolvedEndpoint, as_endpoint, endpoint_env_var, resolve
from .errors import redact
from .pricing import Cost, PriceTable, load_price_table
from .replay import outcome_from_record, replayable
from .sse import exchange_stream
from .transport import RetryPolicy, raise_for_transport, transport_error

__all__ = [
    "DEFAULT_CONCURRENCY",
    "AttemptOutcome",
    "CacheTag",
    "ChatClient",
    "ResolvedEndpoint",
    "endpoint_env_var",
    "exchange_json",
    "resolve",
]

#: The paper's pool size: CPU count − 1 workers, at least 1 (docs/protocol/pipeline.md §1.6).
DEFAULT_CONCURRENCY = max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True)
class CacheTag:
    """Which attempt about what: with a cache, the outcome of attempt ``attempt`` of a conversation
    about ``subject`` (with the same endpoint, model and payload) is stored and replayed.

    >>> CacheTag.image("ab12", 0)
    CacheTag(subject=Subject(kind='image', id='ab12'), attempt=0)
    """

    subject: Subject
    attempt: int

    @classmethod
    def image(cls, image_sha256: str, attempt: int) -> CacheTag:
        return cls(Subject.image(image_sha256), attempt)

    @classmethod
    def definition(cls, definition_key: str, attempt: int) -> CacheTag:
        return cls(Subject.definition(definition_key), attempt)

    @classmethod
    def crop(cls, image_sha256: str, detection_index: int, attempt: int) -> CacheTag:
        return cls(Subject.crop(image_sha256, detection_index), attempt)


@dataclass(frozen=True)
class AttemptOutcome:
    """The result of one attempt (one HTTP exchange that reached the model, or its cached replay).

    ``completion`` is the (possibly partial) completion; ``error`` the model-side failure, None when the
    exchange produced a valid completion (its content is judged later, docs/protocol/pipeline.md §1.5). ``duration_s`` is the
    time of the HTTP request that produced this outcome (backoff waits and queueing excluded);
    ``http_retries`` the transport retries made before it; ``record`` the raw, cacheable result.
    """

    completion: Completion | None
    error: CompletionError | None
    duration_s: float
    http_retries: int = 0
    from_cache: bool = False
    cost: Cost | None = None
    record: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


async def exchange_json(
    client: httpx.AsyncClient,
    resolved: ResolvedEndpoint,
    payload: Mapping[str, Any],
    params: CompletionParams,
) -> dict[str, Any]:
    """One non-streaming HTTP exchange → its record (``json``, ``http_status`` or ``timeout``)."""
    loop = asyncio.get_running_loop()
    limit = params.timeout_completion
    start = loop.time()
    try:
        response = await asyncio.wait_for(
            client.post(resolved.completions_url, json=dict(payload), headers=resolved.headers()),
            timeout=limit,
        )
    except TimeoutError:
        return {
            "kind": "timeout",
            "reason": "timeout_completion",
            "timeout_s": limit,
            "duration_s": loop.time() - start,
        }
    except httpx.TransportError as exc:
        raise transport_error(exc, f"chat endpoint {resolved.name!r}", resolved.completions_url) from None
    duration = loop.time() - start
    raise_for_transport(response, f"chat endpoint {resolved.name!r}", resolved.key_hint)
    text = response.text
    if response.status_code != 200:
        return {
            "kind": "http_status",
            "status": response.status_code,
            "body_text": redact(text[:2000]),
            "duration_s": duration,
        }
    return {"kind": "json", "status": 200, "body_text": text, "duration_s": duration}


class ChatClient(ServiceClient):
    """Async chat-completions client for every OpenAI-compatible endpoint of the paper (and any other).

    Use it as ``async with ChatClient(...) as chat:`` inside one event loop.

    * ``endpoint_urls``: endpoint name → base URL override (see :mod:`.endpoints`).
    * ``env``: where keys and overrides are read (default ``os.environ``).
    * ``concurrency``: requests in flight per endpoint (int, or endpoint name → int; default the
      paper's CPU count − 1); ``requests_per_minute``: optional start-rate limit per endpoint (same forms).
    * ``retry``, ``cache``, ``service_identity``: see :class:`~.base.ServiceClient`.
    * ``prices``: a :class:`~.pricing.PriceTable` (default: ``settings/prices.json`` + overrides).
    """

    default_concurrency = DEFAULT_CONCURRENCY

    def __init__(
        self,
        *,
        endpoint_urls: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        concurrency: int | Mapping[str, int] | None = None,
        requests_per_minute: float | Mapping[str, float] | None = None,
        retry: RetryPolicy | None = None,
        cache: ResponseCache | None = None,
        service_identity: str | None = None,
        prices: PriceTable | None = None,
        connect_timeout: float = 15.0,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        # read=None: the three timeouts are the watchdog's (docs/protocol/pipeline.md §1.4), not httpx's.
        super().__init__(
            retry=retry,
            cache=cache,
            service_identity=service_identity,
            concurrency=concurrency,
            requests_per_minute=requests_per_minute,
            connect_timeout=connect_timeout,
            read_timeout=None,
            http_client=http_client,
            sleep=sleep,
        )
        self.endpoint_urls = dict(endpoint_urls or {})
        self.env = os.environ if env is None else env
        self.prices = prices if prices is not None else load_price_table(env=self.env)
        self._resolved: dict[str, ResolvedEndpoint] = {}

    async def __aenter__(self) -> ChatClient:
        return self

    def resolve(self, endpoint: EndpointLike) -> ResolvedEndpoint:
        """The endpoint with URL overrides applied and its key read (cached per endpoint)."""
        ep = as_endpoint(endpoint)
        memo = repr(ep)
        if memo not in self._resolved:
            self._resolved[memo] = resolve(ep, endpoint_urls=self.endpoint_urls, env=self.env)
        return self._resolved[memo]

    async def attempt(
        self,
        params: CompletionParams,
        payload: Mapping[str, Any],
        *,
        endpoint: EndpointLike | None = None,
        cache_tag: CacheTag | None = None,
    ) -> AttemptOutcome:
        """One attempt: send ``payload`` (built by ``protocol.completions.build_payload``) to the
        endpoint of ``params`` (or ``endpoint``), honouring ``params``' timeouts and streaming flag.

        With a cache and a ``cache_tag``, a stored outcome for the same (service, route, model, payload,
        subject, attempt) is replayed without any HTTP request.
        """
        resolved = self.resolve(endpoint if endpoint is not None else params.api_endpoint)
        stream = bool(payload.get("stream", params.stream_completion))
        model = str(payload.get("model", params.model_name))
        key = None
        if cache_tag is not None:
            key = self.cache_key(
                "chat",
                resolved.completions_url,
                model,
                dict(payload),
                subject=cache_tag.subject,
                attempt=cache_tag.attempt,
            )
        stored = self.cache_get(key)
        if stored is not None and replayable(stored, params):
            return self._outcome(model, stored, from_cache=True)
        exchange = exchange_stream if stream else exchange_json
        record, retries = await self.send(
            lambda: exchange(self._client, resolved, payload, params),
            service=f"chat endpoint {resolved.name!r}",
            endpoint_name=resolved.name,
        )
        record["http_retries"] = retries
        self.cache_put(key, record)
        return self._outcome(model, record, from_cache=False)

    async def complete(
        self,
        params: CompletionParams,
        payload: Mapping[str, Any],
        *,
        endpoint: EndpointLike | None = None,
        cache_tag: CacheTag | None = None,
    ) -> Completion:
        """:meth:`attempt`, raising the model-side :class:`CompletionError` instead of returning it."""
        outcome = await self.attempt(params, payload, endpoint=endpoint, cache_tag=cache_tag)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.completion is not None
        return outcome.completion

    def _outcome(self, model: str, record: dict[str, Any], *, from_cache: bool) -> AttemptOutcome:
        completion, error = outcome_from_record(record)
        cost = self.prices.cost(model, completion.usage if completion is not None else None)
        return AttemptOutcome(
            completion,
            error,
            float(record.get("duration_s", 0.0)),
            int(record.get("http_retries", 0)),
            from_cache,
            cost,
            record,
        )
