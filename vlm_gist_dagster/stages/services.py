"""Where the stages send their requests: endpoints, vision servers, caches and limits of one run."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .. import paths
from ..clients.cache import ResponseCache
from ..clients.chat import ChatClient
from ..clients.describe import ProgressEvent, ProgressTracker
from ..clients.embeddings import EmbeddingCache, EmbeddingsClient, SentenceTransformerEmbeddings
from ..clients.vision import VisionClient, vision_server_urls

CacheMode = Literal["use", "refresh", "bypass"]


@dataclass(frozen=True)
class Services:
    """Connection settings shared by the stages of a run.

    * ``endpoint_urls``: chat endpoint name → base URL override (also ``VLM_GIST_ENDPOINT_URL_<NAME>``).
    * ``vision_urls``: model family → base URL (default: ``settings/vision_servers.json`` + environment).
    * ``env``: where API keys are read (default ``os.environ``).
    * ``cache_mode``: ``use`` the response cache (default), ``refresh`` it (ask again, store), or
      ``bypass`` it entirely.
    * ``concurrency``: chat requests in flight per endpoint (None: the paper's CPU count − 1).
    * ``vision_concurrency``: requests in flight per vision server (the real servers run one model).
    * ``embeddings``: ``endpoint`` (OpenAI-compatible, ``embeddings_endpoint``/``embeddings_model``)
      or ``local`` (sentence-transformers, extra ``local``).
    """

    endpoint_urls: Mapping[str, str] = field(default_factory=dict)
    vision_urls: Mapping[str, str] | None = None
    env: Mapping[str, str] | None = None
    data_dir: Path | None = None
    cache_mode: CacheMode = "use"
    concurrency: int | None = None
    requests_per_minute: float | None = None
    vision_concurrency: int = 1
    embeddings: Literal["endpoint", "local"] = "endpoint"
    embeddings_endpoint: str = "OpenAI"
    embeddings_model: str = "text-embedding-3-large"
    local_embeddings_model: str | None = None

    @property
    def environment(self) -> Mapping[str, str]:
        return os.environ if self.env is None else self.env

    @property
    def cache_dir(self) -> Path:
        return (self.data_dir or paths.data_dir()) / "cache"

    @property
    def definitions_file(self) -> Path:
        return self.cache_dir / "definitions.json"

    def response_cache(self) -> ResponseCache:
        return ResponseCache(
            self.cache_dir / "responses",
            bypass=self.cache_mode == "bypass",
            refresh=self.cache_mode == "refresh",
        )

    def chat_client(self) -> ChatClient:
        return ChatClient(
            endpoint_urls=self.endpoint_urls,
            env=self.env,
            concurrency=self.concurrency,
            requests_per_minute=self.requests_per_minute,
            cache=self.response_cache(),
        )

    def vision_client(self, family: str) -> VisionClient:
        urls = dict(self.vision_urls) if self.vision_urls else vision_server_urls(env=self.environment)
        return VisionClient(family, urls[family], env=self.env, concurrency=self.vision_concurrency)

    def embeddings_client(self):
        cache = EmbeddingCache(self.cache_dir / "embeddings", bypass=self.cache_mode == "bypass")
        if self.embeddings == "local":
            return SentenceTransformerEmbeddings(self.local_embeddings_model, cache=cache)
        return EmbeddingsClient(
            self.embeddings_endpoint,
            model=self.embeddings_model,
            cache=cache,
            endpoint_urls=self.endpoint_urls,
            env=self.env,
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
