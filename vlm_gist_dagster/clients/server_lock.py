"""Exclusive use of one stateful vision server by the processes of one machine (issue 15 item 4).

The real SAM2-realtime server holds one global tracker: ``/load`` rebuilds it and ``/update`` replaces its
prompts, so an ``/update`` → ``/infer`` sequence of one run must never interleave with another run's
``/update`` or ``/load``. Inside a client an asyncio lock serialises its own sequences; across processes
(two partitions, two runs, a run and a backfill) a :class:`ServerLease` does: an exclusive file lock per
server (``<data dir>/locks/vision/<server>.lock``, ``filelock``) held for the whole sequence, the model
load included. Next to it, a small state file records which flavour the last sequence ran with and when,
so that a client

* loads the model when another client switched the server to another flavour since its own load, and
* does not ``/load`` (rebuild the tracker of) a server that another client is using with its flavour
  right now (a sequence within :data:`IN_USE_S`); a server idle longer than that is loaded once, as
  without the lease, in case it was restarted since.

A file lock serialises the processes of one machine (sharing one data directory). Runs on several
machines that share a SAM2 server need the Dagster pool of that server with limit 1 (see
``orchestration.policies.vision_server_pool``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from .cache import service_identity
from .errors import get_logger

__all__ = ["IN_USE_S", "LoadedState", "ServerLease", "server_slug"]

log = get_logger("vlm_gist_dagster.clients.server_lock")

#: A flavour recorded by a sequence this recent is taken as loaded (the server is in use with it).
IN_USE_S = 600.0
#: How often a waiting client tries the lock, and how often it says it is still waiting.
POLL_S = 0.02
REPORT_EVERY_S = 60.0


def server_slug(base_url: str) -> str:
    """A file name for a server: ``http://gpu-box:9001`` → ``http_gpu-box_9001``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", service_identity(base_url)).strip("_") or "_"


@dataclass(frozen=True)
class LoadedState:
    """What the last sequence on the server ran with: ``flavor`` (None: unknown, e.g. after an error)
    at ``used_at`` (epoch seconds), by ``by`` (``pid@host``, for people reading the file)."""

    flavor: str | None
    used_at: float
    by: str = ""

    def in_use(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - self.used_at < IN_USE_S


class ServerLease:
    """The lock and the state file of the server at ``base_url`` in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str], base_url: str) -> None:
        self.directory = Path(directory)
        self.base_url = base_url
        slug = server_slug(base_url)
        self.lock_path = self.directory / f"{slug}.lock"
        self.state_path = self.directory / f"{slug}.json"
        self._lock = FileLock(self.lock_path)

    def __repr__(self) -> str:
        return f"ServerLease({self.base_url!r}, {str(self.lock_path)!r})"

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[ServerLease]:
        """Hold the server exclusively (waiting, without blocking the event loop, while another process
        holds it)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        started = last_report = time.monotonic()
        while True:
            try:
                self._lock.acquire(timeout=0)  # one non-blocking try: cancellation-safe
                break
            except Timeout:
                now = time.monotonic()
                if now - last_report >= REPORT_EVERY_S:
                    waited = now - started
                    log.info("waiting %.0f s for %s: another run's sequence uses it", waited, self.base_url)
                    last_report = now
                await asyncio.sleep(POLL_S)
        try:
            yield self
        finally:
            self._lock.release()

    def state(self) -> LoadedState | None:
        """The recorded state; None when there is none (or it cannot be read: treated as unknown)."""
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            return LoadedState(data.get("flavor"), float(data["used_at"]), str(data.get("by", "")))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def record(self, flavor: str | None) -> None:
        """Record the flavour the server now has (call while holding the lease)."""
        data = {"flavor": flavor, "used_at": time.time(), "by": f"{os.getpid()}@{socket.gethostname()}"}
        fd, temp = tempfile.mkstemp(prefix=f".{self.state_path.name}.", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            os.replace(temp, self.state_path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
