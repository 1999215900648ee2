"""The simulator's request log: one record per request, for tests that count calls.

>>> log = RequestLog()
>>> log.append(RequestRecord(time=0.0, server="chat", method="POST", path="/v1/chat/completions",
...                          model="sim/strong", image_key="coco/1", status=200, fault=None, duration_s=0.1))
>>> len(log), log.filter(server="chat")[0].status
(1, 200)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestRecord:
    """One handled request.

    ``status`` is None when the connection was dropped without a response; ``fault`` names the injected
    fault (None: a normal answer); ``attempt`` is the request's attempt number used for the deterministic
    draws (0, then 1, 2, ... while the same request keeps getting unusable answers; :mod:`.faults`); ``duration_s`` runs until the last byte was sent (or the stream ended).
    ``body`` is the request body as received, kept only when the simulator runs with ``capture_bodies``.
    """

    time: float
    server: str
    method: str
    path: str
    model: str | None
    image_key: str | None
    status: int | None
    fault: str | None
    duration_s: float
    attempt: int | None = None
    detail: str | None = None
    body: bytes | None = None


class RequestLog:
    """A thread-safe, append-only list of :class:`RequestRecord` (iteration works on a snapshot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def filter(self, **fields: object) -> list[RequestRecord]:
        """Records whose attributes equal every given value, e.g. ``filter(server="chat", status=429)``."""
        return [r for r in self.snapshot() if all(getattr(r, k) == v for k, v in fields.items())]

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self.snapshot())

    def __getitem__(self, index: int) -> RequestRecord:
        with self._lock:
            return self._records[index]
