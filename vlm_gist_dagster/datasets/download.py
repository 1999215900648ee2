"""Downloads of the benchmark's two datasets, for users with internet access.

* VLM-GIST: the FiftyOne export in the paper's public repository, pinned to the commit docs/protocol/ was
  written from and checked against the published ``samples.json`` checksum.
* COCO "minival (subset)": the 500 val2017 images with the lowest image ids (docs/protocol/pipeline.md §9.1),
  fetched with the FiftyOne zoo into a fresh zoo directory and written as a COCO detection directory
  (``data/`` + ``labels.json``) with *all* annotations of those images, masks and crowds included; the
  loader removes crowds as the paper did.

Offline, both raise :class:`DatasetDownloadError` with a message saying how to point the project at a
local copy. Nothing is ever skipped silently.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ..files import file_sha256
from .model import DatasetDownloadError
from .provenance import DatasetProvenance, write_provenance

logger = logging.getLogger(__name__)

VLM_GIST_REPOSITORY = "AIS-Bonn/vlm_gist"
VLM_GIST_COMMIT = "55f898172df5021820d1061ad112ad7989c51ade"
VLM_GIST_ARCHIVE_URL = f"https://codeload.github.com/{VLM_GIST_REPOSITORY}/tar.gz/{VLM_GIST_COMMIT}"
#: Path of the dataset inside the repository.
VLM_GIST_SUBDIR = "data/datasets/vlm_gist"
#: sha256 of ``samples.json`` at that commit (64 images, 1178 instances with masks).
VLM_GIST_SAMPLES_SHA256 = "cf3c9715e95c2ef7ddb649055e112d0324ea60c7ccceb3330956bcdecc59a8d8"
#: The paper's label-matching definitions cache in the same archive (357 COCO target definitions by
#: gpt-4o-2024-11-20), written next to the dataset directory: real runs start label matching from it.
VLM_GIST_DEFINITIONS_PATH = "data/definitions.json"
VLM_GIST_DEFINITIONS_SHA256 = "260fcf6e7144011728a5eeab93589e7c7eb1b65e0a1583b7954de5dfef6e463e"
VLM_GIST_DEFINITIONS_FILE_NAME = "vlm_gist_definitions.json"

COCO_MAX_SAMPLES = 500
#: What FiftyOne's zoo downloads for COCO val2017 (named in messages and the provenance file).
COCO_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
COCO_SOURCE = "COCO val2017 (cocodataset.org) via the FiftyOne zoo"


def local_copy_hint(name: str, settings_file: Path | None = None) -> str:
    var = f"VLM_GIST_DATASET_DIR_{name.upper()}"
    where = f" or change its 'path' in {settings_file}" if settings_file else ""
    return f"To use a local copy instead, set {var}=/path/to/{name}{where}."


def _short_reason(exc: BaseException) -> str:
    """One line for a failed download: the OS-level reason when there is one ("[Errno -3] Temporary
    failure in name resolution"), not the HTTP library's nested repr of its connection pool."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\][^)\"'\]]*", text)
    if errno:
        host = re.search(r"host='([^']+)'", text)
        return (f"cannot reach {host.group(1)}: " if host else "") + errno.group(0).strip()
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first if len(first) <= 200 else first[:197] + "..."


def _report(progress: Callable[[str], None] | None, message: str) -> None:
    logger.info(message)
    if progress is not None:
        progress(message)


