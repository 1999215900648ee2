"""HTTP clients (httpx, async) for chat completions, embeddings and the NimbRo vision servers.

The same code talks to real providers and to the simulator (``vlm_gist_dagster.sim``):

* :mod:`.chat` — :class:`ChatClient` (one attempt = one HTTP request; SSE streaming; the three
  timeouts; transport retries; per-endpoint concurrency / rate limits; response cache; cost);
* :mod:`.describe` — the paper's content-retry loop per image and a batch runner with progress;
* :mod:`.embeddings` — :class:`EmbeddingsClient` (``/v1/embeddings``, batched, disk cache) and an
  offline sentence-transformers backend;
* :mod:`.vision` — :class:`VisionClient` for MM-Grounding-DINO, SAM2, Florence-2 and Kosmos-2;
* :mod:`.cache`, :mod:`.pricing`, :mod:`.transport`, :mod:`.errors` — the shared parts.
"""

from .cache import CacheKey, ResponseCache, default_cache_dir
from .chat import AttemptOutcome, CacheTag, ChatClient, ResolvedEndpoint, endpoint_env_var
from .describe import (
    AttemptRecord,
    BatchIncomplete,
    ImageDescription,
    ProgressEvent,
    ProgressTracker,
    describe_image,
    describe_images,
    run_describe_images,
)
from .embeddings import EmbeddingCache, EmbeddingsClient, SentenceTransformerEmbeddings
from .errors import (
    AuthenticationError,
    ClientError,
    ConfigurationError,
    ResponseError,
    TransportError,
    TransportRetriesExhausted,
    redact,
)
from .pricing import Cost, ModelPrice, PriceTable, load_price_table
from .transport import EndpointLimits, RateLimiter, RetryPolicy
from .vision import VisionClient, vision_image, vision_server_urls

__all__ = [
    "AttemptOutcome",
    "AttemptRecord",
    "AuthenticationError",
    "BatchIncomplete",
    "CacheKey",
    "CacheTag",
    "ChatClient",
    "ClientError",
    "ConfigurationError",
    "Cost",
    "EmbeddingCache",
    "EmbeddingsClient",
    "EndpointLimits",
    "ImageDescription",
    "ModelPrice",
    "PriceTable",
    "ProgressEvent",
    "ProgressTracker",
    "RateLimiter",
    "ResolvedEndpoint",
    "ResponseCache",
    "ResponseError",
    "RetryPolicy",
    "SentenceTransformerEmbeddings",
    "TransportError",
    "TransportRetriesExhausted",
    "VisionClient",
    "default_cache_dir",
    "describe_image",
    "describe_images",
    "endpoint_env_var",
    "load_price_table",
    "redact",
    "run_describe_images",
    "vision_image",
    "vision_server_urls",
]
