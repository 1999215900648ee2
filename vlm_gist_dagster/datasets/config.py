"""Which directory each benchmark dataset comes from: ``settings/datasets.json``, overridden per dataset
by the environment variable ``VLM_GIST_DATASET_DIR_<NAME>`` (e.g. ``VLM_GIST_DATASET_DIR_COCO``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import paths
from .download import DOWNLOADERS, local_copy_hint
from .model import DatasetDownloadError, DatasetError

ENV_PREFIX = "VLM_GIST_DATASET_DIR_"


class DatasetSource(BaseModel):
    """One entry of ``settings/datasets.json``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Directory of the dataset; relative paths start at the project directory.")
    download: Literal["vlm_gist_github", "coco_2017_val_lowest_ids"] | None = Field(
        default=None, description="How to fetch the dataset when the directory is missing (None: never)."
    )
    max_samples: int | None = Field(default=None, gt=0, description="Images to take (COCO subset).")
    crowd: Literal["remove", "fix", "keep"] | None = Field(
        default=None, description="Crowd instances: None = the paper's default for the format."
    )
    description: str = ""


class DatasetsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: dict[str, DatasetSource]


def datasets_settings_file() -> Path:
    return paths.settings_dir() / "datasets.json"


def load_datasets_settings(path: Path | None = None) -> DatasetsSettings:
    path = Path(path) if path else datasets_settings_file()
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(path, "settings file is missing") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(path, f"not valid JSON ({exc})") from exc
    try:
        return DatasetsSettings.model_validate({"datasets": raw})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"][1:])
        raise DatasetError(path, first["msg"], field=field) from exc


def env_var_for(name: str) -> str:
    return ENV_PREFIX + name.upper()


def is_complete(root: Path) -> bool:
    from .coco import is_coco_directory
    from .fiftyone_export import is_fiftyone_export

    return is_fiftyone_export(root) or is_coco_directory(root)


def resolve_dataset_dir(
    name: str,
    *,
    settings_file: Path | None = None,
    download: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """The directory of dataset ``name``: the environment variable if set (it must exist), else the
    settings path, downloading the dataset there once if it is missing and ``download`` is allowed."""
    settings_file = Path(settings_file) if settings_file else datasets_settings_file()
    var = env_var_for(name)
    if os.environ.get(var):
        root = paths.resolve(os.environ[var], Path.cwd())
        if not root.is_dir():
            raise DatasetError(root, f"directory named by {var} does not exist")
        if not is_complete(root):
            raise DatasetError(
                root,
                f"directory named by {var} is neither a FiftyOne export (samples.json, metadata.json) "
                "nor a COCO detection directory (data/, labels.json)",
            )
        return root

    settings = load_datasets_settings(settings_file)
    if name not in settings.datasets:
        raise DatasetError(
            settings_file, f"no dataset named {name!r} (known: {sorted(settings.datasets)})", field=name
        )
    source = settings.datasets[name]
    root = paths.resolve(source.path)
    if is_complete(root):
        return root
    if not download or source.download is None:
        reason = f"not at {root}, and downloading is {'off' if not download else 'not configured'}"
        raise DatasetDownloadError(
            f"Dataset {name!r} is {reason}. " + local_copy_hint(name, settings_file),
            dataset=name,
            reason=reason,
        )
    downloader = DOWNLOADERS[source.download]
    kwargs: dict[str, Any] = {"progress": progress}
    if source.max_samples is not None:
        kwargs["max_samples"] = source.max_samples
    return downloader(root, **kwargs)


def resolve_dataset_dirs(
    names: Iterable[str], *, progress: Callable[[str], None] | None = None
) -> tuple[dict[str, Path], dict[str, str], list[str]]:
    """:func:`resolve_dataset_dir` of every name, failures collected instead of raised, so that all
    unusable datasets are reported together: ``(roots, problems, missing)``, where ``problems`` maps a
    name to what is wrong (a download failure's reason, without the advice) and ``missing`` lists the
    names that are missing (rather than broken)."""
    roots: dict[str, Path] = {}
    problems: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        try:
            roots[name] = resolve_dataset_dir(name, progress=progress)
        except DatasetDownloadError as exc:
            problems[name] = exc.reason or str(exc)
            missing.append(name)
        except DatasetError as exc:
            problems[name] = str(exc)
    return roots, problems, missing


class LoaderOptions(TypedDict, total=False):
    """Keyword arguments of :func:`~vlm_gist_dagster.datasets.load_dataset` set by the datasets settings."""

    crowd: Literal["remove", "fix", "keep"]


def dataset_options(name: str, settings_file: Path | None = None) -> LoaderOptions:
    """Loader options from the settings (currently the crowd mode), empty when unset."""
    try:
        source = load_datasets_settings(settings_file).datasets.get(name)
    except DatasetError:
        return {}
    return {"crowd": source.crowd} if source and source.crowd else {}
