"""Shared plumbing of the simulated servers: controls store, request context, faults on the wire."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .controls import SERVER_WIDE_CONTROLS, ModelControls, ServerControls
from .faults import AttemptTracker, choose_fault, latency_seconds
from .log import RequestLog, RequestRecord
from .world import World

ABORT_KEY = "vlm_gist_sim.abort"
#: Scope key under which :class:`AbortableApp` collects the request body's chunks as they are received.
BODY_KEY = "vlm_gist_sim.body"


class RejectedRequest(ValueError):
    """A request the real server's ``preprocess`` (or model) rejects: it answers HTTP 500 with
    ``{"detail": "Inference failed: <message>"}`` (``Update failed: ...`` on sam2's ``/update``)."""


def request_object(payload: Any) -> dict[str, Any]:
    """``payload`` when it is a JSON object; else :class:`RejectedRequest` with the error the server's
    ``preprocess`` meets on its first ``payload.get``."""
    if not isinstance(payload, dict):
        raise RejectedRequest(f"'{type(payload).__name__}' object has no attribute 'get'")
    return payload


class ControlsStore:
    """The live controls of every server, replaceable at run time from any thread."""

    def __init__(self, controls: dict[str, ServerControls]) -> None:
        self._lock = threading.Lock()
        self._controls = dict(controls)

    def get(self, server: str) -> ServerControls:
        with self._lock:
            return self._controls.get(server) or ServerControls()

    def set(self, server: str, controls: ServerControls) -> None:
        with self._lock:
            self._controls[server] = controls

    def update(self, server: str, model: str | None, **changes: Any) -> ServerControls:
        with self._lock:
            current = self._controls.get(server) or ServerControls()
            if model is None:  # the server's seed and behaviours; with a model, ``seed=`` is that model's
                server_wide = {k: changes.pop(k) for k in list(changes) if k in SERVER_WIDE_CONTROLS}
                if server_wide:
                    current = ServerControls.model_validate({**current.model_dump(), **server_wide})
            if changes:
                current = current.with_model(model, **changes)
            self._controls[server] = current
            return current


@dataclass
class SimContext:
    """Everything a server app needs (shared by all servers of one simulator)."""

    world: World
    controls: ControlsStore
    log: RequestLog
    attempts: AttemptTracker = field(default_factory=AttemptTracker)
    #: Keep each request's body in its log record (tests assert on what the server received).
    capture_bodies: bool = False


class AbortableApp:
    """Outermost ASGI wrapper: exposes a way to abort the TCP connection without any response.

    uvicorn passes its ``RequestResponseCycle.send`` bound method as ``send``; the cycle owns the
    transport. ``transport.abort()`` closes the socket at once, so the client sees the connection end
    before a status line (httpx: ``RemoteProtocolError``, a ``TransportError``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is not None:
                scope[ABORT_KEY] = transport.abort
            # Collect the body as the app reads it (references to chunks already received; cheap), so
            # the request log can keep what the server actually got when capture_bodies is on.
            chunks: list[bytes] = []
            scope[BODY_KEY] = chunks

            async def recording_receive() -> Any:
                message = await receive()
                if message.get("type") == "http.request":
                    chunks.append(message.get("body", b""))
                return message

            await self.app(scope, recording_receive, send)
            return
        await self.app(scope, receive, send)


async def drop_connection(request: Request) -> Response:
    """Abort the connection (see :class:`AbortableApp`); the returned response is never sent."""
    abort: Callable[[], None] | None = request.scope.get(ABORT_KEY)
    if abort is None:  # not served by uvicorn's h11 protocol: the server answers its own plain 500
        raise ConnectionAbortedError("simulated connection drop")
    abort()
    for _ in range(3):  # let uvicorn notice the disconnect so it ignores our response
        await asyncio.sleep(0)
    return Response(status_code=500)


class RequestTimer:
    """Measures one request and appends its record to the log exactly once."""

    def __init__(self, ctx: SimContext, server: str, request: Request) -> None:
        self.ctx = ctx
        self.server = server
        self.method = request.method
        self.path = request.url.path
        self.start_wall = time.time()
        self.start = time.monotonic()
        self.scope = request.scope
        self.model: str | None = None
        self.image_key: str | None = None
        self.attempt: int | None = None
        self.fault: str | None = None
        self._done = False

    def finish(self, status: int | None, detail: str | None = None) -> None:
        if self._done:
            return
        self._done = True
        self.ctx.log.append(
            RequestRecord(
                time=self.start_wall,
                server=self.server,
                method=self.method,
                path=self.path,
                model=self.model,
                image_key=self.image_key,
                status=status,
                fault=self.fault,
                duration_s=time.monotonic() - self.start,
                attempt=self.attempt,
                detail=detail,
                body=b"".join(self.scope.get(BODY_KEY) or ()) if self.ctx.capture_bodies else None,
            )
        )


def body_digest(request: Request) -> str:
    """A short hash of the request body as received (after the handler has read it): what makes two
    requests "the same request" for :class:`~.faults.AttemptTracker`."""
    chunks = request.scope.get(BODY_KEY) or ()
    return hashlib.blake2b(b"".join(chunks), digest_size=12).hexdigest()


@dataclass(frozen=True)
class FaultPlan:
    """The fault (or none) and latency chosen for one request, and its attempt number.

    ``parts`` seed every draw of the answer: ``(seed, server, model, key, attempt)``. ``chain`` identifies
    the request for the attempt tracker (see :func:`settle`)."""

    fault: str | None
    latency_s: float
    controls: ModelControls
    seed: int
    attempt: int
    parts: tuple
    chain: tuple = ()


def plan_request(
    ctx: SimContext,
    server: str,
    model: str | None,
    key: str,
    *,
    content: str | None = None,
    allowed: frozenset[str] | None = None,
) -> FaultPlan:
    """The attempt number of this request, and its fault and latency drawn deterministically from
    ``(seed, server, model, key, attempt, content)``.

    ``content`` (usually :func:`body_digest`) tells identical requests apart from other requests about the
    same image: only an identical request continues a run of attempts. A fault ends the attempt at once
    (the next identical request is the next attempt); otherwise the handler calls :func:`settle` once it
    knows whether its answer is usable."""
    server_controls = ctx.controls.get(server)
    controls = server_controls.for_model(model)
    chain = (server, model, key, content)
    attempt = ctx.attempts.current(chain)
    seed = server_controls.seed if controls.seed is None else controls.seed
    parts = (seed, server, model, key, attempt)
    # Faults and latency are drawn per request (its content too): two different requests about the same
    # image (another model's prompts, another crop) are independent; the answer's draws use ``parts``.
    fault = choose_fault(controls.faults, *parts, content, allowed=allowed)
    if fault is not None:
        ctx.attempts.failed(chain, attempt)
    latency = latency_seconds(controls.latency_mean_s, controls.latency_jitter_s, *parts, content)
    return FaultPlan(fault, latency, controls, seed, attempt, parts, chain)


def settle(ctx: SimContext, plan: FaultPlan, *, usable: bool = True) -> None:
    """After an answer without a fault: a usable answer ends the run of attempts; an unusable one (e.g. a
    description with no objects, which a client rejects and asks again for) makes the next identical
    request the next attempt, with fresh draws."""
    if plan.fault is not None:
        return
    if usable:
        ctx.attempts.succeeded(plan.chain)
    else:
        ctx.attempts.failed(plan.chain, plan.attempt)


async def http_fault_response(
    plan: FaultPlan,
    request: Request,
    error_body: Callable[[int, str], dict[str, Any]],
) -> Response | None:
    """The response for HTTP-level faults (429/500/503/drop), or None when the request proceeds."""
    fault = plan.fault
    if fault == "rate_limit":
        return JSONResponse(
            error_body(429, "Rate limit exceeded (simulated)."),
            status_code=429,
            headers={"Retry-After": str(plan.controls.faults.retry_after_s)},
        )
    if fault == "server_error":
        return JSONResponse(error_body(500, "Internal server error (simulated)."), status_code=500)
    if fault == "unavailable":
        return JSONResponse(error_body(503, "Service unavailable (simulated)."), status_code=503)
    if fault == "connection_drop":
        return await drop_connection(request)
    return None


def truncated_json_response(content: dict[str, Any] | list[Any], status_code: int = 200) -> Response:
    """A 200 whose JSON body is cut in half (valid HTTP framing, unparseable body)."""
    body = JSONResponse(content).body
    return Response(body[: max(1, len(body) // 2)], status_code=status_code, media_type="application/json")


Handler = Callable[[Request], Awaitable[Response]]
