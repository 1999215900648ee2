"""Chat completions over httpx, exactly as the paper's provider layer sends and reads them
(spec/pipeline.md §1.3, §1.4, §2.1), plus what the paper lacked: transport retries, limits, a cache.

One **attempt** is one HTTP exchange that reached the model (spec §1.6: "each attempt is exactly one
HTTP request"). :meth:`ChatClient.attempt` returns an :class:`AttemptOutcome` — a completion, or the
model-side :class:`~vlm_gist_dagster.protocol.completions.CompletionError` that failed it (bad finish
reason, invalid body, truncated stream, one of the three timeouts, a non-200 status the model is
blamed for) — and raises only for what is *not* the model's fault:

* :class:`~.errors.TransportRetriesExhausted` when 429 / 5xx / connection errors persist past the
  :class:`~.transport.RetryPolicy` (each of those is retried first, and never counts as an attempt);
* :class:`~.errors.AuthenticationError` for 401/403, at once, without retrying;
* :class:`~.errors.ConfigurationError` for a missing key variable or a bad endpoint / URL override.

**Timeouts** (spec §1.4), enforced by an asyncio watchdog on the event loop's clock, per HTTP request:

* ``timeout_completion`` caps the whole attempt in both modes (request sent → last byte);
* ``timeout_chunk_first`` (streaming only): from the request to the first received line — response
  headers alone are not a chunk;
* ``timeout_chunk_next`` (streaming only): the largest gap between two received lines.

Any non-empty line counts as a chunk, SSE comments included: OpenRouter's ``: OPENROUTER PROCESSING``
keep-alives exist precisely to show a slow model is still working. A fired timeout fails the attempt
with reason ``timeout_first_chunk`` / ``timeout_next_chunk`` / ``timeout_completion`` and keeps the
partial text. A connection that breaks *after* a 200's headers fails the attempt (reason
``transport``): the model was reached and may have billed tokens. Before the headers it is a
transport retry.

**Endpoint URL overrides.** An endpoint keeps its name (and cache identity) but can be moved: the
``endpoint_urls`` option (endpoint name → base URL) or the environment variable
``VLM_GIST_ENDPOINT_URL_<SLUG>`` (SLUG = the name upper-cased, every non-alphanumeric as ``_``, e.g.
``VLM_GIST_ENDPOINT_URL_VLLM``, ``VLM_GIST_ENDPOINT_URL_VLM_GIST_SIMULATOR``) replaces the scheme,
host and port of its URLs; the path stays. The explicit option wins over the environment.

**Keys** come from the environment variable the endpoint names (``OPENAI_API_KEY``,
``OPENROUTER_API_KEY``, ``MISTRAL_API_KEY``, ``VLLM_API_KEY``, ``AIS_API_KEY``, or an endpoint dict's
``key_value``) and are registered for redaction; they appear only in the ``Authorization`` header.

>>> endpoint_env_var("VLM-GIST simulator")
'VLM_GIST_ENDPOINT_URL_VLM_GIST_SIMULATOR'
>>> override_base_url("http://localhost:8000/v1/chat/completions", "http://gpu-box:8001")
'http://gpu-box:8001/v1/chat/completions'
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..protocol.completions import (
    Completion,
    CompletionError,
    CompletionTimeout,
    InvalidResponse,
    StreamAccumulator,
    build_headers,
    interpret_response,
)
from ..protocol.endpoints import Endpoint, EndpointError, resolve_endpoint
from ..protocol.settings import CompletionParams
from .cache import CacheKey, ResponseCache
from .errors import ConfigurationError, TransportError, get_logger, redact, register_secret
from .pricing import Cost, PriceTable, load_price_table
from .transport import (
    EndpointLimits,
    RetryPolicy,
    check_auth,
    make_async_client,
    retryable_status_error,
    transport_error,
    with_transport_retries,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "AttemptOutcome",
    "CacheTag",
    "ChatClient",
    "ResolvedEndpoint",
    "endpoint_env_var",
    "outcome_from_record",
    "override_base_url",
]

log = get_logger("vlm_gist_dagster.clients.chat")

#: The paper's pool size: CPU count − 1 workers, at least 1 (spec §1.6).
DEFAULT_CONCURRENCY = max(1, (os.cpu_count() or 2) - 1)
ENDPOINT_URL_ENV_PREFIX = "VLM_GIST_ENDPOINT_URL_"


def endpoint_env_var(name: str) -> str:
    """The environment variable that moves endpoint ``name`` (see the module docstring)."""
    return ENDPOINT_URL_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def override_base_url(url: str, base: str) -> str:
    """``url`` with the scheme, host and port of ``base`` (which must have no path of its own)."""
    try:
        target = httpx.URL(base)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigurationError(f"endpoint URL override {base!r} is not a URL: {exc}") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise ConfigurationError(f"endpoint URL override {base!r} must be an http(s) URL with a host")
    if target.path not in ("", "/") or target.query:
        raise ConfigurationError(
            f"endpoint URL override {base!r} must be a base URL (scheme://host:port) without a path; "
            "the endpoint's own path is kept"
        )
    original = httpx.URL(url)
    return str(original.copy_with(scheme=target.scheme, host=target.host, port=target.port))


@dataclass(frozen=True)
class ResolvedEndpoint:
    """An endpoint with its final URLs and its key (the key is never shown in ``repr``)."""

    endpoint: Endpoint
    completions_url: str
    models_url: str | None
    embeddings_url: str | None
    api_key: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def flavor(self) -> str:
        return self.endpoint.api_flavor

    def headers(self) -> dict[str, str]:
        return build_headers(self.api_key)


def resolve(
    endpoint: Endpoint | str | Mapping[str, Any],
    *,
    endpoint_urls: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ResolvedEndpoint:
    """Resolve a paper endpoint name / endpoint dict: URL overrides applied, key read from the environment.

    Raises :class:`ConfigurationError` for an unknown endpoint, a bad override or a missing key.
    """
    env = os.environ if env is None else env
    try:
        ep = resolve_endpoint(endpoint)
    except EndpointError as exc:
        raise ConfigurationError(str(exc)) from None
    base = (endpoint_urls or {}).get(ep.name) or env.get(endpoint_env_var(ep.name)) or None
    completions_url, models_url = ep.completions_url, ep.models_url
    # OpenAI-compatible servers put embeddings next to chat completions; used when no URL is given.
    embeddings_url = ep.embeddings_url
    if embeddings_url is None and completions_url.endswith("/chat/completions"):
        embeddings_url = completions_url[: -len("/chat/completions")] + "/embeddings"
    if base:
        completions_url = override_base_url(completions_url, base)
        models_url = override_base_url(models_url, base) if models_url else None
        embeddings_url = override_base_url(embeddings_url, base) if embeddings_url else None
    api_key = None
    if ep.key_env_var is not None:
        api_key = env.get(ep.key_env_var) or None
        if api_key is None or not api_key.strip():
            raise ConfigurationError(
                f"endpoint {ep.name!r} needs its API key in the environment variable {ep.key_env_var}, which "
                f"is not set or empty: export {ep.key_env_var}=<your key> (keys never go into settings files)"
            )
        api_key = api_key.strip()
        register_secret(api_key)
    return ResolvedEndpoint(ep, completions_url, models_url, embeddings_url, api_key)


@dataclass(frozen=True)
class CacheTag:
    """What identifies an attempt beyond its payload: the image sent and the attempt number."""

    image_sha256: str | None = None
    attempt: int | None = None


@dataclass(frozen=True)
class AttemptOutcome:
    """The result of one attempt (one HTTP exchange that reached the model, or its cached replay).

    ``completion`` is the (possibly partial) completion; ``error`` the model-side failure, None when the
    exchange produced a valid completion (its content is judged later, spec §1.5). ``duration_s`` is the
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


