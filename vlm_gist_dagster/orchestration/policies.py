"""How the benchmark's steps run: the retry policy of the steps that call servers and the Dagster pools
that bound how many of them run at once.

Per-provider limits, on Dagster's own machinery. A Dagster pool belongs to an op *definition*
(``step.pool`` is ``node.definition.pool``), so it cannot vary by partition (dagster-io/dagster#17422):

* **Pools, where the provider is fixed when the definitions load.** ``label_matches`` calls the LLM of
  the label-matching settings and ``validations`` the VLM of the validation settings: one endpoint per
  deployment, so their steps go to the pool ``vlm_api/<provider>`` (:func:`provider_pool`; computed in
  ``defs/label_matches.py`` and ``defs/validations.py`` from the settings resource), the way every vision
  server has its own pool (:func:`vision_server_pool`). When the datasets' files name different
  endpoints, or a file cannot be read, the step stays in the shared pool ``vlm_api``
  (:func:`one_provider_pool`).
* **A run tag, where the provider varies by model partition.** ``descriptions`` calls the endpoint its
  model file names, so it stays in the pool ``vlm_api`` and every pair run the project requests carries
  the tag ``vlm_gist/provider=<provider>`` (:data:`PROVIDER_TAG`, ``ModelsResource.provider_tags``): the
  model sensor, the validation sensor, the nightly schedule, and ``benchmark_pair_job`` for every
  partition (its partitioned config, so job launches, job backfills and ``vlm-gist run`` carry it).
  ``deploy/dagster.yaml`` limits runs per unique value (``tag_concurrency_limits``). Runs requested by
  declarative automation and asset backfills launched from the UI carry no custom tags: only ``vlm_api``
  and the run limits bound them.

A provider is the endpoint's name as a slug (:func:`provider_slug`): ``OpenAI`` → ``openai``,
``Mistral AI`` → ``mistral-ai`` (pool names may hold no whitespace).
"""

import re
from collections.abc import Iterable, Mapping

import dagster as dg

#: Stages that call servers retry with backoff; the response cache makes a retry resume, not repeat.
API_RETRY = dg.RetryPolicy(
    max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
#: Dagster pools (set limits with `dagster instance concurrency set <pool> N` or in dagster.yaml).
VLM_POOL = "vlm_api"
VISION_POOL = "vision_servers"
#: The run tag that names the provider of a pair run's descriptions.
PROVIDER_TAG = "vlm_gist/provider"


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


def one_provider_pool(endpoint_names: Iterable[str | None]) -> str:
    """The pool of a step whose calls go to ``endpoint_names`` (None: a settings file that could not be
    read): that provider's pool when they are one provider, else the shared ``vlm_api``.

    >>> one_provider_pool(["OpenAI", "OpenAI"]), one_provider_pool(["OpenAI", "vLLM"]), one_provider_pool([None])
    ('vlm_api/openai', 'vlm_api', 'vlm_api')
    """
    names = set(endpoint_names)
    if len(names) != 1 or None in names:
        return VLM_POOL
    return provider_pool(names.pop())  # type: ignore[arg-type]


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
