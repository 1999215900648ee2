"""Loading the benchmark datasets into two pandas tables, ``images`` and ``ground_truth``.

>>> from vlm_gist_dagster.datasets import load_dataset          # doctest: +SKIP
>>> ds = load_dataset("../shared/datasets/vlm_gist")            # doctest: +SKIP
>>> ds.num_images, ds.num_instances                             # doctest: +SKIP
(64, 1178)

Formats are detected from the directory: a FiftyOne export (``samples.json`` + ``metadata.json`` +
``data/``) or a COCO detection directory (``labels.json`` + ``data/``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from .coco import is_coco_directory, load_coco_directory
from .config import (
    DatasetSource,
    DatasetsSettings,
    dataset_options,
    env_var_for,
    load_datasets_settings,
    resolve_dataset_dir,
    resolve_dataset_dirs,
)
from .fiftyone_export import decode_fiftyone_mask, is_fiftyone_export, load_fiftyone_export
from .model import (
    GROUND_TRUTH_COLUMNS,
    IMAGE_COLUMNS,
    Dataset,
    DatasetDownloadError,
    DatasetError,
)

__all__ = [
    "GROUND_TRUTH_COLUMNS",
    "IMAGE_COLUMNS",
    "Dataset",
    "DatasetDownloadError",
    "DatasetError",
    "DatasetSource",
    "DatasetsSettings",
    "dataset_options",
    "decode_fiftyone_mask",
    "env_var_for",
    "load_dataset",
    "load_datasets_settings",
    "resolve_dataset_dir",
    "resolve_dataset_dirs",
]


def load_dataset(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    crowd: Literal["remove", "fix", "keep"] | None = None,
) -> Dataset:
    """Load a dataset directory, detecting its format.

    ``crowd`` defaults to the paper's behaviour per format: FiftyOne exports "fix" crowd instances
    (kept, ``iscrowd`` set to 0), COCO directories "remove" them.
    """
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(root, "dataset directory does not exist")
    if is_fiftyone_export(root):
        return load_fiftyone_export(root, name=name, crowd=crowd or "fix")
    if is_coco_directory(root):
        return load_coco_directory(root, name=name, crowd=crowd or "remove")
    raise DatasetError(
        root,
        "unrecognised dataset layout: expected a FiftyOne export (samples.json, metadata.json, data/) "
        "or a COCO detection directory (labels.json, data/)",
    )
