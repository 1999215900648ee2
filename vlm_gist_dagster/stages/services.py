"""Where the stages send their requests: endpoints, vision servers, caches and limits of one run."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .. import paths
from ..clients.cache import SIMULATOR, CacheMode, ResponseCache, service_identity
from ..clients.chat import ChatClient
from ..clients.describe import ProgressEvent, ProgressTracker
from ..clients.embeddings import EmbeddingBackend, EmbeddingsClient, SentenceTransformerEmbeddings
from ..clients.endpoints import EndpointLike, resolve_urls
from ..clients.transport import RetryPolicy
from ..clients.vision import VisionClient, vision_server_urls
from ..protocol.endpoints import ENDPOINTS
from ..protocol.label_matching import DefinitionsCache
from .definitions_store import DefinitionsStore

__all__ = ["PAPER_DEFINITIONS_SERVICE", "CacheMode", "InitialDefinitions", "Services", "progress_logger"]

#: The service that wrote the paper's published definitions (gpt-4o-2024-11-20 via OpenAI's API).
PAPER_DEFINITIONS_SERVICE = service_identity(ENDPOINTS["OpenAI"].completions_url)
#: ``LabelMatchingSettings.initial_definitions``.
InitialDefinitions = Literal["paper", "paper_any_service", "none"]


@dataclass(frozen=True)
class Services:
    """Connection settings shared by the stages of a run.

    * ``endpoint_urls``: chat endpoint name → base URL override (also ``VLM_GIST_ENDPOINT_URL_<NAME>``).
    * ``vision_urls``: model family → base URL (default: ``settings/vision_servers.json`` + environment).
    * ``env``: where API keys are read (default ``os.environ``).
    * ``cache_mode``: a :class:`~vlm_gist_dagster.clients.cache.CacheMode` (or its name): ``use`` the
      response cache (default), ``refresh`` it (ask again, store), or ``bypass`` it entirely.
    * ``simulated``: the built-in simulator answers every request. Cached answers (responses, vision
      calls, embeddings, definitions) are then filed under the service ``simulator`` instead of each
      server's origin, so a real run never reads a simulated answer and vice versa.
    * ``concurrency``: chat requests in flight per endpoint (None: the paper's CPU count − 1).
    * ``vision_concurrency``: requests in flight per vision server (the real servers run one model).
    * ``retry``: the transport retry policy of every client (None: each client's default).
    * ``embeddings``: ``endpoint`` (OpenAI-compatible, ``embeddings_endpoint``/``embeddings_model``)
      or ``local`` (sentence-transformers, extra ``local``).
    * ``paper_definitions``: the paper's published definitions file (None: found or downloaded by
      ``datasets.paper_definitions.resolve_paper_definitions``, ``$VLM_GIST_PAPER_DEFINITIONS`` first).
    * ``response_cache_dir``: the response cache's root, a folder or an ``s3://`` (fsspec) URL (None:
      ``<data_dir>/cache/responses``, or ``$VLM_GIST_RESPONSE_CACHE_DIR`` when ``data_dir`` is None too).
      The label-matching definitions stay under ``<data_dir>/cache/definitions`` on a local or shared
      volume: they are merged under a file lock, which object stores do not have.
    """

    endpoint_urls: Mapping[str, str] = field(default_factory=dict)
    vision_urls: Mapping[str, str] | None = None
    env: Mapping[str, str] | None = None
    data_dir: Path | None = None
    cache_mode: CacheMode = CacheMode.USE
    simulated: bool = False
    concurrency: int | None = None
    requests_per_minute: float | None = None
    vision_concurrency: int = 1
    retry: RetryPolicy | None = None
    embeddings: Literal["endpoint", "local"] = "endpoint"
    embeddings_endpoint: str = "OpenAI"
    embeddings_model: str = "text-embedding-3-large"
    local_embeddings_model: str | None = None
    paper_definitions: Path | None = None
    response_cache_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_mode", CacheMode.parse(self.cache_mode))

    @property
    def environment(self) -> Mapping[str, str]:
        return os.environ if self.env is None else self.env

    @property
    def cache_dir(self) -> Path:
        return (self.data_dir or paths.data_dir()) / "cache"

    @property
    def service_identity(self) -> str | None:
        """The identity every client files its answers under: ``simulator``, or None (each server's
        origin)."""
        return SIMULATOR if self.simulated else None

    def endpoint_identity(self, endpoint: EndpointLike) -> str:
        """Who answers chat requests to ``endpoint`` (URL overrides applied; no key needed)."""
        if self.simulated:
            return SIMULATOR
        urls = resolve_urls(endpoint, endpoint_urls=self.endpoint_urls, env=self.environment)
        return service_identity(urls.completions_url)

    def definitions_store(
        self,
        endpoint: EndpointLike,
        initial: InitialDefinitions = "none",
        *,
        progress: Callable[[str], None] | None = None,
    ) -> DefinitionsStore:
        """The label-matching definitions written by the LLM behind ``endpoint``:
        ``<cache>/definitions/<service>.json`` (the paper's file format), one file per service, over the
        paper's published definitions when ``initial`` says this service starts from them (``paper``:
        only OpenAI's API, which wrote them; ``paper_any_service``: any service)."""
        identity = self.endpoint_identity(endpoint)
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", identity).strip("_") or "_"
        use_paper = initial == "paper_any_service" or (
            initial == "paper" and identity == PAPER_DEFINITIONS_SERVICE
        )
        return DefinitionsStore(
            self.cache_dir / "definitions" / f"{slug}.json",
            initial=self.paper_definitions_cache(progress=progress) if use_paper else None,
        )

    def paper_definitions_cache(self, progress: Callable[[str], None] | None = None) -> DefinitionsCache:
        """The paper's published definitions (see :attr:`paper_definitions`)."""
        from ..datasets.paper_definitions import resolve_paper_definitions

        path = self.paper_definitions or resolve_paper_definitions(env=self.environment, progress=progress)
        return DefinitionsCache.read(path, missing_ok=False)

    @property
    def lock_dir(self) -> Path:
        """Cross-process locks of stateful servers (``<data dir>/locks/vision``)."""
        return (self.data_dir or paths.data_dir()) / "locks" / "vision"

    def response_cache(self) -> ResponseCache:
        if self.response_cache_dir:
            root: str | Path | None = self.response_cache_dir
        elif self.data_dir is not None:
            root = self.cache_dir / "responses"
        else:
            root = None  # the environment's default (clients.cache.default_cache_dir)
        return ResponseCache(root, mode=self.cache_mode)

    def chat_client(self) -> ChatClient:
        return ChatClient(
            endpoint_urls=self.endpoint_urls,
            env=self.env,
            concurrency=self.concurrency,
            requests_per_minute=self.requests_per_minute,
            retry=self.retry,
            cache=self.response_cache(),
            service_identity=self.service_identity,
        )

    def vision_client(self, family: str) -> VisionClient:
        urls = dict(self.vision_urls) if self.vision_urls else vision_server_urls(env=self.environment)
        return VisionClient(
            family,
            urls[family],
            env=self.env,
            concurrency=self.vision_concurrency,
            retry=self.retry,
            cache=self.response_cache(),
            service_identity=self.service_identity,
            lock_dir=self.lock_dir,
        )

    def embeddings_client(self) -> EmbeddingBackend:
        if self.embeddings == "local":
            return SentenceTransformerEmbeddings(self.local_embeddings_model, cache=self.response_cache())
        return EmbeddingsClient(
            self.embeddings_endpoint,
            model=self.embeddings_model,
            cache=self.response_cache(),
            service_identity=self.service_identity,
            endpoint_urls=self.endpoint_urls,
            env=self.env,
            retry=self.retry,
        )


def progress_logger(
    total: int, what: str, log: Callable[[str], None] | None
) -> Callable[[ProgressEvent], None] | None:
    """A progress callback that logs "37/64 images (57.8%), 4.1 img/s, ETA 7 s" about every 10 %."""
    if log is None or total == 0:
        return None
    tracker = ProgressTracker(total)
    step = max(1, total // 10)

    def report(event: ProgressEvent) -> None:
        line = tracker.update(event)
        if event.done % step == 0 or event.done == event.total:
            log(f"{what}: {line}")

    return report
