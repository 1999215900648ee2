"""Helpers shared by the per-pair benchmark assets."""

import contextlib
import math
import os
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
#: Set by `vlm-gist run` / `vlm-gist dev` when the simulator answers: real models are refused then, so a
#: simulated answer can never be reported under a real model's name.
SIMULATOR_ENV = "VLM_GIST_SIMULATOR"


def pair(context: dg.AssetExecutionContext) -> tuple[str, str]:
    return split_pair_key(context.partition_key)


def simulator_active() -> bool:
    return os.environ.get(SIMULATOR_ENV, "") not in ("", "0", "false")


def check_model_mode(model) -> None:
    """Simulated models only against the simulator, real models only against real servers."""
    if simulator_active() and not model.simulated:
        raise dg.Failure(
            description=f"model {model.name!r} is a real model but the simulator is answering ({SIMULATOR_ENV} is set); "
            "run real models with `vlm-gist run --no-simulator`",
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

