"""Per-provider limits on the API steps, on Dagster's own machinery.

A Dagster pool belongs to an op *definition* (``step.pool`` is ``node.definition.pool``), so it cannot
vary by partition (dagster-io/dagster#17422). Two mechanisms therefore share the work:

* **Pools, where the provider is fixed when the definitions load.** ``label_matches`` calls the LLM of
  the label-matching settings (``settings/label_matching/<dataset>.json``) and ``validations`` the VLM of
  the validation settings (``settings/validation/validation.json``): one endpoint per deployment, so
  their steps go to the pool ``vlm_api/<provider>`` (:func:`provider_pool`), the way every vision server
  has its own pool (``orchestration.policies.vision_server_pool``). The settings are read through the ``settings``
  resource as the environment configures it (``defs.resources.resources_from_environment``). When the
  datasets' files name different endpoints, or a file cannot be read, the step stays in the shared pool
  ``vlm_api``.
* **A run tag, where the provider varies by model partition.** ``descriptions`` calls the endpoint its
  model file names, so it stays in the pool ``vlm_api`` and every pair run the project requests carries
  the tag ``vlm_gist/provider=<provider>`` (:func:`provider_tags`): the model sensor, the validation
  sensor, the nightly schedule, and ``benchmark_pair_job`` for every partition (its partitioned config,
  so job launches, job backfills and ``vlm-gist run`` carry it). ``deploy/dagster.yaml`` limits runs per
  unique value (``tag_concurrency_limits``). Runs requested by declarative automation and asset
  backfills launched from the UI carry no custom tags: only ``vlm_api`` and the run limits bound them.

A provider is the endpoint's name as a slug (:func:`provider_slug`): ``OpenAI`` → ``openai``,
``Mistral AI`` → ``mistral-ai`` (pool names may hold no whitespace).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..orchestration.policies import VLM_POOL
from ..protocol.endpoints import resolve_endpoint
from .partitions import DATASETS, split_pair_key
from .resources import ModelsResource, SettingsResource

#: The run tag that names the provider of a pair run's descriptions.
PROVIDER_TAG = "vlm_gist/provider"

__all__ = [
    "LABEL_MATCHING_POOL",
    "PROVIDER_TAG",
    "VALIDATION_POOL",
    "label_matching_pool",
    "model_provider",
    "pair_provider_tags",
    "provider_pool",
    "provider_slug",
    "provider_tags",
    "validation_pool",
]


def provider_slug(endpoint_name: str) -> str:
    """The provider of an endpoint, as pool names and tag values spell it.

    >>> provider_slug("OpenAI"), provider_slug("Mistral AI"), provider_slug("VLM-GIST simulator")
    ('openai', 'mistral-ai', 'vlm-gist-simulator')
    """
    return re.sub(r"[^a-z0-9._-]+", "-", endpoint_name.lower()).strip("-") or "unnamed"


def provider_pool(endpoint_name: str) -> str:
    """The Dagster pool of the API steps that call ``endpoint_name``.

    >>> provider_pool("OpenRouter")
    'vlm_api/openrouter'
    """
    return f"{VLM_POOL}/{provider_slug(endpoint_name)}"


def _endpoint_name(endpoint: str | Mapping[str, object]) -> str:
    return resolve_endpoint(endpoint).name  # type: ignore[arg-type]


def _one_pool(endpoints: Iterable[str | None]) -> str:
    """The pool of a step whose calls go to ``endpoints`` (None: a file that could not be read): that
    provider's pool when they are one provider, else the shared ``vlm_api``."""
    names = set(endpoints)
    if len(names) != 1 or None in names:
        return VLM_POOL
    return provider_pool(names.pop())  # type: ignore[arg-type]


def label_matching_pool(settings: SettingsResource) -> str:
    """The pool of ``label_matches``: the provider of the label-matching LLM of every dataset."""
    from ..protocol.settings import load_label_matching_settings

    def endpoint(dataset: str) -> str | None:
        try:
            return _endpoint_name(
                load_label_matching_settings(settings.label_matching_file(dataset)).llm.api_endpoint
            )
        except Exception:  # the step reports a bad settings file when it runs
            return None

    return _one_pool(endpoint(d) for d in DATASETS)


def validation_pool(settings: SettingsResource) -> str:
    """The pool of ``validations``: the provider of the project's validation VLM. (A model file that
    names its own validation settings file still runs in this pool.)"""
    from ..protocol.settings import load_validation_settings

    try:
        name = _endpoint_name(load_validation_settings(settings.validation_file()).vlm.api_endpoint)
    except Exception:  # the step reports a bad settings file when it runs
        return VLM_POOL
    return provider_pool(name)


def model_provider(models: ModelsResource, model_key: str) -> str | None:
    """The provider of model ``model_key``'s descriptions (its structured-description endpoint), None
    for a baseline (no VLM API) or a model file that cannot be read (its run reports that)."""
    import dagster as dg

    try:
        _, model = models.load(model_key)
    except dg.Failure:
        return None
    if model.kind != "vlm":
        return None
    return provider_slug(_endpoint_name(model.description.vlm_structured_description.api_endpoint))


def provider_tags(models: ModelsResource, model_key: str) -> dict[str, str]:
    """``{"vlm_gist/provider": <provider>}`` for a pair run of ``model_key``; empty when the model calls
    no VLM API or its file cannot be read."""
    provider = model_provider(models, model_key)
    return {PROVIDER_TAG: provider} if provider else {}


def pair_provider_tags(partition_key: str) -> dict[str, str]:
    """The tags of ``benchmark_pair_job`` for one (dataset, model) partition: the provider tag, with the
    models folder the environment configures (read when a run is launched, never failing the launch)."""
    from .resources import resources_from_environment

    try:
        _, model_key = split_pair_key(partition_key)
        models = resources_from_environment()["models"]
        assert isinstance(models, ModelsResource)
        return provider_tags(models, model_key)
    except Exception:
        return {}


def _settings() -> SettingsResource:
    from .resources import resources_from_environment

    settings = resources_from_environment()["settings"]
    assert isinstance(settings, SettingsResource)
    return settings


#: The pools of the steps whose provider the settings fix (read when the definitions load).
LABEL_MATCHING_POOL = label_matching_pool(_settings())
VALIDATION_POOL = validation_pool(_settings())
