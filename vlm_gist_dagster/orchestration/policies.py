"""How the benchmark's steps run: the retry policy of the steps that call servers and the Dagster pools
that bound how many of them run at once."""

import dagster as dg

#: Stages that call servers retry with backoff; the response cache makes a retry resume, not repeat.
API_RETRY = dg.RetryPolicy(
    max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
#: Dagster pools (set limits with `dagster instance concurrency set <pool> N` or in dagster.yaml).
VLM_POOL = "vlm_api"
VISION_POOL = "vision_servers"


def vision_server_pool(family: str) -> str:
    """The Dagster pool of the vision server that serves ``family``, one per server:
    ``sam2_realtime@gpu-box:9001`` (family @ host:port of ``settings/vision_servers.json`` and
    ``VLM_GIST_VISION_URL_<FAMILY>`` when the definitions load). The SAM2 server holds one global
    tracker, so its pool needs limit 1 wherever several machines share it: ``dagster instance concurrency
    set sam2_realtime@gpu-box:9001 1``, or ``concurrency: pools: default_limit: 1`` in dagster.yaml (then
    raise ``vlm_api`` explicitly). On one machine the server's file lock serialises it anyway
    (``clients.server_lock``)."""
    import httpx

    from ..clients.errors import ConfigurationError
    from ..clients.vision import vision_server_urls

    try:
        url = httpx.URL(vision_server_urls()[family])
    except (ConfigurationError, KeyError, httpx.InvalidURL):
        return family  # the step reports the bad configuration when it runs
    port = url.port or {"http": 80, "https": 443}.get(url.scheme, 0)
    return f"{family}@{url.host}:{port}"


#: The pool of the masks step: the SAM2 server's.
SAM2_POOL = vision_server_pool("sam2_realtime")
