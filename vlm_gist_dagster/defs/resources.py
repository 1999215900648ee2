"""Resources shared by the assets, sensors and the schedule: the only place the Dagster layer learns where
files are and which mode it runs in. Nothing below ``defs/`` reads the environment; the resources carry
every path and mode as plain fields.

Environment variables are the documented way to fill them (README, "Configuration"):
:func:`resources_from_environment` reads them once, when the definitions load, and a deployment (or a
test) can instead pass resources with explicit values to ``build_definitions(resources=...)``. The README's
"Configuration" section points here.

================================  ============================================  ==================================
variable                          resource field                                default
================================  ============================================  ==================================
``VLM_GIST_SETTINGS_DIR``         ``settings.settings_dir``,                    ``<project>/settings``
                                  ``datasets.settings_file``
``VLM_GIST_MODELS_DIR``           ``models.models_dir``                         ``<settings>/models``
``VLM_GIST_DATA_DIR``             ``services.data_dir``                         ``<project>/data``
``VLM_GIST_ASSETS_DIR``           ``io_manager.base_path``                      ``<data>/assets``
``VLM_GIST_RESPONSE_CACHE_DIR``   ``services.response_cache_dir`` (``s3://…``)  ``<data>/cache/responses``
``VLM_GIST_CACHE_MODE``           ``services.cache_mode``                       ``use``
``VLM_GIST_CONCURRENCY``          ``services.concurrency``                      the paper's CPU count - 1
``VLM_GIST_EMBEDDINGS``           ``services.embeddings``                       ``endpoint``
``VLM_GIST_SIMULATOR``            ``services.simulator`` (set by ``vlm-gist``)  off
``VLM_GIST_VISION_URL_<FAMILY>``  ``services.vision_urls``                      ``<settings>/vision_servers.json``
================================  ============================================  ==================================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import dagster as dg

from .. import paths
from ..datasets import Dataset, dataset_options, load_dataset, resolve_dataset_dir

#: Set by `vlm-gist run` / `vlm-gist dev` when the simulator answers: real models are refused then, so a
#: simulated answer can never be reported under a real model's name.
SIMULATOR_ENV = "VLM_GIST_SIMULATOR"


class SettingsResource(dg.ConfigurableResource):
    """The settings folder (``settings/``): every stage settings file the benchmark reads."""

    settings_dir: str

    @property
    def directory(self) -> Path:
        return Path(self.settings_dir).expanduser().resolve()

    def detection_file(self) -> Path:
        return self.directory / "detection" / "detection.json"

    def label_matching_file(self, dataset: str) -> Path:
        return self.directory / "label_matching" / f"{dataset}.json"

    def validation_file(self) -> Path:
        """The project's validation settings (a model header's ``"validation": true``)."""
        return self.directory / "validation" / "validation.json"

    def prices_file(self) -> Path:
        return self.directory / "prices.json"

    def statistics_file(self) -> Path:
        return self.directory / "statistics.json"


class DatasetsResource(dg.ConfigurableResource):
    """Finds (and on first use downloads) the benchmark datasets.

    ``settings_file`` defaults to ``settings/datasets.json``; ``VLM_GIST_DATASET_DIR_<NAME>`` overrides the
    directory of one dataset.
    """

    settings_file: str | None = None
    allow_download: bool = True

    def load(self, name: str, progress: Callable[[str], None] | None = None) -> Dataset:
        settings_file = Path(self.settings_file) if self.settings_file else None
        root = resolve_dataset_dir(
            name, settings_file=settings_file, download=self.allow_download, progress=progress
        )
        return load_dataset(root, name=name, **dataset_options(name, settings_file))


class ModelsResource(dg.ConfigurableResource):
    """The model settings files (``settings/models/``). The sensors and the schedule read it too, so they
    see the files the assets load."""

    models_dir: str

    def directory(self) -> Path:
        return Path(self.models_dir).expanduser().resolve()

    def load(self, key: str):
        """``(ModelFile, ModelSettings)`` of model partition ``key``; a Failure that no retry can fix
        when the file is gone or invalid."""
        from ..model_registry import ModelRegistryError, find_model
        from ..protocol.settings import SettingsError, load_model_settings

        try:
            found = find_model(key, self.directory())
            return found, load_model_settings(found.path)
        except (ModelRegistryError, SettingsError) as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc

    def provider(self, key: str) -> str | None:
        """The provider of model ``key``'s descriptions (the slug of its structured-description endpoint,
        ``orchestration.policies.provider_slug``); None for a baseline (no VLM API) or a model file that
        cannot be read (its run reports that)."""
        from ..orchestration.policies import provider_slug
        from ..protocol.endpoints import resolve_endpoint

        try:
            _, model = self.load(key)
        except dg.Failure:
            return None
        if model.kind != "vlm":
            return None
        endpoint = model.description.vlm_structured_description.api_endpoint
        return provider_slug(resolve_endpoint(endpoint).name)  # type: ignore[arg-type]

    def provider_tags(self, key: str) -> dict[str, str]:
        """``{"vlm_gist/provider": <provider>}`` for a pair run of model ``key`` (limited per provider by
        ``deploy/dagster.yaml``); empty when the model calls no VLM API or its file cannot be read."""
        from ..orchestration.policies import PROVIDER_TAG

        provider = self.provider(key)
        return {PROVIDER_TAG: provider} if provider else {}


class ServicesResource(dg.ConfigurableResource):
    """Where the stages send requests (see ``stages.services.Services``): URL overrides, the response
    cache's folder and mode, limits, the embeddings backend, and whether the built-in simulator answers
    (``simulator``: every cached answer is then filed under the service ``simulator``, and real models
    are refused). ``vision_urls`` is filled from ``settings/vision_servers.json`` and
    ``VLM_GIST_VISION_URL_<FAMILY>`` by :func:`resources_from_environment` (the masks step's pool is the
    SAM2 server's); chat endpoint URLs and API keys stay with the clients (``VLM_GIST_ENDPOINT_URL_<NAME>``,
    the key variables each endpoint names)."""

    data_dir: str
    endpoint_urls: dict[str, str] = {}
    vision_urls: dict[str, str] = {}
    cache_mode: str = "use"
    #: The response cache's root: a folder or an fsspec URL (``s3://bucket/prefix``); None:
    #: ``<data_dir>/cache/responses``.
    response_cache_dir: str | None = None
    simulator: bool = False
    concurrency: int | None = None
    requests_per_minute: float | None = None
    vision_concurrency: int = 1
    embeddings: str = "endpoint"
    embeddings_endpoint: str = "OpenAI"
    embeddings_model: str = "text-embedding-3-large"

    @property
    def directory(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def leaderboard_dir(self) -> Path:
        return self.directory / "leaderboard"

    def services(self):
        from ..clients.cache import CacheMode
        from ..stages.services import Services

        try:
            mode = CacheMode.parse(self.cache_mode)
        except ValueError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        if self.embeddings not in ("endpoint", "local"):
            raise dg.Failure(
                description=f"embeddings must be 'endpoint' or 'local', got {self.embeddings!r}",
                allow_retries=False,
            )
        return Services(
            endpoint_urls=dict(self.endpoint_urls),
            vision_urls=dict(self.vision_urls) or None,
            data_dir=self.directory,
            cache_mode=mode,
            response_cache_dir=self.response_cache_dir,
            simulated=self.simulator,
            concurrency=self.concurrency,
            requests_per_minute=self.requests_per_minute,
            vision_concurrency=self.vision_concurrency,
            embeddings=self.embeddings,  # type: ignore[arg-type]
            embeddings_endpoint=self.embeddings_endpoint,
            embeddings_model=self.embeddings_model,
        )


def _flag(value: str | None) -> bool:
    return (value or "") not in ("", "0", "false")


def resources_from_environment(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """The resources as the environment configures them (the table in the module docstring): the one
    reader of the ``VLM_GIST_*`` path and mode variables for the Dagster layer."""
    from .io_manager import ParquetIOManagerFactory

    env = os.environ if env is None else env
    locations = paths.Locations.from_environment(env)
    concurrency = env.get("VLM_GIST_CONCURRENCY")
    return {
        "io_manager": ParquetIOManagerFactory(base_path=locations.assets_dir),
        "settings": SettingsResource(settings_dir=str(locations.settings_dir)),
        "datasets": DatasetsResource(settings_file=str(locations.settings_dir / "datasets.json")),
        "models": ModelsResource(models_dir=str(locations.models_dir)),
        "services": ServicesResource(
            data_dir=str(locations.data_dir),
            cache_mode=env.get("VLM_GIST_CACHE_MODE") or "use",
            response_cache_dir=locations.response_cache_dir,
            simulator=_flag(env.get(SIMULATOR_ENV)),
            concurrency=int(concurrency) if concurrency else None,
            embeddings=env.get("VLM_GIST_EMBEDDINGS") or "endpoint",
            vision_urls=_vision_urls(locations.settings_dir / "vision_servers.json", env),
        ),
    }


def _vision_urls(settings_file: Path, env: Mapping[str, str]) -> dict[str, str]:
    """Family → vision server URL (``settings/vision_servers.json``, then ``VLM_GIST_VISION_URL_<FAMILY>``).
    A bad file or variable leaves them empty here, so that the definitions still load; the stages then
    read them again and the step that needs a server fails with the message naming the file or variable."""
    from ..clients.errors import ConfigurationError
    from ..clients.vision import vision_server_urls

    try:
        return vision_server_urls(settings_file, env=env, missing_ok=True)
    except ConfigurationError:
        return {}


@dg.definitions
def resources() -> dg.Definitions:
    """The resources as ``load_from_defs_folder`` finds them (``vlm_gist_dagster.definitions``): filled
    from the environment when the definitions load."""
    return dg.Definitions(resources=resources_from_environment())
