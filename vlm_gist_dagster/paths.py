"""Where the project keeps its files.

Every location can be moved with an environment variable so that a deployment (or a test) differs from a
local checkout only in its environment:

========================  ===============================  =========================================
variable                  default                          holds
========================  ===============================  =========================================
``VLM_GIST_PROJECT_DIR``  the checkout (or the cwd)        ``settings/`` and ``data/``
``VLM_GIST_SETTINGS_DIR`` ``<project>/settings``           models, detection, label matching, datasets
``VLM_GIST_DATA_DIR``     ``<project>/data``               everything the pipeline writes
``VLM_GIST_ASSETS_DIR``   ``<data>/assets``                Parquet assets (may be a UPath: ``s3://…``)
========================  ===============================  =========================================
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def project_dir() -> Path:
    """The project directory: ``$VLM_GIST_PROJECT_DIR``, else the source checkout, else the cwd."""
    env = os.environ.get("VLM_GIST_PROJECT_DIR")
    if env:
        return Path(env).expanduser().resolve()
    checkout = _PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "settings").is_dir():
        return checkout
    return Path.cwd()


def settings_dir() -> Path:
    env = os.environ.get("VLM_GIST_SETTINGS_DIR")
    return Path(env).expanduser().resolve() if env else project_dir() / "settings"


def data_dir() -> Path:
    env = os.environ.get("VLM_GIST_DATA_DIR")
    return Path(env).expanduser().resolve() if env else project_dir() / "data"


def assets_dir() -> str:
    """Base path of the Parquet IO manager, as a string because it may be a remote UPath."""
    return os.environ.get("VLM_GIST_ASSETS_DIR") or str(data_dir() / "assets")


def resolve(path: str | os.PathLike[str], base: Path | None = None) -> Path:
    """Resolve a path from a settings file: ``~`` expanded, relative paths taken from ``base``
    (default: the project directory)."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (base or project_dir()) / p
    return p.resolve()
