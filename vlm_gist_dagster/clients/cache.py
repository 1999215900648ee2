"""The response cache: a re-run (or a resumed, crashed partition) never repeats a paid call.

**Key.** sha256 of the canonical JSON (sorted keys, no whitespace) of::

    {"endpoint": <endpoint name>, "url": <URL the request goes to>, "model": <model name>,
     "payload_sha256": <sha256 of the canonical JSON payload>, "image_sha256": <sha256 of the image
     bytes sent, or null>, "attempt": <0-based attempt number, or null>, "v": 1}

The payload is the JSON body as sent; it never holds a secret (keys travel only in headers, which are
not part of the key). The image hash is already implied by the payload (the data URI is in it) but is
kept explicit so the key says what it is about.

**Value.** The raw result of one *completed* HTTP exchange (a chat attempt that produced a
completion, a failed completion, a non-200 status the model is blamed for, or a timeout) as JSON,
plus metadata. Chat records are interpreted by the same code whether they come from the network or
from here, so a replay yields exactly the live outcome.

**Which attempts are cached — all of them, by attempt number.** The paper's content-retry loop sends
the *same* payload up to 1 + ``retry`` times (spec/pipeline.md §1.6); the outcome of attempt ``k``
depends on the model's sampling. We cache the raw result of every completed attempt under its attempt
number, so a re-run replays the same attempt sequence — the same failed attempts, the same success,
the same Fail / Ret. / Time / tokens — with zero calls. Caching only successes would make a re-run
repeat the failed (paid) attempts and then replay the cached success as attempt 0, changing Ret.
Transport failures (429, 5xx, connection errors) and 401/403 are not attempts and are never cached.

**Writes** are atomic per response: a temporary file in the same directory, ``fsync``, then
``os.replace``; a crash leaves either the old file or the new one, never a torn one. Unreadable files
are treated as misses.

**Modes.** ``bypass=True``: no reads and no writes (a run that must not touch the cache);
``refresh=True``: no reads, but fresh results overwrite the stored ones.

Layout: ``<root>/<key[:2]>/<key>.json``. Default root: ``<data dir>/cache/responses``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from .errors import get_logger

__all__ = ["CACHE_VERSION", "CacheKey", "ResponseCache", "canonical_json", "default_cache_dir", "sha256_json"]

CACHE_VERSION = 1
log = get_logger("vlm_gist_dagster.clients.cache")


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the same value always gives the same string."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    """``<data dir>/cache/responses`` (``$VLM_GIST_DATA_DIR`` moves the data dir)."""
    return paths.data_dir() / "cache" / "responses"


@dataclass(frozen=True)
class CacheKey:
    """What a cached response is about (never a secret)."""

    endpoint: str
    url: str
    model: str
    payload_sha256: str
    image_sha256: str | None = None
    attempt: int | None = None

    @classmethod
    def for_request(
        cls,
        endpoint: str,
        url: str,
        model: str,
        payload: Any,
        *,
        image_sha256: str | None = None,
        attempt: int | None = None,
    ) -> CacheKey:
        return cls(endpoint, url, model, sha256_json(payload), image_sha256, attempt)

    def material(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "url": self.url,
            "model": self.model,
            "payload_sha256": self.payload_sha256,
            "image_sha256": self.image_sha256,
            "attempt": self.attempt,
            "v": CACHE_VERSION,
        }

    @property
    def digest(self) -> str:
        return sha256_json(self.material())


class ResponseCache:
    """Raw responses on disk, one JSON file per key (see the module docstring).

    >>> import tempfile
    >>> cache = ResponseCache(tempfile.mkdtemp())
    >>> key = CacheKey.for_request("OpenAI", "https://api.openai.com/v1/chat/completions", "gpt-5", {"a": 1})
    >>> cache.get(key) is None
    True
    >>> cache.put(key, {"kind": "json", "status": 200, "body_text": "{}"})
    >>> cache.get(key)["status"]
    200
    """

    def __init__(
        self, root: str | os.PathLike[str] | None = None, *, bypass: bool = False, refresh: bool = False
    ) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.bypass = bypass
        self.refresh = refresh
        self.hits = 0
        self.misses = 0
        self.writes = 0

    @property
    def reads_enabled(self) -> bool:
        return not (self.bypass or self.refresh)

    @property
    def writes_enabled(self) -> bool:
        return not self.bypass

    def path_for(self, key: CacheKey) -> Path:
        digest = key.digest
        return self.root / digest[:2] / f"{digest}.json"

    def get(self, key: CacheKey) -> dict[str, Any] | None:
        """The stored response record, or None (miss, bypass/refresh, or an unreadable file)."""
        if not self.reads_enabled:
            return None
        path = self.path_for(key)
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("response cache file %s is unreadable (%s); treating it as a miss", path, exc)
            self.misses += 1
            return None
        if not isinstance(stored, dict) or stored.get("key") != key.material() or "response" not in stored:
            self.misses += 1
            return None
        self.hits += 1
        return stored["response"]

    def put(self, key: CacheKey, response: dict[str, Any]) -> None:
        """Store ``response`` (a JSON-able dict) atomically; a no-op with ``bypass``."""
        if not self.writes_enabled:
            return
        path = self.path_for(key)
        record = {"key": key.material(), "stored_at": time.time(), "response": response}
        atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=1))
        self.writes += 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
