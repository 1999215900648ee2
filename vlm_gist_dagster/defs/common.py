"""Helpers shared by the per-pair benchmark assets."""

import contextlib
import math
from collections.abc import Iterator

import dagster as dg
import pandas as pd

from ..clients.errors import AuthenticationError, ConfigurationError
from .partitions import split_pair_key

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


def pair(context: dg.AssetExecutionContext) -> tuple[str, str]:
    return split_pair_key(context.partition_key)


def check_model_mode(model, simulator: bool) -> None:
    """Real models are refused while the simulator answers (``services.simulator``, set by
    ``vlm-gist run`` / ``vlm-gist dev`` through ``VLM_GIST_SIMULATOR``): a simulated answer must never be
    reported under a real model's name."""
    if simulator and not model.simulated:
        raise dg.Failure(
            description=f"model {model.name!r} is a real model but the simulator is answering "
            "(services.simulator, VLM_GIST_SIMULATOR); run real models with `vlm-gist run --no-simulator`",
            allow_retries=False,
        )


@contextlib.contextmanager
def api_errors() -> Iterator[None]:
    """A bad key or a configuration error would fail every retry: fail at once instead."""
    try:
        yield
    except (AuthenticationError, ConfigurationError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


def md_table(df: pd.DataFrame, rows: int = 10) -> dg.MetadataValue:
    from .metadata import preview

    return preview(df, rows=rows)


def finite(value) -> float | None:
    """A float for metadata (None when NaN/None)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value