def download_vlm_gist(
    target: Path,
    *,
    url: str = VLM_GIST_ARCHIVE_URL,
    expected_samples_sha256: str | None = VLM_GIST_SAMPLES_SHA256,
    transport: httpx.BaseTransport | None = None,
    timeout: httpx.Timeout | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Download the VLM-GIST dataset into ``target`` (atomically: a partial download never shows up as
    ``target``). Raises :class:`DatasetDownloadError` naming the URL and how to use a local copy."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    timeout = timeout or httpx.Timeout(30.0, read=120.0)
    with tempfile.TemporaryDirectory(prefix=".vlm_gist_download_", dir=target.parent) as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        _report(progress, f"Downloading the VLM-GIST dataset from {url}")
        try:
            with httpx.Client(transport=transport, timeout=timeout, follow_redirects=True) as client:
                with client.stream("GET", url) as response:
                    response.raise_for_status()
                    total = int(response.headers.get("content-length") or 0)
                    done = 0
                    with archive.open("wb") as f:
                        for chunk in response.iter_bytes(1 << 20):
                            f.write(chunk)
                            done += len(chunk)
                    _report(
                        progress,
                        f"Downloaded {done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else ""),
                    )
        except httpx.HTTPError as exc:
            reason = f"not in {target}, and the download from {url} failed ({_short_reason(exc)})"
            raise DatasetDownloadError(
                f"The VLM-GIST dataset is {reason}. {local_copy_hint('vlm_gist')}",
                dataset="vlm_gist",
                reason=reason,
            ) from exc

        staging = Path(tmp) / "vlm_gist"
        staging.mkdir()
        found = 0
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar.getmembers():
                    parts = Path(member.name).parts
                    # GitHub archives wrap everything in one "<repo>-<ref>/" directory.
                    rel = Path(*parts[1:]) if len(parts) > 1 else None
                    if rel is not None and str(rel) == VLM_GIST_DEFINITIONS_PATH and member.isfile():
                        member.name = VLM_GIST_DEFINITIONS_FILE_NAME
                        tar.extract(member, tmp, filter="data")
                        continue
                    if rel is None or not str(rel).startswith(VLM_GIST_SUBDIR + "/"):
                        continue
                    if not (member.isfile() or member.isdir()):
                        continue
                    member.name = str(rel.relative_to(VLM_GIST_SUBDIR))
                    tar.extract(member, staging, filter="data")
                    found += member.isfile()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DatasetDownloadError(f"The archive from {url} is not a valid .tar.gz ({exc}).") from exc
        samples = staging / "samples.json"
        if not found or not samples.is_file():
            raise DatasetDownloadError(f"The archive from {url} holds no {VLM_GIST_SUBDIR}/samples.json.")
        if expected_samples_sha256:
            digest = file_sha256(samples)
            if digest != expected_samples_sha256:
                raise DatasetDownloadError(
                    f"samples.json from {url} has sha256 {digest}, expected {expected_samples_sha256}: "
                    "the download is corrupt or the repository changed."
                )
        definitions = Path(tmp) / VLM_GIST_DEFINITIONS_FILE_NAME
        if definitions.is_file() and expected_samples_sha256:
            digest = file_sha256(definitions)
            if digest != VLM_GIST_DEFINITIONS_SHA256:
                raise DatasetDownloadError(
                    f"{VLM_GIST_DEFINITIONS_PATH} from {url} has sha256 {digest}, expected "
                    f"{VLM_GIST_DEFINITIONS_SHA256}: the download is corrupt or the repository changed."
                )
        write_provenance(
            staging,
            DatasetProvenance(
                dataset="vlm_gist",
                source=f"github.com/{VLM_GIST_REPOSITORY} at {VLM_GIST_COMMIT[:7]}, {VLM_GIST_SUBDIR}",
                url=url,
                images=len(list((staging / "data").iterdir())) if (staging / "data").is_dir() else None,
                selection="the published dataset",
            ),
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        if definitions.is_file():
            placed = target.parent / VLM_GIST_DEFINITIONS_FILE_NAME
            os.replace(definitions, placed)
            _report(progress, f"The paper's definitions cache is in {placed}")
    _report(progress, f"VLM-GIST dataset ready in {target}")
    return target


def write_coco_subset(
    annotations_file: Path, images_dir: Path, target: Path, *, max_samples: int = COCO_MAX_SAMPLES
) -> list[int]:
    """Write the ``max_samples`` lowest-id images of a COCO annotation file, with every annotation of
    those images, as a COCO detection directory (``data/`` + ``labels.json``) at ``target``.

    Returns the selected image ids. Raises :class:`DatasetDownloadError` if an image file is missing.
    """
    document: dict[str, Any] = json.loads(Path(annotations_file).read_text())
    images = sorted(document["images"], key=lambda im: int(im["id"]))[:max_samples]
    ids = {int(im["id"]) for im in images}
    missing = [im["file_name"] for im in images if not (images_dir / im["file_name"]).is_file()]
    if missing:
        raise DatasetDownloadError(
            f"{len(missing)} selected COCO images are missing from {images_dir}, e.g. {missing[:3]}"
        )
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".coco_subset_", dir=target.parent) as tmp:
        staging = Path(tmp) / "coco"
        (staging / "data").mkdir(parents=True)
        for im in images:
            shutil.copy2(images_dir / im["file_name"], staging / "data" / im["file_name"])
        subset = {
            "info": document.get("info", {}),
            "licenses": document.get("licenses", []),
            "images": images,
            "annotations": [a for a in document["annotations"] if int(a["image_id"]) in ids],
            "categories": document["categories"],
        }
        (staging / "labels.json").write_text(json.dumps(subset))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    return sorted(ids)


def download_coco_subset(
    target: Path,
    *,
    max_samples: int = COCO_MAX_SAMPLES,
    zoo_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """The paper's "COCO minival (subset)": the ``max_samples`` val2017 images with the lowest ids.

    FiftyOne's zoo (``fiftyone.zoo.get_zoo_dataset("coco-2017", ...).download_and_prepare(dir, split=...)``,
    the zoo's own download step, pointed at a directory of ours: ``download_zoo_dataset`` always writes
    to ``fo.config.dataset_zoo_dir`` and takes no directory) downloads the annotation archive and the
    images into a dedicated zoo directory. Its ``max_samples`` selection counts images already on disk
    first (docs/protocol/pipeline.md §9.1), so the ids are re-derived here from the full annotation file and any of the
    lowest ids still missing is fetched by id. The zoo directory (about 1 GB of annotation files for
    all splits) is removed once the subset is written; an interrupted download resumes from it.
    """
    target = Path(target)
    zoo_dir = Path(zoo_dir) if zoo_dir else target.parent / ".fiftyone_zoo" / "coco-2017"
    _report(
        progress,
        f"Downloading COCO val2017 (annotations, then the {max_samples} images with the lowest ids) "
        f"with the FiftyOne zoo into {zoo_dir}",
    )
    label_types = ["detections", "segmentations"]
    try:
        import fiftyone.zoo as foz

        zoo = foz.get_zoo_dataset(
            "coco-2017", label_types=label_types, max_samples=max_samples, shuffle=False
        )
        zoo.download_and_prepare(str(zoo_dir), split="validation")
        annotations_file = zoo_dir / "raw" / "instances_val2017.json"
        if not annotations_file.is_file():
            raise DatasetDownloadError(f"FiftyOne's zoo left no {annotations_file}")
        document = json.loads(annotations_file.read_text())
        lowest = sorted(document["images"], key=lambda im: int(im["id"]))[:max_samples]
        images_dir = zoo_dir / "validation" / "data"
        missing = [int(im["id"]) for im in lowest if not (images_dir / im["file_name"]).is_file()]
        if missing:
            _report(progress, f"Fetching {len(missing)} of the lowest ids the zoo did not select")
            by_id = foz.get_zoo_dataset("coco-2017", label_types=label_types, image_ids=missing)
            by_id.download_and_prepare(str(zoo_dir), split="validation")
    except DatasetDownloadError:
        raise
    except Exception as exc:  # noqa: BLE001 - FiftyOne raises many types for network failures
        reason = f"not in {target}, and the download with the FiftyOne zoo failed ({_short_reason(exc)})"
        raise DatasetDownloadError(
            f"The COCO subset is {reason}. {local_copy_hint('coco')} A local copy is a COCO detection "
            "directory (data/ + labels.json) or a FiftyOne export.",
            dataset="coco",
            reason=reason,
        ) from exc
    ids = write_coco_subset(annotations_file, images_dir, target, max_samples=max_samples)
    write_provenance(
        target,
        DatasetProvenance(
            dataset="coco",
            source=COCO_SOURCE,
            url=COCO_ANNOTATIONS_URL,
            images=len(ids),
            selection=f"the {max_samples} lowest image ids",
        ),
    )
    shutil.rmtree(zoo_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # the default zoo directory's parent, when nothing else is in it
        zoo_dir.parent.rmdir()
    _report(progress, f"COCO subset ready in {target} ({len(ids)} images)")
    return target


DOWNLOADERS: dict[str, Callable[..., Path]] = {
    "vlm_gist_github": download_vlm_gist,
    "coco_2017_val_lowest_ids": download_coco_subset,
}
