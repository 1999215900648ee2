"""Deterministic randomness and fault decisions.

Every random choice of the simulator comes from a hash of ``(seed, server, model, key, attempt, tag)``,
never from a global RNG, so a run is reproducible whatever order concurrent requests arrive in and
whatever else the simulator answers: ``key`` is the image key (or a hash of the request text) and
``attempt`` is the attempt number of *this request*: how many times in a row the same request (same
model, same bytes) got an unusable answer (a fault, or an answer a client must reject). A retry after a
fault therefore gets a fresh draw and can succeed, while a usable answer ends the run of attempts: the
next identical request, from a re-run or from an identical copy of the model, is attempt 0 again and
gets the same answer (:class:`AttemptTracker`). Two models, or one model alone and in a full run, never
share draws. The vision servers' results do not depend on the attempt at all, only their faults do.

One uniform number per request picks at most one fault: the rates partition [0, 1) in the order of
:data:`~vlm_gist_dagster.sim.controls.FAULT_TYPES`, so each fault occurs with exactly its configured
probability. That number (and the latency) is drawn from the attempt's parts and a hash of the request
body, so two different requests about one image (two models' prompts, two crops) fail independently.
What each fault does on the wire:

==========================  ==================================================================================
fault                       chat completions (SSE / JSON)                    vision servers, embeddings
==========================  ==================================================================================
``rate_limit``              429, ``Retry-After: <retry_after_s>``, OpenAI error body   429 + Retry-After, ``{"detail"}``
``server_error``            500, OpenAI error body                                     500, ``{"detail"}``
``unavailable``             503, OpenAI error body                                     503, ``{"detail"}``
``connection_drop``         TCP connection aborted before any response byte (httpx raises
                            ``RemoteProtocolError``, a ``TransportError``)             same
``stall_first_chunk``       SSE: headers, then silence for ``stall_seconds`` before the first chunk;
                            JSON: silence before the response                          silence before the response
``stall_mid_stream``        SSE: silence for ``stall_seconds`` after about half the content chunks; JSON: as
                            ``stall_first_chunk``                                      (not applied)
``truncated_stream``        SSE: about half the content, then the stream ends cleanly with no finish chunk,
                            no usage and no ``data: [DONE]``; JSON: a 200 whose body is the response JSON cut
                            in half                                                    200 with the body cut in half
``invalid_json``            200, ``finish_reason: stop``, prose without any ``{`` or ``[``   (not applied)
``finish_length``           the first ~40% of the text, ``finish_reason: "length"``    (not applied)
``finish_content_filter``   empty content, ``finish_reason: "content_filter"``         (not applied)
==========================  ==================================================================================

After a stall the response continues normally, so a client with a long enough timeout still succeeds.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Hashable, Iterable

import numpy as np

from .controls import FAULT_TYPES, FaultControls


def hash64(*parts: object) -> int:
    """A stable 64-bit hash of ``parts`` (their ``repr``), independent of PYTHONHASHSEED."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def uniform(*parts: object) -> float:
    """A deterministic number in [0, 1) derived from ``parts``.

    >>> uniform(0, "chat", "x") == uniform(0, "chat", "x")
    True
    """
    return hash64(*parts) / 2.0**64


def normal(*parts: object) -> float:
    """A deterministic standard-normal number (Box–Muller on two hashed uniforms)."""
    u1 = max(uniform(*parts, "n1"), 1e-12)
    u2 = uniform(*parts, "n2")
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def rng(*parts: object) -> np.random.Generator:
    """A numpy generator seeded from ``parts`` (for vectorised draws)."""
    return np.random.default_rng(hash64(*parts))


def choose_fault(
    faults: FaultControls,
    *parts: object,
    allowed: Iterable[str] | None = None,
) -> str | None:
    """The fault to inject for the request identified by ``parts``, or None.

    One uniform draw u; the fault whose slice of [0, 1) contains u wins. Faults not in ``allowed`` keep
    their slice but map to "no fault", so an allowed fault's rate does not depend on the others.
    """
    u = uniform(*parts, "fault")
    allowed_set = set(FAULT_TYPES if allowed is None else allowed)
    edge = 0.0
    for name in FAULT_TYPES:
        edge += getattr(faults, name)
        if u < edge:
            return name if name in allowed_set else None
    return None


class AttemptTracker:
    """Attempt numbers of requests, keyed by what makes two requests "the same one" (thread-safe).

    ``current(key)`` is 0 for a new request; :meth:`failed` makes the next identical request the next
    attempt, :meth:`succeeded` ends the run of attempts, so the next identical request is attempt 0.

    >>> t = AttemptTracker()
    >>> t.current("r"), t.failed("r", 0), t.current("r"), t.succeeded("r"), t.current("r")
    (0, None, 1, None, 0)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Hashable, int] = {}

    def current(self, key: Hashable) -> int:
        with self._lock:
            return self._counts.get(key, 0)

    def failed(self, key: Hashable, attempt: int) -> None:
        with self._lock:
            self._counts[key] = max(self._counts.get(key, 0), attempt + 1)

    def succeeded(self, key: Hashable) -> None:
        with self._lock:
            self._counts.pop(key, None)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


def latency_seconds(mean: float, jitter: float, *parts: object) -> float:
    """Delay before the first byte: ``mean + jitter·N(0,1)``, clipped at 0."""
    if mean <= 0 and jitter <= 0:
        return 0.0
    return max(0.0, mean + jitter * normal(*parts, "latency"))
