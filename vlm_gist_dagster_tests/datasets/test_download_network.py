"""The dataset downloads through the real download code (FiftyOne's zoo for COCO, httpx for VLM-GIST),
with only the network beneath them faked: ``requests``' HTTP adapter (which FiftyOne's ``eta`` web
session sends through) serves a tiny COCO annotation archive and images built here, and httpx's
transport serves a GitHub-shaped tarball. Entry point: ``resolve_dataset_dir``, as the pipeline and
``vlm-gist run`` call it."""

from __future__ import annotations

import io
import json
import random
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest
import requests
import urllib3
from PIL import Image

from vlm_gist_dagster.datasets import DatasetDownloadError, load_dataset, resolve_dataset_dir
from vlm_gist_dagster.datasets.provenance import read_provenance

ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
#: More images than the subset takes, with ids out of order and with gaps, so that "the 500 lowest
#: ids" differs from "the first 500 in the file" and from "500 consecutive ids".
NUM_FAKE_IMAGES = 540


def _jpeg(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (16, 12), tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fake_coco() -> dict:
    """A tiny val2017: annotation archive shaped like cocodataset.org's, and one JPEG per image URL."""
    rng = random.Random(12)
    ids = rng.sample(range(100, 600_000), NUM_FAKE_IMAGES)  # shuffled: file order is not id order
    images, annotations, files = [], [], {}
    for n, image_id in enumerate(ids):
        name = f"{image_id:012d}.jpg"
        url = f"http://images.cocodataset.org/val2017/{name}"
        images.append(
            {"id": image_id, "file_name": name, "width": 16, "height": 12, "coco_url": url, "license": 1}
        )
        files[url] = _jpeg(image_id)
        annotations.append(
            {
                "id": 10 * image_id,
                "image_id": image_id,
                "category_id": 1 + n % 2,
                "bbox": [2.0, 2.0, 8.0, 6.0],
                "area": 48.0,
                "segmentation": [[2.0, 2.0, 10.0, 2.0, 10.0, 8.0, 2.0, 8.0]],
                "iscrowd": 0,
            }
        )
        if n % 7 == 0:  # a crowd region too: the download keeps it, the loader removes it
            annotations.append(
                {
                    "id": 10 * image_id + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [0.0, 0.0, 4.0, 4.0],
                    "area": 16.0,
                    "segmentation": {"counts": [0, 16, 176], "size": [12, 16]},
                    "iscrowd": 1,
                }
            )
    document = {
        "info": {"description": "fake COCO for tests"},
        "licenses": [{"id": 1, "name": "test"}],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 2, "name": "dog", "supercategory": "animal"},
        ],
    }
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations/instances_val2017.json", json.dumps(document))
        zf.writestr("annotations/captions_val2017.json", json.dumps({"annotations": []}))
    files[ANNOTATIONS_URL] = archive.getvalue()
    return {"files": files, "document": document, "lowest": sorted(ids)[:500]}


class FakeNetwork:
    """Replaces ``requests.adapters.HTTPAdapter.send``: answers from ``files`` through the real
    ``build_response`` (404 for anything else), or fails every request like a machine without network."""

    def __init__(self, files: dict[str, bytes] | None = None, offline: bool = False) -> None:
        self.files = files or {}
        self.offline = offline
        self.requested: list[str] = []

    def send(self, adapter: requests.adapters.HTTPAdapter, request, **kwargs):
        self.requested.append(request.url)
        if self.offline:
            raise requests.ConnectionError(
                "HTTPConnectionPool(host='images.cocodataset.org', port=80): Max retries exceeded with url: "
                '/annotations/annotations_trainval2017.zip (Caused by NameResolutionError("<urllib3.connection.'
                "HTTPConnection object at 0x7f00>: Failed to resolve 'images.cocodataset.org' ([Errno -3] "
                'Temporary failure in name resolution)"))',
                request=request,
            )
        body = self.files.get(request.url)
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(body or b"not found"),
            headers={"Content-Length": str(len(body or b"not found"))},
            status=200 if body is not None else 404,
            preload_content=False,
            request_url=request.url,
        )
        return adapter.build_response(request, raw)


@pytest.fixture
def network(monkeypatch):
    def install(**kwargs) -> FakeNetwork:
        fake = FakeNetwork(**kwargs)
        monkeypatch.setattr(
            requests.adapters.HTTPAdapter, "send", lambda self, request, **kw: fake.send(self, request, **kw)
        )
        return fake

    return install


def _settings(tmp_path: Path, **datasets) -> Path:
    path = tmp_path / "datasets.json"
    path.write_text(json.dumps(datasets))
    return path


