"""Failures that no retry can fix: the step fails at once (``dg.Failure(allow_retries=False)``) instead of
spending the retry policy's attempts (``policies.API_RETRY``) on them."""

import contextlib
from collections.abc import Iterator

import dagster as dg

from ..clients.errors import AuthenticationError, ConfigurationError


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
