"""The paper's published label-matching definitions (issue 15 item 2).

Its definitions cache (357 texts for the 80 COCO classes and 277 distractors, written by gpt-4o via
OpenAI) is where label matching starts on real runs: a COCO partition then asks the LLM for its
detections' labels only, never for a target. The file comes from the VLM-GIST archive, a single-file
download, or a local copy (``$VLM_GIST_PAPER_DEFINITIONS``; these tests use ``../shared/reference``).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import httpx
import pandas as pd
import pytest

from vlm_gist_dagster.datasets import DatasetDownloadError
from vlm_gist_dagster.datasets.download import download_vlm_gist
from vlm_gist_dagster.datasets.paper_definitions import (
    PAPER_DEFINITIONS_ENV,
    PAPER_DEFINITIONS_URL,
    resolve_paper_definitions,
)
from vlm_gist_dagster.protocol.settings import load_label_matching_settings
from vlm_gist_dagster.stages.label_matching import run_label_matches
from vlm_gist_dagster.stages.services import Services

from ..stubs import MARK, StubServer, openai_route

REPO = Path(__file__).resolve().parents[2]

#: A COCO partition's kept detections: (label, description) per image.
DETECTIONS = {
    "000000000139": [("potted plant", "a green potted plant"), ("tv", "a flat black television")],
    "000000000285": [("bear", "a large brown bear"), ("teddy", None)],
}


@pytest.fixture(scope="module")
def paper_file(shared_dir) -> Path:
    return shared_dir / "reference" / "definitions.json"


@pytest.fixture(scope="module")
def paper(paper_file) -> dict[str, str]:
    return json.loads(paper_file.read_text(encoding="utf-8"))


def frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    validations, descriptions = [], []
    for image_id, detections in DETECTIONS.items():
        for index, (label, description) in enumerate(detections):
            validations.append(
                {
                    "image_id": image_id,
                    "detection_index": index,
                    "kept": True,
                    "object_name": label,
                    "validated_object_name": label,
                    "description": description,
                    "confidence": 0.9 - 0.1 * index,
                    **{"x": 0.1, "y": 0.1, "w": 0.2, "h": 0.2, "mask": None},
                }
            )
        objects = [{"object_name": label, "description": text} for label, text in detections]
        descriptions.append({"image_id": image_id, "objects": objects, "success": True})
    ground_truth = pd.DataFrame({"image_id": list(DETECTIONS), "label": ["tv", "bear"]})
    return pd.DataFrame(validations), pd.DataFrame(descriptions), ground_truth, list(DETECTIONS)


def coco_settings(initial: str):
    settings = load_label_matching_settings(REPO / "settings" / "label_matching" / "coco.json")
    return settings.model_copy(update={"initial_definitions": initial})


def match(stub: StubServer, data_dir: Path, initial: str, paper_file: Path):
    services = Services(
        env={"OPENAI_API_KEY": "stub-key", "VLM_GIST_ENDPOINT_URL_OPENAI": stub.url},
        data_dir=data_dir,
        concurrency=4,
        paper_definitions=paper_file,
    )
    validations, descriptions, ground_truth, image_ids = frames()
    settings = coco_settings(initial)
    return run_label_matches(validations, descriptions, ground_truth, image_ids, settings, services)


def definition_prompts(stub: StubServer) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in stub.seen("/v1/chat/completions")]


def test_a_coco_partition_asks_for_no_target_definition(tmp_path, paper, paper_file):
    settings = coco_settings("paper_any_service")
    targets = set(settings.dataset_targets) | set(settings.augmented_targets)
    assert len(paper) == 357 and len(targets) == 357
    labels = [label for detections in DETECTIONS.values() for label, _ in detections]

    with StubServer(openai_route()) as stub:
        table, summary = match(stub, tmp_path / "data", "paper_any_service", paper_file)
        prompts = definition_prompts(stub)
        embedded = [text for r in stub.seen("/v1/embeddings") for text in r.body["input"]]

    # One definition request per detection label, none for any of the 357 targets.
    assert len(prompts) == len(labels) == summary["definitions_generated"]
    for label in labels:
        assert (
            sum(
                f'"object_name": "{label}"' in p or p.endswith(f": {label}") or f"\n{label}\n" in p
                for p in prompts
            )
            == 1
        ), label
    for target in targets:
        assert not any(p.endswith(f": {target}") or f"\n{target}\n" in p for p in prompts), target
    assert summary["definitions_from_paper"] == 357
    # The targets were matched with the paper's texts: they are embedded as written there.
    assert paper["tv"] in embedded and paper["teddybear"] in embedded and paper["pottedplant"] in embedded
    assert set(table["dataset_match"].dropna()) <= set(settings.dataset_targets)
    # The paper's file stays read-only: the service's own file holds only what that service wrote.
    (own,) = (tmp_path / "data" / "cache" / "definitions").glob("*.json")
    written = json.loads(own.read_text())
    assert len(written) == len(labels) and all(MARK in text for text in written.values())


def test_opting_out_defines_every_target_with_the_llm(tmp_path, paper_file):
    labels = [label for detections in DETECTIONS.values() for label, _ in detections]
    with StubServer(openai_route()) as stub:
        _, summary = match(stub, tmp_path / "data", "none", paper_file)
        prompts = definition_prompts(stub)
    assert len(prompts) == summary["definitions_generated"] == len(labels) + 357
    assert summary["definitions_from_paper"] == 0
    assert any(
        p.endswith(
            "\nteddy bear\n\nYour description must not refer to the given task or include the "
            "words 'item', 'category' and 'context'."
        )
        for p in prompts
    )


@pytest.mark.parametrize(
    ("initial", "simulated", "openai_url", "uses_paper"),
    [
        ("paper", False, None, True),  # OpenAI's API wrote them: a real run starts from them
        ("paper", True, None, False),  # never the simulator's file ...
        ("paper_any_service", True, None, True),  # ... unless opted in
        ("paper", False, "http://gpu-box:8001", False),  # another server behind the "OpenAI" name
        ("paper_any_service", False, "http://gpu-box:8001", True),
        ("none", False, None, False),
    ],
)
def test_which_services_start_from_the_papers_definitions(
    initial, simulated, openai_url, uses_paper, paper, paper_file
):
    env = {PAPER_DEFINITIONS_ENV: str(paper_file)}
    if openai_url:
        env["VLM_GIST_ENDPOINT_URL_OPENAI"] = openai_url
    services = Services(env=env, simulated=simulated, data_dir=Path("/nonexistent"))
    store = services.definitions_store("OpenAI", initial)
    assert (store.initial is not None) == uses_paper
    if uses_paper:
        assert dict(store.initial) == paper
        assert dict(store.read()) == paper  # no file yet: the paper's definitions alone


def test_the_papers_definitions_win_over_older_texts_in_the_file(tmp_path, paper, paper_file):
    own = tmp_path / "cache" / "definitions" / "https_api.openai.com.json"
    own.parent.mkdir(parents=True)
    own.write_text(json.dumps({"tv": "an older text", "ownlabel": "a label's definition"}))
    services = Services(env={PAPER_DEFINITIONS_ENV: str(paper_file)}, data_dir=tmp_path)
    definitions = services.definitions_store("OpenAI", "paper").read()
    assert definitions["tv"] == paper["tv"] and definitions["ownlabel"] == "a label's definition"
    assert len(definitions) == 358


# -- where the file comes from --------------------------------------------------------------------------


def test_the_vlm_gist_download_puts_the_definitions_next_to_the_dataset(tmp_path, vlm_gist_dir, paper_file):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(vlm_gist_dir, arcname="vlm_gist-55f8981/data/datasets/vlm_gist")
        tar.add(paper_file, arcname="vlm_gist-55f8981/data/definitions.json")
    archive = buffer.getvalue()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=archive))
    target = download_vlm_gist(tmp_path / "datasets" / "vlm_gist", transport=transport)
    placed = tmp_path / "datasets" / "vlm_gist_definitions.json"
    assert placed.read_bytes() == paper_file.read_bytes()
    assert sorted(p.name for p in target.iterdir()) == [
        "LICENSE",
        "data",
        "metadata.json",
        "samples.json",
        "vlm_gist_download.json",
    ]


def datasets_file(tmp_path: Path) -> Path:
    path = tmp_path / "datasets.json"
    path.write_text(json.dumps({"vlm_gist": {"path": str(tmp_path / "datasets" / "vlm_gist")}}))
    return path


def test_resolving_the_file(tmp_path, paper_file):
    settings_file = datasets_file(tmp_path)
    assert resolve_paper_definitions(env={PAPER_DEFINITIONS_ENV: str(paper_file)}) == paper_file
    with pytest.raises(DatasetDownloadError, match=PAPER_DEFINITIONS_ENV):
        resolve_paper_definitions(env={PAPER_DEFINITIONS_ENV: str(tmp_path / "missing.json")})

    content = paper_file.read_bytes()
    requests = []

    def serve(request: httpx.Request) -> httpx.Response:
        requests.append(str(request.url))
        return httpx.Response(200, content=content)

    transport = httpx.MockTransport(serve)
    found = resolve_paper_definitions(env={}, settings_file=settings_file, transport=transport)
    assert found == tmp_path / "datasets" / "vlm_gist_definitions.json" and found.read_bytes() == content
    assert requests == [PAPER_DEFINITIONS_URL] and "55f898172df5021820d1061ad112ad7989c51ade" in requests[0]
    # Found there from now on: no second download.
    assert resolve_paper_definitions(env={}, settings_file=settings_file, transport=transport) == found
    assert len(requests) == 1
    assert hashlib.sha256(found.read_bytes()).hexdigest() == hashlib.sha256(content).hexdigest()


def test_a_changed_or_unreachable_file_is_an_error_saying_what_to_do(tmp_path):
    settings_file = datasets_file(tmp_path)
    changed = httpx.MockTransport(lambda request: httpx.Response(200, content=b'{"cup": "A cup."}'))
    with pytest.raises(DatasetDownloadError, match="sha256"):
        resolve_paper_definitions(env={}, settings_file=settings_file, transport=changed)

    def offline(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Name or service not known", request=request)

    with pytest.raises(DatasetDownloadError) as err:
        resolve_paper_definitions(env={}, settings_file=settings_file, transport=httpx.MockTransport(offline))
    assert PAPER_DEFINITIONS_ENV in str(err.value) and '"initial_definitions": "none"' in str(err.value)
    assert not (tmp_path / "datasets" / "vlm_gist_definitions.json").exists()
    with pytest.raises(DatasetDownloadError, match="downloading is off"):
        resolve_paper_definitions(env={}, settings_file=settings_file, download=False)