def _coco_settings(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    monkeypatch.delenv("VLM_GIST_DATASET_DIR_COCO", raising=False)
    target = tmp_path / "datasets" / "coco_500"
    settings = _settings(
        tmp_path, coco={"path": str(target), "download": "coco_2017_val_lowest_ids", "max_samples": 500}
    )
    return settings, target


def test_coco_download_through_the_fiftyone_zoo_takes_the_500_lowest_ids(
    tmp_path, monkeypatch, network, fake_coco
):
    fake = network(files=fake_coco["files"])
    settings, target = _coco_settings(tmp_path, monkeypatch)
    root = resolve_dataset_dir("coco", settings_file=settings)
    assert root == target
    labels = json.loads((root / "labels.json").read_text())
    assert sorted(im["id"] for im in labels["images"]) == fake_coco["lowest"]
    assert sorted(p.name for p in (root / "data").iterdir()) == [f"{i:012d}.jpg" for i in fake_coco["lowest"]]
    # Every annotation of those images, crowds included; the loader then removes the crowds.
    lowest = set(fake_coco["lowest"])
    expected = [a for a in fake_coco["document"]["annotations"] if a["image_id"] in lowest]
    assert sorted(a["id"] for a in labels["annotations"]) == sorted(a["id"] for a in expected)
    ds = load_dataset(root, name="coco")
    assert ds.num_images == 500
    assert ds.num_instances == sum(1 for a in expected if not a["iscrowd"])
    # The network saw the archive once and exactly the 500 images, nothing else.
    assert fake.requested.count(ANNOTATIONS_URL) == 1
    image_urls = [u for u in fake.requested if u != ANNOTATIONS_URL]
    assert sorted(image_urls) == sorted(f"http://images.cocodataset.org/val2017/{i:012d}.jpg" for i in lowest)
    provenance = read_provenance(root)
    assert provenance is not None and (provenance.dataset, provenance.images) == ("coco", 500)
    assert not (tmp_path / "datasets" / ".fiftyone_zoo").exists()  # ~1 GB of zoo files removed
    # Resolved again: the copy is there, nothing is downloaded.
    fake.requested.clear()
    assert resolve_dataset_dir("coco", settings_file=settings) == root and fake.requested == []


def test_coco_download_resumes_a_zoo_directory_holding_other_images(
    tmp_path, monkeypatch, network, fake_coco
):
    """FiftyOne's max_samples counts images already on disk; a zoo directory left by an interrupted
    download that holds images above the 500 lowest must not change the selection."""
    network(files=fake_coco["files"])
    settings, target = _coco_settings(tmp_path, monkeypatch)
    data = target.parent / ".fiftyone_zoo" / "coco-2017" / "validation" / "data"
    data.mkdir(parents=True)
    highest = sorted(im["id"] for im in fake_coco["document"]["images"])[-20:]
    for image_id in highest:
        (data / f"{image_id:012d}.jpg").write_bytes(_jpeg(image_id))
    root = resolve_dataset_dir("coco", settings_file=settings)
    labels = json.loads((root / "labels.json").read_text())
    assert sorted(im["id"] for im in labels["images"]) == fake_coco["lowest"]


def test_coco_download_offline_is_one_clear_error(tmp_path, monkeypatch, network):
    network(offline=True)
    settings, target = _coco_settings(tmp_path, monkeypatch)
    with pytest.raises(DatasetDownloadError) as err:
        resolve_dataset_dir("coco", settings_file=settings)
    message = str(err.value)
    assert "cannot reach images.cocodataset.org: [Errno -3] Temporary failure in name resolution" in message
    assert "VLM_GIST_DATASET_DIR_COCO" in message
    assert "HTTPConnectionPool" not in message and "\n" not in message
    assert not target.exists()


def test_coco_download_server_error_names_the_url(tmp_path, monkeypatch, network):
    network(files={})  # every URL answers 404
    settings, target = _coco_settings(tmp_path, monkeypatch)
    with pytest.raises(DatasetDownloadError, match="annotations_trainval2017.zip"):
        resolve_dataset_dir("coco", settings_file=settings)
    assert not target.exists()


@pytest.fixture(scope="module")
def vlm_gist_tarball(vlm_gist_dir) -> bytes:
    """GitHub's archive of the repository at the pinned commit: one '<repo>-<sha>/' directory holding
    the dataset under data/datasets/vlm_gist and other files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(
            vlm_gist_dir, arcname="vlm_gist-55f898172df5021820d1061ad112ad7989c51ade/data/datasets/vlm_gist"
        )
        readme = b"# vlm_gist"
        info = tarfile.TarInfo("vlm_gist-55f898172df5021820d1061ad112ad7989c51ade/README.md")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
    return buffer.getvalue()


def test_vlm_gist_download_over_the_http_transport(tmp_path, monkeypatch, vlm_gist_tarball):
    requested = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        if request.url.host == "codeload.github.com":
            return httpx.Response(
                200, content=vlm_gist_tarball, headers={"content-length": str(len(vlm_gist_tarball))}
            )
        return httpx.Response(404)

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", handle_request)
    monkeypatch.delenv("VLM_GIST_DATASET_DIR_VLM_GIST", raising=False)
    target = tmp_path / "datasets" / "vlm_gist"
    settings = _settings(tmp_path, vlm_gist={"path": str(target), "download": "vlm_gist_github"})
    root = resolve_dataset_dir("vlm_gist", settings_file=settings)
    assert root == target
    assert requested == [
        "https://codeload.github.com/AIS-Bonn/vlm_gist/tar.gz/55f898172df5021820d1061ad112ad7989c51ade"
    ]
    ds = load_dataset(root)
    assert (ds.num_images, ds.num_instances) == (64, 1178)
    assert not (root / "README.md").exists()
    provenance = read_provenance(root)
    assert provenance is not None and (provenance.dataset, provenance.images) == ("vlm_gist", 64)


def test_vlm_gist_download_offline_is_one_clear_error(tmp_path, monkeypatch):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution", request=request)

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", handle_request)
    monkeypatch.delenv("VLM_GIST_DATASET_DIR_VLM_GIST", raising=False)
    target = tmp_path / "vlm_gist"
    settings = _settings(tmp_path, vlm_gist={"path": str(target), "download": "vlm_gist_github"})
    with pytest.raises(DatasetDownloadError) as err:
        resolve_dataset_dir("vlm_gist", settings_file=settings)
    message = str(err.value)
    assert "[Errno -3] Temporary failure in name resolution" in message
    assert "VLM_GIST_DATASET_DIR_VLM_GIST" in message and "\n" not in message
    assert not target.exists()
