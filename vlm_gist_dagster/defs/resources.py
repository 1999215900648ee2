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
        root = resolve_dataset_dir(name, settings_file=settings_file, download=self.allow_download, progress=progress)
        return load_dataset(root, name=name, **dataset_options(name, settings_file))
