"""Endpoint resolution: a paper endpoint name or endpoint dict → its final URLs and its key.

**URL overrides.** An endpoint keeps its name but can be moved: the ``endpoint_urls`` option (endpoint
name → base URL) or the environment variable ``VLM_GIST_ENDPOINT_URL_<SLUG>`` (SLUG = the name
upper-cased, every non-alphanumeric as ``_``, e.g. ``VLM_GIST_ENDPOINT_URL_VLLM``,
``VLM_GIST_ENDPOINT_URL_VLM_GIST_SIMULATOR``) replaces the scheme, host and port of its URLs; the path
stays. The explicit option wins over the environment.

**Keys** come from the environment variable the endpoint names (``OPENAI_API_KEY``,
``OPENROUTER_API_KEY``, ``MISTRAL_API_KEY``, ``VLLM_API_KEY``, ``AIS_API_KEY``, or an endpoint dict's
``key_value``) and are registered for redaction; they appear only in the ``Authorization`` header.

>>> endpoint_env_var("VLM-GIST simulator")
'VLM_GIST_ENDPOINT_URL_VLM_GIST_SIMULATOR'
>>> override_base_url("http://localhost:8000/v1/chat/completions", "http://gpu-box:8001")
'http://gpu-box:8001/v1/chat/completions'
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from ..protocol.completions import build_headers
from ..protocol.endpoints import Endpoint, EndpointError, resolve_endpoint
from .errors import ConfigurationError, register_secret

__all__ = [
    "ENDPOINT_URL_ENV_PREFIX",
    "EndpointLike",
    "ResolvedEndpoint",
    "endpoint_env_var",
    "override_base_url",
    "resolve",
    "resolve_urls",
]

ENDPOINT_URL_ENV_PREFIX = "VLM_GIST_ENDPOINT_URL_"
EndpointLike = Endpoint | str | Mapping[str, Any]


def endpoint_env_var(name: str) -> str:
    """The environment variable that moves endpoint ``name`` (see the module docstring)."""
    return ENDPOINT_URL_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def override_base_url(url: str, base: str) -> str:
    """``url`` with the scheme, host and port of ``base`` (which must have no path of its own)."""
    try:
        target = httpx.URL(base)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigurationError(f"endpoint URL override {base!r} is not a URL: {exc}") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise ConfigurationError(f"endpoint URL override {base!r} must be an http(s) URL with a host")
    if target.path not in ("", "/") or target.query:
        raise ConfigurationError(
            f"endpoint URL override {base!r} must be a base URL (scheme://host:port) without a path; "
            "the endpoint's own path is kept"
        )
    original = httpx.URL(url)
    return str(original.copy_with(scheme=target.scheme, host=target.host, port=target.port))


@dataclass(frozen=True)
class ResolvedEndpoint:
    """An endpoint with its final URLs and its key (the key is never shown in ``repr``)."""

    endpoint: Endpoint
    completions_url: str
    models_url: str | None
    embeddings_url: str | None
    api_key: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def flavor(self) -> str:
        return self.endpoint.api_flavor

    @property
    def key_hint(self) -> str:
        """What to check after a 401/403."""
        if self.endpoint.key_env_var:
            return f"check the key in ${self.endpoint.key_env_var}"
        return "the endpoint is configured without a key (key_type none)"

    def headers(self) -> dict[str, str]:
        return build_headers(self.api_key)


def as_endpoint(endpoint: EndpointLike) -> Endpoint:
    """The :class:`Endpoint` of a name or endpoint dict; :class:`ConfigurationError` when unusable."""
    try:
        return resolve_endpoint(endpoint)
    except EndpointError as exc:
        raise ConfigurationError(str(exc)) from None


def resolve_urls(
    endpoint: EndpointLike,
    *,
    endpoint_urls: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ResolvedEndpoint:
    """The endpoint with URL overrides applied, without reading its key (``api_key`` None): where its
    requests would go. Raises :class:`ConfigurationError` for an unknown endpoint or a bad override."""
    env = os.environ if env is None else env
    ep = as_endpoint(endpoint)
    base = (endpoint_urls or {}).get(ep.name) or env.get(endpoint_env_var(ep.name)) or None
    completions_url, models_url = ep.completions_url, ep.models_url
    # OpenAI-compatible servers put embeddings next to chat completions; used when no URL is given.
    embeddings_url = ep.embeddings_url
    if embeddings_url is None and completions_url.endswith("/chat/completions"):
        embeddings_url = completions_url[: -len("/chat/completions")] + "/embeddings"
    if base:
        completions_url = override_base_url(completions_url, base)
        models_url = override_base_url(models_url, base) if models_url else None
        embeddings_url = override_base_url(embeddings_url, base) if embeddings_url else None
    return ResolvedEndpoint(ep, completions_url, models_url, embeddings_url)


def resolve(
    endpoint: EndpointLike,
    *,
    endpoint_urls: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ResolvedEndpoint:
    """Resolve a paper endpoint name / endpoint dict: URL overrides applied, key read from the environment.

    Raises :class:`ConfigurationError` for an unknown endpoint, a bad override or a missing key.
    """
    env = os.environ if env is None else env
    resolved = resolve_urls(endpoint, endpoint_urls=endpoint_urls, env=env)
    ep = resolved.endpoint
    if ep.key_env_var is None:
        return resolved
    api_key = (env.get(ep.key_env_var) or "").strip()
    if not api_key:
        raise ConfigurationError(
            f"endpoint {ep.name!r} needs its API key in the environment variable {ep.key_env_var}, which "
            f"is not set or empty: export {ep.key_env_var}=<your key> (keys never go into settings files)"
        )
    register_secret(api_key)
    return replace(resolved, api_key=api_key)