# --------------------------------------------------------------------------------------------------
# Raw records → outcomes (the same code for live exchanges and cache replays)

_TIMEOUT_REASONS = ("timeout_first_chunk", "timeout_next_chunk", "timeout_completion")


def _timeout_error(reason: str, seconds: float | None, partial: Completion | None) -> CompletionTimeout:
    what = {
        "timeout_first_chunk": "no chunk arrived within timeout_chunk_first",
        "timeout_next_chunk": "the gap between two chunks exceeded timeout_chunk_next",
        "timeout_completion": "the completion exceeded timeout_completion",
    }[reason]
    return CompletionTimeout(reason, f"{what} ({seconds:g} s)" if seconds is not None else what, partial)


def outcome_from_record(record: Mapping[str, Any]) -> tuple[Completion | None, CompletionError | None]:
    """Interpret a raw exchange record (see :meth:`ChatClient.attempt`) into (completion, error)."""
    kind = record.get("kind")
    if kind == "json":
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
    if kind == "http_status":
        status = record["status"]
        return None, CompletionError(
            f"http_status:{status}", f"HTTP {status}: {redact(record.get('body_text', ''))[:300]}"
        )
    if kind == "timeout":
        return None, _timeout_error(record["reason"], record.get("timeout_s"), None)
    if kind == "transport":
        return None, CompletionError(
            "transport", redact(record.get("message", "connection broke after the response started"))
        )
    if kind == "sse":
        accumulator = StreamAccumulator()
        try:
            for line in record["lines"]:
                if accumulator.feed_line(line):
                    break
        except CompletionError as exc:
            return exc.completion, exc
        ended = record.get("ended")
        if ended in _TIMEOUT_REASONS:
            partial = accumulator.partial()
            return partial, _timeout_error(ended, record.get("timeout_s"), partial)
        if ended == "transport":
            partial = accumulator.partial()
            message = redact(record.get("message", "connection broke mid-stream"))
            return partial, CompletionError("transport", message, partial)
        try:
            return accumulator.result(), None
        except CompletionError as exc:
            return exc.completion, exc
    raise ValueError(f"unknown exchange record kind {kind!r}")


