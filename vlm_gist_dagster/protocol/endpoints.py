"""The chat-completion endpoints the paper knows by name, and the endpoint-dict form (docs/protocol/pipeline.md §2.1).

Pure data and validation: nothing here reads the environment or the network. An endpoint only *names*
the environment variable that holds its key; the client resolves it. Secrets never live in settings
files, so the paper's ``key_type: "plain"`` is refused.

>>> resolve_endpoint("OpenRouter").completions_url
'https://openrouter.ai/api/v1/chat/completions'
>>> resolve_endpoint({"name": "Local", "api_flavor": "vllm",
...                   "completions_url": "http://localhost:9999/v1/chat/completions",
...                   "key_type": "environment", "key_value": "LOCAL_KEY"}).key_env_var
'LOCAL_KEY'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

ApiFlavor = Literal["openai", "openrouter", "mistral", "vllm"]
API_FLAVORS: tuple[str, ...] = get_args(ApiFlavor)


class EndpointError(ValueError):
    """An endpoint name or endpoint dict that cannot be used."""


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible provider.

    ``key_env_var`` is the *name* of the environment variable that holds the API key (None: the
    endpoint takes no key, e.g. a local server without authentication).
    """

    name: str
    api_flavor: ApiFlavor
    completions_url: str
    models_url: str | None = None
    embeddings_url: str | None = None
    key_env_var: str | None = None


#: The five endpoints of the paper's provider layer (docs/protocol/pipeline.md §2.1). The embeddings URLs are
#: the providers' documented OpenAI-compatible routes; AIS has none that we know of.
ENDPOINTS: dict[str, Endpoint] = {
    endpoint.name: endpoint
    for endpoint in (
        Endpoint(
            name="OpenAI",
            api_flavor="openai",
            completions_url="https://api.openai.com/v1/chat/completions",
            models_url="https://api.openai.com/v1/models",
            embeddings_url="https://api.openai.com/v1/embeddings",
            key_env_var="OPENAI_API_KEY",
        ),
        Endpoint(
            name="Mistral AI",
            api_flavor="mistral",
            completions_url="https://api.mistral.ai/v1/chat/completions",
            models_url="https://api.mistral.ai/v1/models",
            embeddings_url="https://api.mistral.ai/v1/embeddings",
            key_env_var="MISTRAL_API_KEY",
        ),
        Endpoint(
            name="OpenRouter",
            api_flavor="openrouter",
            completions_url="https://openrouter.ai/api/v1/chat/completions",
            models_url="https://openrouter.ai/api/v1/models",
            embeddings_url="https://openrouter.ai/api/v1/embeddings",
            key_env_var="OPENROUTER_API_KEY",
        ),
        Endpoint(
            name="vLLM",
            api_flavor="vllm",
            completions_url="http://localhost:8000/v1/chat/completions",
            models_url="http://localhost:8000/v1/models",
            embeddings_url="http://localhost:8000/v1/embeddings",
            key_env_var="VLLM_API_KEY",
        ),
        Endpoint(
            name="AIS",
            api_flavor="vllm",
            completions_url="https://api-code.ais.uni-bonn.de/v1/chat/completions",
            models_url="https://api-code.ais.uni-bonn.de/v1/models",
            embeddings_url=None,
            key_env_var="AIS_API_KEY",
        ),
    )
}

_DICT_KEYS_REQUIRED = ("name", "api_flavor", "completions_url", "key_type", "key_value")
_DICT_KEYS_OPTIONAL = ("models_url", "embeddings_url")


def endpoint_from_dict(spec: Mapping[str, Any]) -> Endpoint:
    """The paper's endpoint-dict form ``{name, api_flavor, completions_url, models_url?, key_type,
    key_value}`` (plus our optional ``embeddings_url``).

    ``key_type: "environment"`` means ``key_value`` names the environment variable; ``key_type: "none"``
    (ours, for unauthenticated local servers) needs ``key_value`` null. ``key_type: "plain"`` (a key
    written into the file) is refused: put the key in an environment variable instead.
    """
    unknown = sorted(set(spec) - set(_DICT_KEYS_REQUIRED) - set(_DICT_KEYS_OPTIONAL))
    if unknown:
        raise EndpointError(f"unknown endpoint key(s) {unknown}")
    key_type = spec.get("key_type")
    if key_type == "plain":
        raise EndpointError(
            "key_type 'plain' is refused: secrets never live in settings files. Put the key in an "
            "environment variable and use {'key_type': 'environment', 'key_value': '<VARIABLE_NAME>'}"
        )
    if key_type == "none":
        required = [k for k in _DICT_KEYS_REQUIRED if k not in ("key_value",)]
    else:
        required = list(_DICT_KEYS_REQUIRED)
    missing = [k for k in required if k not in spec]
    if missing:
        raise EndpointError(f"endpoint dict misses key(s) {missing}")
    if key_type not in ("environment", "none"):
        raise EndpointError(f"key_type must be 'environment' (or 'none'), got {key_type!r}")
    key_value = spec.get("key_value")
    if key_type == "environment" and (not isinstance(key_value, str) or not key_value.strip()):
        raise EndpointError("key_value must name an environment variable (a non-empty string)")
    if key_type == "none" and key_value is not None:
        raise EndpointError("key_type 'none' takes key_value null")
    flavor = spec["api_flavor"]
    if flavor not in API_FLAVORS:
        raise EndpointError(f"api_flavor must be one of {list(API_FLAVORS)}, got {flavor!r}")
    for url_key in ("completions_url", "models_url", "embeddings_url"):
        url = spec.get(url_key)
        if url is None and url_key != "completions_url":
            continue
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise EndpointError(f"{url_key} must be an http(s) URL, got {url!r}")
    name = spec["name"]
    if not isinstance(name, str) or not name.strip():
        raise EndpointError(f"name must be a non-empty string, got {name!r}")
    return Endpoint(
        name=name,
        api_flavor=flavor,
        completions_url=spec["completions_url"],
        models_url=spec.get("models_url"),
        embeddings_url=spec.get("embeddings_url"),
        key_env_var=key_value if key_type == "environment" else None,
    )


def resolve_endpoint(value: str | Mapping[str, Any] | Endpoint) -> Endpoint:
    """An endpoint from its paper name (``"OpenAI"``, ``"Mistral AI"``, ``"OpenRouter"``, ``"vLLM"``,
    ``"AIS"``) or from the endpoint-dict form."""
    if isinstance(value, Endpoint):
        return value
    if isinstance(value, str):
        try:
            return ENDPOINTS[value]
        except KeyError:
            raise EndpointError(
                f"unknown endpoint name {value!r}; known: {sorted(ENDPOINTS)} (or give an endpoint dict)"
            ) from None
    if isinstance(value, Mapping):
        return endpoint_from_dict(value)
    raise EndpointError(f"an endpoint is a name or a dict, got {type(value).__name__}")
