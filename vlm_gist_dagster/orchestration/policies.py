"""How the benchmark's steps run: the retry policy of the steps that call servers and the Dagster pools
that bound how many of them run at once."""

from collections.abc import Mapping

import dagster as dg

#: Stages that call servers retry with backoff; the response cache makes a retry resume, not repeat.
API_RETRY = dg.RetryPolicy(
    max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
#: Dagster pools (set limits with `dagster instance concurrency set <pool> N` or in dagster.yaml).
VLM_POOL = "vlm_api"
VISION_POOL = "vision_servers"


def vision_server_pool(family: str, urls: Mapping[str, str]) -> str:
    """The Dagster pool of the vision server that serves ``family``, one per server: ``family@host:port``
    of its URL in ``urls`` (family → base URL; ``defs/resources.py`` reads them from
    ``settings/vision_servers.json`` and ``VLM_GIST_VISION_URL_<FAMILY>`` when the definitions load). The
    SAM2 server holds one global tracker, so its pool needs limit 1 wherever several machines share it:
    ``dagster instance concurrency set sam2_realtime@gpu-box:9001 1``, or ``concurrency: pools:
    default_limit: 1`` in dagster.yaml (then raise ``vlm_api`` explicitly). On one machine the server's
    file lock serialises it anyway (``clients.server_lock``).

    >>> vision_server_pool("sam2_realtime", {"sam2_realtime": "https://gpu-box.lab"})
    'sam2_realtime@gpu-box.lab:443'
    >>> vision_server_pool("sam2_realtime", {"sam2_realtime": "http://10.0.0.7:9001/"})
    'sam2_realtime@10.0.0.7:9001'
    >>> vision_server_pool("sam2_realtime", {})  # not configured: the step reports it when it runs
    'sam2_realtime'
    """
    import httpx

    try:
        url = httpx.URL(urls[family])
    except (KeyError, httpx.InvalidURL):
        return family
    port = url.port or {"http": 80, "https": 443}.get(url.scheme, 0)
    return f"{family}@{url.host}:{port}"