# --------------------------------------------------------------------------------------------------
# The client

_INF = math.inf


def _seconds(value: float | None) -> float:
    return _INF if value is None else float(value)


class ChatClient:
    """Async chat-completions client for every OpenAI-compatible endpoint of the paper (and any other).

    Use it as ``async with ChatClient(...) as chat:`` inside one event loop.

    * ``endpoint_urls``: endpoint name → base URL override (see the module docstring).
    * ``env``: where keys and overrides are read (default ``os.environ``).
    * ``concurrency``: requests in flight per endpoint (int, or endpoint name → int; default the
      paper's CPU count − 1); ``requests_per_minute``: optional start-rate limit per endpoint (same forms).
    * ``retry``: the transport :class:`~.transport.RetryPolicy`.
    * ``cache``: a :class:`~.cache.ResponseCache` (None: no caching).
    * ``prices``: a :class:`~.pricing.PriceTable` (default: ``settings/prices.json`` + overrides).
    """

    def __init__(
        self,
        *,
        endpoint_urls: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        concurrency: int | Mapping[str, int] | None = None,
        requests_per_minute: float | Mapping[str, float] | None = None,
        retry: RetryPolicy | None = None,
        cache: ResponseCache | None = None,
        prices: PriceTable | None = None,
        connect_timeout: float = 15.0,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.endpoint_urls = dict(endpoint_urls or {})
        self.env = os.environ if env is None else env
        self.concurrency = concurrency
        self.requests_per_minute = requests_per_minute
        self.retry = retry or RetryPolicy()
        self.cache = cache
        self.prices = prices if prices is not None else load_price_table(env=self.env)
        self._own_client = http_client is None
        self._client = http_client or make_async_client(connect_timeout=connect_timeout, read_timeout=None)
        self._sleep = sleep
        self._limits: dict[str, EndpointLimits] = {}
        self._resolved: dict[str, ResolvedEndpoint] = {}
        #: Counters for diagnostics and tests: HTTP requests sent, transport retries, cache hits.
        self.requests_sent = 0
        self.transport_retries = 0
        self.cache_hits = 0

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    # ---------------------------------------------------------------- configuration
    def resolve(self, endpoint: Endpoint | str | Mapping[str, Any]) -> ResolvedEndpoint:
        """The endpoint with URL overrides applied and its key read (cached per endpoint)."""
        ep = endpoint if isinstance(endpoint, Endpoint) else None
        if ep is None:
            try:
                ep = resolve_endpoint(endpoint)  # type: ignore[arg-type]
            except EndpointError as exc:
                raise ConfigurationError(str(exc)) from None
        cache_key = repr(ep)
        if cache_key not in self._resolved:
            self._resolved[cache_key] = resolve(ep, endpoint_urls=self.endpoint_urls, env=self.env)
        return self._resolved[cache_key]

    @staticmethod
    def _per_endpoint(value: Any, name: str, default: Any) -> Any:
        if isinstance(value, Mapping):
            return value.get(name, default)
        return default if value is None else value

    def limits(self, endpoint_name: str) -> EndpointLimits:
        """The semaphore / rate limiter of ``endpoint_name`` (created on first use, in this loop)."""
        if endpoint_name not in self._limits:
            self._limits[endpoint_name] = EndpointLimits(
                int(self._per_endpoint(self.concurrency, endpoint_name, DEFAULT_CONCURRENCY)),
                self._per_endpoint(self.requests_per_minute, endpoint_name, None),
            )
        return self._limits[endpoint_name]

    # ---------------------------------------------------------------- attempts
    async def attempt(
        self,
        params: CompletionParams,
        payload: Mapping[str, Any],
        *,
        endpoint: Endpoint | str | Mapping[str, Any] | None = None,
        cache_tag: CacheTag | None = None,
    ) -> AttemptOutcome:
        """One attempt: send ``payload`` (built by ``protocol.completions.build_payload``) to the
        endpoint of ``params`` (or ``endpoint``), honouring ``params``' timeouts and streaming flag.

        With a cache and a ``cache_tag``, a stored outcome for the same (endpoint, URL, model, payload,
        image, attempt) is replayed without any HTTP request.
        """
        resolved = self.resolve(endpoint if endpoint is not None else params.api_endpoint)
        stream = bool(payload.get("stream", params.stream_completion))
        model = str(payload.get("model", params.model_name))
        key = None
        if self.cache is not None and cache_tag is not None:
            key = CacheKey.for_request(
                resolved.name,
                resolved.completions_url,
                model,
                dict(payload),
                image_sha256=cache_tag.image_sha256,
                attempt=cache_tag.attempt,
            )
            stored = self.cache.get(key)
            if stored is not None and self._replayable(stored, params, stream):
                self.cache_hits += 1
                completion, error = outcome_from_record(stored)
                return self._outcome(
                    model,
                    completion,
                    error,
                    float(stored.get("duration_s", 0.0)),
                    int(stored.get("http_retries", 0)),
                    True,
                    stored,
                )

        async def send_once() -> dict[str, Any]:
            self.requests_sent += 1
            if stream:
                return await self._exchange_stream(resolved, payload, params)
            return await self._exchange_json(resolved, payload, params)

        def count_retry(exc: TransportError, wait: float) -> None:
            self.transport_retries += 1

        record, retries = await with_transport_retries(
            send_once,
            self.retry,
            service=f"chat endpoint {resolved.name!r}",
            limits=self.limits(resolved.name),
            sleep=self._sleep,
            on_retry=count_retry,
        )
        record["http_retries"] = retries
        if key is not None and self.cache is not None:
            self.cache.put(key, record)
        completion, error = outcome_from_record(record)
        return self._outcome(model, completion, error, float(record["duration_s"]), retries, False, record)

    async def complete(
        self,
        params: CompletionParams,
        payload: Mapping[str, Any],
        *,
        endpoint: Endpoint | str | Mapping[str, Any] | None = None,
        cache_tag: CacheTag | None = None,
    ) -> Completion:
        """:meth:`attempt`, raising the model-side :class:`CompletionError` instead of returning it."""
        outcome = await self.attempt(params, payload, endpoint=endpoint, cache_tag=cache_tag)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.completion is not None
        return outcome.completion

    def _outcome(
        self,
        model: str,
        completion: Completion | None,
        error: CompletionError | None,
        duration_s: float,
        retries: int,
        from_cache: bool,
        record: dict[str, Any],
    ) -> AttemptOutcome:
        usage = completion.usage if completion is not None else None
        cost = self.prices.cost(model, usage)
        return AttemptOutcome(completion, error, duration_s, retries, from_cache, cost, record)

    @staticmethod
    def _replayable(stored: Mapping[str, Any], params: CompletionParams, stream: bool) -> bool:
        """A stored timeout is replayed only while the timeout that fired is unchanged: after raising
        a timeout the user wants the attempt made again."""
        reason = stored.get("ended") if stored.get("kind") == "sse" else stored.get("reason")
        if reason not in _TIMEOUT_REASONS:
            return True
        current = {
            "timeout_first_chunk": params.timeout_chunk_first,
            "timeout_next_chunk": params.timeout_chunk_next,
            "timeout_completion": params.timeout_completion,
        }[reason]
        return current is not None and stored.get("timeout_s") == current

    # ---------------------------------------------------------------- the two exchange kinds
    def _check_status(self, response: httpx.Response, resolved: ResolvedEndpoint) -> None:
        """401/403 → AuthenticationError; retryable statuses → TransportError (both raised)."""
        hint = (
            f"check the key in ${resolved.endpoint.key_env_var}"
            if resolved.endpoint.key_env_var
            else "the endpoint is configured without a key (key_type none)"
        )
        check_auth(response, f"chat endpoint {resolved.name!r}", hint)
        retryable = retryable_status_error(response, f"chat endpoint {resolved.name!r}")
        if retryable is not None:
            raise retryable

    async def _exchange_json(
        self, resolved: ResolvedEndpoint, payload: Mapping[str, Any], params: CompletionParams
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        limit = params.timeout_completion
        start = loop.time()
        try:
            response = await asyncio.wait_for(
                self._client.post(resolved.completions_url, json=dict(payload), headers=resolved.headers()),
                timeout=limit,
            )
        except asyncio.TimeoutError:
            return {
                "kind": "timeout",
                "reason": "timeout_completion",
                "timeout_s": limit,
                "duration_s": loop.time() - start,
            }
        except httpx.TransportError as exc:
            raise transport_error(exc, f"chat endpoint {resolved.name!r}", resolved.completions_url) from None
        duration = loop.time() - start
        self._check_status(response, resolved)
        text = response.text
        if response.status_code != 200:
            return {
                "kind": "http_status",
                "status": response.status_code,
                "body_text": redact(text[:2000]),
                "duration_s": duration,
            }
        return {"kind": "json", "status": 200, "body_text": text, "duration_s": duration}

    async def _exchange_stream(
        self, resolved: ResolvedEndpoint, payload: Mapping[str, Any], params: CompletionParams
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        first_s, next_s, total_s = (
            params.timeout_chunk_first,
            params.timeout_chunk_next,
            params.timeout_completion,
        )
        start = loop.time()
        total_deadline = start + _seconds(total_s)
        first_deadline = start + _seconds(first_s)

        def watchdog(got_chunk: bool, last_chunk: float) -> tuple[float, str, float | None]:
            """(deadline, reason if it fires, the configured seconds) of the tightest running timer."""
            if got_chunk:
                chunk_deadline, reason, seconds = last_chunk + _seconds(next_s), "timeout_next_chunk", next_s
            else:
                chunk_deadline, reason, seconds = first_deadline, "timeout_first_chunk", first_s
            if total_deadline <= chunk_deadline:
                return total_deadline, "timeout_completion", total_s
            return chunk_deadline, reason, seconds

        def timeout_record(reason: str, seconds: float | None, lines: list[str]) -> dict[str, Any]:
            return {
                "kind": "sse",
                "status": 200,
                "lines": lines,
                "ended": reason,
                "timeout_s": seconds,
                "duration_s": loop.time() - start,
            }

        request = self._client.build_request(
            "POST", resolved.completions_url, json=dict(payload), headers=resolved.headers()
        )
        deadline, reason, seconds = watchdog(False, start)
        try:
            response = await asyncio.wait_for(
                self._client.send(request, stream=True),
                timeout=None if deadline == _INF else max(0.0, deadline - loop.time()),
            )
        except asyncio.TimeoutError:
            return timeout_record(reason, seconds, [])
        except httpx.TransportError as exc:
            raise transport_error(exc, f"chat endpoint {resolved.name!r}", resolved.completions_url) from None

        lines: list[str] = []
        try:
            if response.status_code != 200:
                try:
                    await asyncio.wait_for(
                        response.aread(),
                        timeout=None if total_deadline == _INF else max(0.0, total_deadline - loop.time()),
                    )
                except (asyncio.TimeoutError, httpx.TransportError):
                    pass
                self._check_status(response, resolved)
                try:
                    body = response.text
                except httpx.ResponseNotRead:
                    body = ""
                return {
                    "kind": "http_status",
                    "status": response.status_code,
                    "body_text": redact(body[:2000]),
                    "duration_s": loop.time() - start,
                }
            accumulator = StreamAccumulator()
            iterator = response.aiter_lines().__aiter__()
            got_chunk, last_chunk = False, start
            ended = "eof"
            while True:
                deadline, reason, seconds = watchdog(got_chunk, last_chunk)
                try:
                    # asyncio.timeout_at, not wait_for: wait_for wraps every line in a new task, which was a
                    # tenth of the client's CPU per streamed response (benchmarks/description_throughput.py).
                    async with asyncio.timeout_at(None if deadline == _INF else deadline):
                        line = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    return timeout_record(reason, seconds, lines)
                except httpx.TransportError as exc:
                    return {
                        "kind": "sse",
                        "status": 200,
                        "lines": lines,
                        "ended": "transport",
                        "message": f"{type(exc).__name__} after the response started: {redact(exc)}",
                        "duration_s": loop.time() - start,
                    }
                if not line.strip():
                    continue
                got_chunk, last_chunk = True, loop.time()
                lines.append(line)
                try:
                    if accumulator.feed_line(line):
                        ended = "done"
                        break
                except CompletionError:
                    ended = "error"  # e.g. finish_reason length: the attempt fails at once (spec §1.4)
                    break
            return {
                "kind": "sse",
                "status": 200,
                "lines": lines,
                "ended": ended,
                "duration_s": loop.time() - start,
            }
        finally:
            await response.aclose()
