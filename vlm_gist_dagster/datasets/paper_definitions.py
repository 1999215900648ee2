"""The paper's published label-matching definitions: where to find them, and a download of the one file.

The paper's repository ships its definitions cache (``data/definitions.json`` at the pinned commit): 357
texts written by gpt-4o-2024-11-20 via OpenAI's API for the 80 COCO classes and the 277 distractor
targets, in the paper's format (cache key → text). Its label matching starts from that file (its
``definitions_file`` default), so its COCO runs asked the LLM only for the models' labels. Real runs here
do the same (``initial_definitions`` in the label-matching settings, see ``stages.label_matching``).

Where the file is found, first match wins:

1. ``$VLM_GIST_PAPER_DEFINITIONS``: a local copy (offline use; the tests name
   ``../shared/reference/definitions.json``);
2. ``vlm_gist_definitions.json`` next to the VLM-GIST dataset directory of ``settings/datasets.json``
   (``data/datasets/``), where the VLM-GIST download puts it;
3. a download of that single file from the same pinned commit, checksum-verified, to the place of 2.

Offline without a copy, :func:`resolve_paper_definitions` raises :class:`DatasetDownloadError` saying
which variable to set, or how to turn the paper's definitions off.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from .. import paths
from .download import (
    VLM_GIST_COMMIT,
    VLM_GIST_DEFINITIONS_FILE_NAME,
    VLM_GIST_DEFINITIONS_PATH,
    VLM_GIST_DEFINITIONS_SHA256,
    VLM_GIST_REPOSITORY,
)
from .model import DatasetDownloadError

__all__ = [
    "PAPER_DEFINITIONS_ENV",
    "PAPER_DEFINITIONS_URL",
    "default_paper_definitions_path",
    "download_paper_definitions",
    "resolve_paper_definitions",
]

PAPER_DEFINITIONS_ENV = "VLM_GIST_PAPER_DEFINITIONS"
PAPER_DEFINITIONS_URL = (
    f"https://raw.githubusercontent.com/{VLM_GIST_REPOSITORY}/{VLM_GIST_COMMIT}/{VLM_GIST_DEFINITIONS_PATH}"
)
_TURN_OFF = (
    'or set "initial_definitions": "none" in settings/label_matching/<dataset>.json to define every '
    "text with the label-matching LLM instead"
)


def default_paper_definitions_path(settings_file: Path | None = None) -> Path:
    """``vlm_gist_definitions.json`` next to the VLM-GIST dataset directory named in
    ``settings/datasets.json`` (default ``data/datasets/vlm_gist_definitions.json``)."""
    from .config import load_datasets_settings

    try:
        source = load_datasets_settings(settings_file).datasets.get("vlm_gist")
    except Exception:  # noqa: BLE001 - an unreadable datasets file is reported where datasets load
        source = None
    dataset_dir = paths.resolve(source.path) if source else paths.data_dir() / "datasets" / "vlm_gist"
    return dataset_dir.parent / VLM_GIST_DEFINITIONS_FILE_NAME


def download_paper_definitions(
    target: Path,
    *,
    url: str = PAPER_DEFINITIONS_URL,
    expected_sha256: str | None = VLM_GIST_DEFINITIONS_SHA256,
    transport: httpx.BaseTransport | None = None,
    timeout: httpx.Timeout | None = None,
) -> Path:
    """Fetch the paper's definitions file to ``target`` (atomically, after checking its sha256)."""
    target = Path(target)
    try:
        with httpx.Client(
            transport=transport, timeout=timeout or httpx.Timeout(30.0), follow_redirects=True
        ) as client:
            response = client.get(url)
            response.raise_for_status()
    except httpx.HTTPError as exc:
        raise DatasetDownloadError(
            f"Could not download the paper's definitions from {url}: {exc}. To use a local copy, set "
            f"{PAPER_DEFINITIONS_ENV}=/path/to/definitions.json, {_TURN_OFF}."
        ) from exc
    digest = hashlib.sha256(response.content).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise DatasetDownloadError(
            f"The definitions from {url} have sha256 {digest}, expected {expected_sha256}: the download "
            "is corrupt or the repository changed."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(response.content)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def resolve_paper_definitions(
    *,
    env: Mapping[str, str] | None = None,
    download: bool = True,
    settings_file: Path | None = None,
    transport: httpx.BaseTransport | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """The path of the paper's definitions file: the environment variable, the downloaded copy, or a
    fresh download (see the module docstring). Raises :class:`DatasetDownloadError` when none works."""
    env = os.environ if env is None else env
    named = env.get(PAPER_DEFINITIONS_ENV)
    if named:
        path = paths.resolve(named, Path.cwd())
        if not path.is_file():
            raise DatasetDownloadError(f"{path}: the file named by {PAPER_DEFINITIONS_ENV} does not exist")
        return path
    path = default_paper_definitions_path(settings_file)
    if path.is_file():
        return path
    if not download:
        raise DatasetDownloadError(
            f"The paper's definitions are not at {path} and downloading is off: set "
            f"{PAPER_DEFINITIONS_ENV}=/path/to/definitions.json, {_TURN_OFF}."
        )
    if progress is not None:
        progress(f"Downloading the paper's definitions from {PAPER_DEFINITIONS_URL}")
    return download_paper_definitions(path, transport=transport)
