"""Resources shared by the assets. Settings come from environment variables with local defaults, so a
deployment differs from a checkout only in its environment."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg

from ..datasets import Dataset, dataset_options, load_dataset, resolve_dataset_dir


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
    """The model settings files (``settings/models/`` or ``$VLM_GIST_MODELS_DIR``)."""

    models_dir: str | None = None

    def directory(self) -> Path:
        """The models folder: ``models_dir`` when configured, else ``$VLM_GIST_MODELS_DIR`` /
        ``settings/models``. The sensor and the schedule read it too, so they see the files the assets
        load."""
        from ..model_registry import models_dir

        return Path(self.models_dir).expanduser().resolve() if self.models_dir else models_dir()

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


class ServicesResource(dg.ConfigurableResource):
    """Where the stages send requests (see ``stages.services.Services``). Every field has a default that
    reads the environment, so ``make run`` / ``make dev`` configure it by environment variables:
    ``VLM_GIST_ENDPOINT_URL_<NAME>``, ``VLM_GIST_VISION_URL_<FAMILY>``, API key variables,
    ``VLM_GIST_CACHE_MODE`` (use | refresh | bypass), ``VLM_GIST_CONCURRENCY``,
    ``VLM_GIST_EMBEDDINGS`` (endpoint | local); ``VLM_GIST_SIMULATOR`` (set by ``vlm-gist run``) files
    every cached answer under the service ``simulator``."""

    endpoint_urls: dict[str, str] = {}
    vision_urls: dict[str, str] = {}
    cache_mode: str | None = None
    concurrency: int | None = None
    requests_per_minute: float | None = None
    vision_concurrency: int = 1
    embeddings: str | None = None
    embeddings_endpoint: str = "OpenAI"
    embeddings_model: str = "text-embedding-3-large"
    data_dir: str | None = None

    def services(self):
        import os

        from ..clients.cache import CacheMode
        from ..stages.services import Services
        from .common import simulator_active

        try:
            mode = CacheMode.parse(self.cache_mode or os.environ.get("VLM_GIST_CACHE_MODE", "use"))
        except ValueError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        concurrency = self.concurrency or (
            int(os.environ["VLM_GIST_CONCURRENCY"]) if os.environ.get("VLM_GIST_CONCURRENCY") else None
        )
        return Services(
            endpoint_urls=dict(self.endpoint_urls),
            vision_urls=dict(self.vision_urls) or None,
            data_dir=Path(self.data_dir) if self.data_dir else None,
            cache_mode=mode,
            simulated=simulator_active(),
            concurrency=concurrency,
            requests_per_minute=self.requests_per_minute,
            vision_concurrency=self.vision_concurrency,
            embeddings=(self.embeddings or os.environ.get("VLM_GIST_EMBEDDINGS", "endpoint")),  # type: ignore[arg-type]
            embeddings_endpoint=self.embeddings_endpoint,
            embeddings_model=self.embeddings_model,
        )
