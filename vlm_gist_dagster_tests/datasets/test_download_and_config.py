"""Dataset resolution (settings file, environment overrides) and downloads, offline: the VLM-GIST
download is served by an in-process httpx transport from an archive built from the shared copy."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest

from vlm_gist_dagster.datasets import DatasetDownloadError, DatasetError, load_dataset, resolve_dataset_dir
from vlm_gist_dagster.datasets.download import VLM_GIST_SAMPLES_SHA256, download_vlm_gist, write_coco_subset


def test_pinned_checksum_matches_the_published_dataset(vlm_gist_dir):
    assert hashlib.sha256((vlm_gist_dir / "samples.json").read_bytes()).hexdigest() == VLM_GIST_SAMPLES_SHA256


def _github_archive(vlm_gist_dir: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """A tarball shaped like GitHub's: everything under one '<repo>-<sha>/' directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(vlm_gist_dir, arcname="vlm_gist-55f8981/data/datasets/vlm_gist")
        for name, content in (extra or {}).items():
            info = tarfile.TarInfo(f"vlm_gist-55f8981/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archive(vlm_gist_dir) -> bytes:
    return _github_archive(vlm_gist_dir, {"README.md": b"readme", "vlm_gist/core/x.py": b"code"})


def test_download_vlm_gist_extracts_only_the_dataset(tmp_path, archive):
    requests = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(str(request.url))
        return httpx.Response(200, content=archive)

    target = download_vlm_gist(tmp_path / "vlm_gist", transport=httpx.MockTransport(handler))
    assert len(requests) == 1 and requests[0].startswith(
        "https://codeload.github.com/AIS-Bonn/vlm_gist/tar.gz/"
    )
    assert sorted(p.name for p in target.iterdir()) == [
        "LICENSE",
        "data",
        "metadata.json",
        "samples.json",
        "vlm_gist_download.json",
    ]
    ds = load_dataset(target)
    assert (ds.num_images, ds.num_instances) == (64, 1178)
    assert not any(p.name.startswith(".vlm_gist_download_") for p in tmp_path.iterdir())


def test_download_offline_fails_with_how_to_use_a_local_copy(tmp_path):
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Name or service not known", request=request)

    with pytest.raises(DatasetDownloadError) as err:
        download_vlm_gist(tmp_path / "vlm_gist", transport=httpx.MockTransport(handler))
    message = str(err.value)
    assert "codeload.github.com" in message and "VLM_GIST_DATASET_DIR_VLM_GIST" in message
    assert not (tmp_path / "vlm_gist").exists()


def test_download_rejects_a_changed_dataset(tmp_path, archive):
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=archive))
    with pytest.raises(DatasetDownloadError, match="sha256"):
        download_vlm_gist(tmp_path / "vlm_gist", transport=transport, expected_samples_sha256="0" * 64)
    assert not (tmp_path / "vlm_gist").exists()


def test_download_http_error(tmp_path):
    transport = httpx.MockTransport(lambda request: httpx.Response(404, text="Not Found"))
    with pytest.raises(DatasetDownloadError, match="404"):
        download_vlm_gist(tmp_path / "vlm_gist", transport=transport)


def test_write_coco_subset_takes_the_lowest_ids(tmp_path, coco_dir):
    """The selection of the paper's COCO subset, on a fake zoo directory: the lowest image ids."""
    labels = json.loads((coco_dir / "labels.json").read_text())
    ids = write_coco_subset(coco_dir / "labels.json", coco_dir / "data", tmp_path / "coco_5", max_samples=5)
    assert ids == sorted(im["id"] for im in labels["images"])[:5]
    ds = load_dataset(tmp_path / "coco_5", crowd="keep")
    assert ds.num_images == 5
    expected = sum(1 for a in labels["annotations"] if a["image_id"] in set(ids))
    assert ds.num_instances == expected


def test_write_coco_subset_reports_missing_images(tmp_path, coco_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetDownloadError, match="missing"):
        write_coco_subset(coco_dir / "labels.json", tmp_path / "empty", tmp_path / "out", max_samples=3)


def _settings(tmp_path: Path, **datasets) -> Path:
    path = tmp_path / "datasets.json"
    path.write_text(json.dumps(datasets))
    return path


def test_environment_variable_overrides_settings(tmp_path, monkeypatch, coco_dir):
    settings = _settings(tmp_path, coco={"path": str(tmp_path / "nowhere")})
    monkeypatch.setenv("VLM_GIST_DATASET_DIR_COCO", str(coco_dir))
    assert resolve_dataset_dir("coco", settings_file=settings) == coco_dir
    monkeypatch.setenv("VLM_GIST_DATASET_DIR_COCO", str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="VLM_GIST_DATASET_DIR_COCO"):
        resolve_dataset_dir("coco", settings_file=settings)


def test_settings_path_used_and_missing_dataset_is_not_skipped(tmp_path, monkeypatch, coco_dir):
    monkeypatch.delenv("VLM_GIST_DATASET_DIR_COCO", raising=False)
    settings = _settings(tmp_path, coco={"path": str(coco_dir)})
    assert resolve_dataset_dir("coco", settings_file=settings) == coco_dir
    settings = _settings(
        tmp_path, coco={"path": str(tmp_path / "nowhere"), "download": "coco_2017_val_lowest_ids"}
    )
    with pytest.raises(DatasetDownloadError, match="VLM_GIST_DATASET_DIR_COCO"):
        resolve_dataset_dir("coco", settings_file=settings, download=False)


def test_settings_errors_name_file_and_field(tmp_path, monkeypatch):
    monkeypatch.delenv("VLM_GIST_DATASET_DIR_COCO", raising=False)
    settings = _settings(tmp_path, coco={"path": "x", "dowload": "coco_2017_val_lowest_ids"})
    with pytest.raises(DatasetError, match=r"datasets\.json, field 'coco\.dowload'"):
        resolve_dataset_dir("coco", settings_file=settings)
    with pytest.raises(DatasetError, match="no dataset named 'imagenet'"):
        resolve_dataset_dir("imagenet", settings_file=_settings(tmp_path, coco={"path": "x"}))


def test_project_settings_file_is_valid():
    from vlm_gist_dagster.datasets import load_datasets_settings

    settings = load_datasets_settings(Path(__file__).resolve().parents[2] / "settings" / "datasets.json")
    assert set(settings.datasets) == {"vlm_gist", "coco"}
    assert settings.datasets["coco"].max_samples == 500
