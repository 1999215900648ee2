"""Where the project keeps its files.

Every location can be moved with an environment variable so that a deployment (or a test) differs from a
local checkout only in its environment:

===============================  ==========================  ===========================================
variable                         default                     holds
===============================  ==========================  ===========================================
``VLM_GIST_PROJECT_DIR``         the checkout (or the cwd)   ``settings/`` and ``data/``
``VLM_GIST_SETTINGS_DIR``        ``<project>/settings``      models, detection, label matching, datasets
``VLM_GIST_DATA_DIR``            ``<project>/data``          everything the pipeline writes
``VLM_GIST_ASSETS_DIR``          ``<data>/assets``           Parquet assets (may be a UPath: ``s3://…``)
``VLM_GIST_MODELS_DIR``          ``<settings>/models``       the model settings files
``VLM_GIST_RESPONSE_CACHE_DIR``  ``<data>/cache/responses``  the response cache (may be ``s3://…``)
===============================  ==========================  ===========================================

:meth:`Locations.from_environment` is the one reader of these variables. The Dagster layer gets the
locations from its resources (``defs.resources.resources_from_environment``); the functions below are the
defaults of the command line and of stages called directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Locations:
    """Every location of one deployment (see the module docstring)."""

    project_dir: Path
    settings_dir: Path
    data_dir: Path
    #: A string because it may be a remote UPath (``s3://…``).
    assets_dir: str
    models_dir: Path
    #: The response cache's root; a string because it may be a remote UPath (``s3://…``).
    response_cache_dir: str

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Locations:
        env = os.environ if env is None else env

        def directory(name: str, default: Path) -> Path:
            value = env.get(name)
            return Path(value).expanduser().resolve() if value else default

        project = directory("VLM_GIST_PROJECT_DIR", _default_project_dir())
        settings = directory("VLM_GIST_SETTINGS_DIR", project / "settings")
        data = directory("VLM_GIST_DATA_DIR", project / "data")
        return cls(
            project_dir=project,
            settings_dir=settings,
            data_dir=data,
            assets_dir=env.get("VLM_GIST_ASSETS_DIR") or str(data / "assets"),
            models_dir=directory("VLM_GIST_MODELS_DIR", settings / "models"),
            response_cache_dir=env.get("VLM_GIST_RESPONSE_CACHE_DIR") or str(data / "cache" / "responses"),
        )


def _default_project_dir() -> Path:
    checkout = _PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "settings").is_dir():
        return checkout
    return Path.cwd()


def project_dir() -> Path:
    """The project directory: ``$VLM_GIST_PROJECT_DIR``, else the source checkout, else the cwd."""
    return Locations.from_environment().project_dir


def settings_dir() -> Path:
    return Locations.from_environment().settings_dir


def data_dir() -> Path:
    return Locations.from_environment().data_dir


def assets_dir() -> str:
    """Base path of the Parquet IO manager, as a string because it may be a remote UPath."""
    return Locations.from_environment().assets_dir


def models_dir() -> Path:
    return Locations.from_environment().models_dir


def response_cache_dir() -> str:
    """Root of the response cache, as a string because it may be a remote UPath."""
    return Locations.from_environment().response_cache_dir


def resolve(path: str | os.PathLike[str], base: Path | None = None) -> Path:
    """Resolve a path from a settings file: ``~`` expanded, relative paths taken from ``base``
    (default: the project directory)."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (base or project_dir()) / p
    return p.resolve()
