"""The response cache: a re-run (or a resumed, crashed partition) never repeats a paid call, and an
answer is only ever replayed to a run that talks to the same service.

One cache serves every client (chat attempts, vision calls, embeddings); what an entry is about is a
typed :class:`CacheKey`, hashed to a file name:

======================  ==============================================================================
field                   meaning
======================  ==============================================================================
``kind``                ``chat`` (one attempt), ``vision`` (one call, or a SAM2 update + track pair),
                        ``embedding`` (the vector of one text)
``service``             the identity of the service that answers (:func:`service_identity`): its origin
                        (``https://api.openai.com``, ``http://gpu-box:9001``), or ``simulator`` while
                        the built-in simulator answers. A real run never reads a simulated entry and
                        vice versa, whatever ports or endpoint names the two runs used.
``route``               the path on that service (``/v1/chat/completions``, ``/infer``, ``/update+/infer``)
``model``               the model name (chat, embeddings) or the vision model flavour
``payload_sha256``      sha256 of the canonical JSON request body (or of the embedded text); bodies never
                        hold a secret (keys travel only in headers, which are not part of the key)
``subject``             what the conversation is about beyond its payload (:class:`Subject`: an image, a
                        definition, a validation crop), so two detections with byte-identical requests
                        keep their own attempts; None for vision and embeddings
``attempt``             the paper's 0-based attempt number (chat), None otherwise
======================  ==============================================================================

**Which chat attempts are cached — all of them, by attempt number.** The paper's content-retry loop
sends the *same* payload up to 1 + ``retry`` times (docs/protocol/pipeline.md §1.6); the outcome of attempt
``k`` depends on the model's sampling. The raw result of every completed attempt is stored
under its number, so a re-run replays the same attempt sequence (the same failed attempts, the same
success, the same Fail / Ret. / Time / tokens) with zero calls. Transport failures (429, 5xx,
connection errors) and 401/403 are not attempts and are never cached.

**Value.** The raw result of one completed exchange as JSON, plus the key it was stored under (a file
whose stored key differs is a miss). Chat records are interpreted by the same code whether they come
from the network or from here (:mod:`.replay`).

**Writes** are atomic per entry: a temporary file in the same directory, ``fsync``, then
``os.replace``; a crash leaves either the old file or the new one, never a torn one. Unreadable files
are misses.

**Object storage.** The root may be an fsspec URL (``s3://bucket/prefix``, ``gs://…``; a
:class:`upath.UPath`), so run workers on different machines share one cache without a shared volume.
An object store's PUT is atomic (a reader sees the old object or the new one, never a part), so each entry
is written there directly, with no temporary object; a missing object is a miss, and so is one that
cannot be read (a warning says why). Credentials and endpoints are fsspec's (for S3: the usual
``AWS_*`` variables, ``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible stores).

**Modes** (:class:`CacheMode`, ``VLM_GIST_CACHE_MODE``): ``use`` reads and writes; ``refresh`` asks
again and overwrites; ``bypass`` neither reads nor writes.

Layout: ``<root>/<digest[:2]>/<digest>.json``. Default root: ``<data dir>/cache/responses``
(``VLM_GIST_RESPONSE_CACHE_DIR`` moves it).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import numpy as np

from .. import paths
from ..files import atomic_write
from .errors import get_logger

if TYPE_CHECKING:
    from upath import UPath

__all__ = [
    "CACHE_VERSION",
    "SIMULATOR",
    "CacheKey",
    "CacheKind",
    "CacheMode",
    "ResponseCache",
    "Subject",
    "cache_root",
    "canonical_json",
    "decode_vector",
    "default_cache_dir",
    "encode_vector",
    "service_identity",
    "sha256_json",
]

#: 2: entries are keyed by the identity of the service that answered (1 keyed by endpoint name and URL).
CACHE_VERSION = 2
#: The service identity of every answer the built-in simulator gives.
SIMULATOR = "simulator"
log = get_logger("vlm_gist_dagster.clients.cache")

CacheKind = Literal["chat", "vision", "embedding"]


class CacheMode(enum.StrEnum):
    """How a run uses the caches (``VLM_GIST_CACHE_MODE``)."""

    USE = "use"
    """Read stored answers, store new ones (the default)."""
    REFRESH = "refresh"
    """Ask again, and store the new answers over the old ones."""
    BYPASS = "bypass"
    """Neither read nor write: a run that must not touch the caches."""

    @classmethod
    def parse(cls, value: str | CacheMode) -> CacheMode:
        """``value`` as a mode; a ValueError listing the modes otherwise.

        >>> CacheMode.parse("refresh") is CacheMode.REFRESH
        True
        """
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"cache mode must be one of {[m.value for m in cls]}, got {value!r}") from None

    @property
    def reads(self) -> bool:
        return self is CacheMode.USE

    @property
    def writes(self) -> bool:
        return self is not CacheMode.BYPASS


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the same value always gives the same string."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def default_cache_dir() -> Path | UPath:
    """``$VLM_GIST_RESPONSE_CACHE_DIR``, else ``<data dir>/cache/responses`` (``$VLM_GIST_DATA_DIR``
    moves the data dir)."""
    return cache_root(paths.response_cache_dir())


def cache_root(root: str | os.PathLike[str] | UPath) -> Path | UPath:
    """A local :class:`~pathlib.Path` for a local folder (``file://`` URLs included), a
    :class:`upath.UPath` for any other fsspec URL (``s3://bucket/prefix``).

    >>> cache_root("/tmp/cache")
    PosixPath('/tmp/cache')
    >>> type(cache_root("memory://cache")).__name__
    'MemoryPath'
    """
    from upath import UPath

    if isinstance(root, UPath):
        if root.protocol in ("", "file", "local"):
            return Path(root.path)
        return root
    text = os.fspath(root)
    if "://" in text and not text.startswith("file://"):
        return UPath(text)
    return Path(text.removeprefix("file://"))


def service_identity(url: str | httpx.URL, *, simulated: bool = False) -> str:
    """Who answers requests to ``url``: its origin (scheme, host and port), or :data:`SIMULATOR`.

    >>> service_identity("https://api.openai.com/v1/embeddings")
    'https://api.openai.com'
    >>> service_identity("http://127.0.0.1:8900/v1/chat/completions", simulated=True)
    'simulator'
    """
    if simulated:
        return SIMULATOR
    parsed = httpx.URL(str(url))
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


@dataclass(frozen=True)
class Subject:
    """What a chat conversation is about beyond its payload (part of a :class:`CacheKey`).

    >>> Subject.image("ab12").value, Subject.crop("ab12", 3).value
    ('image:ab12', 'crop:ab12#3')
    """

    kind: Literal["image", "definition", "crop"]
    id: str

    @classmethod
    def image(cls, image_sha256: str) -> Subject:
        """A structured description of the image with these bytes."""
        return cls("image", image_sha256)

    @classmethod
    def definition(cls, definition_key: str) -> Subject:
        """A label-matching definition (the definitions cache key of the text defined)."""
        return cls("definition", definition_key)

    @classmethod
    def crop(cls, image_sha256: str, detection_index: int) -> Subject:
        """The validation of one detection's crop of an image."""
        return cls("crop", f"{image_sha256}#{detection_index}")

    @property
    def value(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True)
class CacheKey:
    """What a cached answer is about (see the module docstring); never holds a secret."""

    kind: CacheKind
    service: str
    route: str
    model: str
    payload_sha256: str
    subject: Subject | None = None
    attempt: int | None = None

    @classmethod
    def for_request(
        cls,
        kind: CacheKind,
        url: str | httpx.URL,
        model: str,
        payload: Any,
        *,
        service: str | None = None,
        route: str | None = None,
        subject: Subject | None = None,
        attempt: int | None = None,
    ) -> CacheKey:
        """The key of a request to ``url``: ``service`` defaults to the URL's origin
        (:func:`service_identity`), ``route`` to its path."""
        parsed = httpx.URL(str(url))
        return cls(
            kind,
            service if service is not None else service_identity(parsed),
            route if route is not None else parsed.path,
            model,
            sha256_json(payload),
            subject,
            attempt,
        )

    def material(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "service": self.service,
            "route": self.route,
            "model": self.model,
            "payload_sha256": self.payload_sha256,
            "subject": self.subject.value if self.subject is not None else None,
            "attempt": self.attempt,
            "v": CACHE_VERSION,
        }

    @property
    def digest(self) -> str:
        return sha256_json(self.material())


class ResponseCache:
    """Answers in a folder or a bucket, one JSON file per :class:`CacheKey` (see the module docstring).

    >>> import tempfile
    >>> cache = ResponseCache(tempfile.mkdtemp())
    >>> key = CacheKey.for_request("chat", "https://api.openai.com/v1/chat/completions", "gpt-5", {"a": 1})
    >>> key.service, key.route
    ('https://api.openai.com', '/v1/chat/completions')
    >>> cache.get(key) is None
    True
    >>> cache.put(key, {"kind": "json", "status": 200, "body_text": "{}"})
    >>> cache.get(key)["status"]
    200
    """

    def __init__(
        self, root: str | os.PathLike[str] | UPath | None = None, *, mode: CacheMode | str = CacheMode.USE
    ) -> None:
        #: A local folder, or a UPath on object storage (see the module docstring).
        self.root = cache_root(root) if root is not None else default_cache_dir()
        self.remote = not isinstance(self.root, Path)
        self.mode = CacheMode.parse(mode)
        self.hits = 0
        self.misses = 0
        self.writes = 0

    def path_for(self, key: CacheKey) -> Path | UPath:
        digest = key.digest
        return self.root / digest[:2] / f"{digest}.json"

    def get(self, key: CacheKey) -> dict[str, Any] | None:
        """The stored answer, or None (a miss, mode refresh/bypass, or an unreadable file)."""
        if not self.mode.reads:
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
        except Exception as exc:  # object stores raise their client's own errors too (botocore, …)
            if not self.remote:
                raise
            log.warning("response cache object %s is unreadable (%r); treating it as a miss", path, exc)
            self.misses += 1
            return None
        if not isinstance(stored, dict) or stored.get("key") != key.material() or "response" not in stored:
            self.misses += 1
            return None
        self.hits += 1
        return stored["response"]

    def put(self, key: CacheKey, response: dict[str, Any]) -> None:
        """Store ``response`` (a JSON-able dict) atomically; a no-op in mode bypass."""
        if not self.mode.writes:
            return
        record = {"key": key.material(), "stored_at": time.time(), "response": response}
        text = json.dumps(record, ensure_ascii=False, indent=1)
        path = self.path_for(key)
        if isinstance(path, Path):
            atomic_write(path, text)
        else:
            # One PUT: atomic on an object store, so no temporary object and no rename (which S3 lacks).
            path.write_bytes(text.encode("utf-8"))
        self.writes += 1


def encode_vector(vector: np.ndarray) -> dict[str, Any]:
    """An embedding as a cache answer: its float64 bytes in base64 (exact, and a third of the size of
    the numbers written out).

    >>> decode_vector(encode_vector(np.array([0.1, -2.5]))).tolist()
    [0.1, -2.5]
    """
    data = np.ascontiguousarray(vector, dtype="<f8")
    if data.ndim != 1:
        raise ValueError(f"an embedding is a vector, got shape {data.shape}")
    return {
        "kind": "embedding",
        "dim": int(data.shape[0]),
        "float64_b64": base64.b64encode(data.tobytes()).decode(),
    }


def decode_vector(answer: dict[str, Any]) -> np.ndarray | None:
    """The vector of an :func:`encode_vector` answer, None when the answer is not one."""
    try:
        vector = np.frombuffer(base64.b64decode(answer["float64_b64"]), dtype="<f8").astype(np.float64)
    except (KeyError, TypeError, ValueError):
        return None
    return vector if vector.shape == (answer.get("dim"),) else None
