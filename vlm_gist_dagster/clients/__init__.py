"""HTTP clients (httpx, async) for chat completions, embeddings and the NimbRo vision servers.

The same code talks to real providers and to the simulator (``vlm_gist_dagster.sim``):

* :mod:`.base` — :class:`ServiceClient`, what every client shares: the httpx client and its lifecycle,
  per-endpoint limits, the transport retry policy and its counters, the response cache and the service
  identity its keys carry;
* :mod:`.chat` — :class:`ChatClient` (one attempt = one HTTP request; cost), with :mod:`.endpoints`
  (endpoint resolution, URL overrides, keys), :mod:`.sse` (the streamed exchange and its timeout
  watchdog) and :mod:`.replay` (exchange records, read the same live and from the cache);
* :mod:`.describe` — the paper's content-retry loop per image and a batch runner with progress;
* :mod:`.embeddings` — :class:`EmbeddingsClient` (``/v1/embeddings``, batched, cached per text) and an
  offline sentence-transformers backend;
* :mod:`.vision` — :class:`VisionClient` for MM-Grounding-DINO, SAM2, Florence-2 and Kosmos-2 (cached
  ``/infer`` and SAM2 update + track);
* :mod:`.cache`, :mod:`.pricing`, :mod:`.transport`, :mod:`.errors` — the shared parts.
"""

from .base import ServiceClient
from .cache import SIMULATOR, CacheKey, CacheMode, ResponseCache, Subject, default_cache_dir, service_identity
from .chat import AttemptOutcome, CacheTag, ChatClient
from .describe import (
    AttemptRecord,
    BatchIncomplete,
    ImageDescription,
    ProgressEvent,
    ProgressTracker,
    describe_image,
    describe_images,
)
from .embeddings import EmbeddingsClient, SentenceTransformerEmbeddings, VectorCache
from .endpoints import ResolvedEndpoint, endpoint_env_var, resolve
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
    "SIMULATOR",
    "CacheKey",
    "CacheMode",
    "CacheTag",
    "ChatClient",
    "ClientError",
    "ConfigurationError",
    "Cost",
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
    "ServiceClient",
    "Subject",
    "TransportError",
    "TransportRetriesExhausted",
    "VectorCache",
    "VisionClient",
    "default_cache_dir",
    "describe_image",
    "describe_images",
    "endpoint_env_var",
    "load_price_table",
    "redact",
    "resolve",
    "service_identity",
    "vision_image",
    "vision_server_urls",
]
