"""Simulated answers never reach a real run (issue 15 item 1).

Stages A-D run for three COCO images against the simulator, then again in the same data directory
against independent stub servers (``vlm_gist_dagster_tests.stubs``: not our simulator) listening on the
very ports the simulator had, so the URLs, endpoint names, payloads and cache directory of the two runs
are identical and only the identity of the answering service differs. The second run must make every
call itself (descriptions, detector and SAM2 calls, definitions, embeddings) and its results must hold
no simulated text or vector.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_gist_dagster.clients.cache import SIMULATOR
from vlm_gist_dagster.protocol.settings import (
    load_detection_settings,
    load_label_matching_settings,
    load_model_settings,
)
from vlm_gist_dagster.runner import simulator_environment
from vlm_gist_dagster.sim import SERVER_NAMES, run_simulator
from vlm_gist_dagster.stages.descriptions import run_descriptions
from vlm_gist_dagster.stages.grounding import run_detections, run_masks
from vlm_gist_dagster.stages.label_matching import run_label_matches
from vlm_gist_dagster.stages.services import Services
from vlm_gist_dagster.stages.validation import passthrough

from ..stubs import MARK, STUB_DIM, StubServer, openai_route, vision_route

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "settings"


def run_stages(services: Services, images, ground_truth):
    model = load_model_settings(SETTINGS / "models" / "sim_medium.json")  # OpenAI flavour, JSON body
    detection = load_detection_settings(SETTINGS / "detection" / "detection.json")
    matching = load_label_matching_settings(SETTINGS / "label_matching" / "coco.json")
    descriptions = run_descriptions(images, model, services)
    detections, per_image = run_detections(images, descriptions, model, detection, services)
    masks = run_masks(images, detections, per_image, model, detection, services)
    validations = passthrough(masks)
    matches, summary = run_label_matches(
        validations, descriptions, ground_truth, list(images["image_id"]), matching, services
    )
    return descriptions, masks, matches, summary


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def stub_on(route, url: str) -> StubServer:
    """A stub on the port the simulator had (``url``'s); an ephemeral one if that port is taken."""
    try:
        return StubServer(route, port_of(url))
    except OSError:
        return StubServer(route)


def cache_entries(data_dir: Path, kind: str) -> list[dict]:
    entries = []
    for path in (data_dir / "cache" / "responses").rglob("*.json"):
        stored = json.loads(path.read_text())
        if stored["key"]["kind"] == kind:
            entries.append(stored)
    return entries


def test_a_real_run_never_reads_what_the_simulator_answered(coco_dataset, tmp_path):
    data_dir = tmp_path / "data"
    images = coco_dataset.images.head(3).reset_index(drop=True)
    ground_truth = coco_dataset.ground_truth[coco_dataset.ground_truth["image_id"].isin(images["image_id"])]

    # -- 1. the simulator answers (as under `vlm-gist run`) ------------------------------------------
    with run_simulator({"coco": coco_dataset}, ports={n: 0 for n in SERVER_NAMES}) as sim:
        env = simulator_environment(sim)
        simulated = Services(env=env, data_dir=data_dir, simulated=True, concurrency=8)
        sim_descriptions, _, _, sim_summary = run_stages(simulated, images, ground_truth)
        chat_url, gdino_url, sam2_url = (
            sim.chat_base_url,
            sim.vision_urls["mmgroundingdino"],
            sim.vision_urls["sam2_realtime"],
        )
    assert sim_descriptions["success"].all() and sim_summary["definitions_generated"] > 0
    assert MARK not in json.dumps(sim_descriptions["objects"].tolist())

    # -- 2. "real" servers at the same URLs, same data directory --------------------------------------
    with (
        stub_on(openai_route(), chat_url) as chat,
        stub_on(vision_route("mmgroundingdino"), gdino_url) as gdino,
        stub_on(vision_route("sam2_realtime"), sam2_url) as sam2,
    ):
        real_env = {
            **env,
            **{k: chat.url for k, v in env.items() if v == chat_url},
            "VLM_GIST_VISION_URL_MMGROUNDINGDINO": gdino.url,
            "VLM_GIST_VISION_URL_SAM2_REALTIME": sam2.url,
        }
        real = Services(env=real_env, data_dir=data_dir, simulated=False, concurrency=8)
        descriptions, masks, matches, summary = run_stages(real, images, ground_truth)

    # It made its own calls: one description per image, one detector and one SAM2 call per image ...
    completions = chat.seen("/v1/chat/completions")
    described = [r for r in completions if any(isinstance(m["content"], list) for m in r.body["messages"])]
    assert len(described) == len(images)
    assert len(gdino.seen("/infer")) == len(images) and len(sam2.seen("/update")) == len(images)
    # ... every definition it matched with (labels and the 357 COCO targets), and every embedding.
    assert summary["definitions_generated"] == len(completions) - len(described) >= 357
    assert summary["definitions_cached"] == 0
    embedded = [t for r in chat.seen("/v1/embeddings") for t in r.body["input"]]
    assert len(embedded) == len(set(embedded)) > 357

    # No simulated text: every description, definition and matched label is the stub's.
    for objects in descriptions["objects"]:
        assert [o["object_name"] for o in objects] == ["stubbed lamp", "stubbed crate"]
    assert set(matches["label"]) == {"stubbed lamp", "stubbed crate"}
    assert masks["mask"].notna().all()
    files = sorted((data_dir / "cache" / "definitions").glob("*.json"))
    assert [f.name for f in files] == [f"http_127.0.0.1_{port_of(chat.url)}.json", f"{SIMULATOR}.json"]
    real_definitions, simulated_definitions = (json.loads(f.read_text()) for f in files)
    assert real_definitions and all(MARK in text for text in real_definitions.values())
    assert simulated_definitions and not any(MARK in text for text in simulated_definitions.values())
    # No simulated vector: the stub's vectors have STUB_DIM dimensions, the simulator's 384; mixing
    # them would also have failed the run ("differing shapes").
    vectors = cache_entries(data_dir, "embedding")
    by_service = {e["key"]["service"]: set() for e in vectors}
    for entry in vectors:
        by_service[entry["key"]["service"]].add(entry["response"]["dim"])
    assert by_service == {SIMULATOR: {384}, chat.url: {STUB_DIM}}
    assert {e["key"]["service"] for e in cache_entries(data_dir, "vision")} == {
        SIMULATOR,
        gdino.url,
        sam2.url,
    }


@pytest.mark.parametrize("simulated", [True, False])
def test_services_identity(simulated):
    services = Services(
        env={"VLM_GIST_ENDPOINT_URL_OPENAI": "http://gpu-box:8001"}, simulated=simulated, data_dir=Path("/x")
    )
    expected = SIMULATOR if simulated else "http://gpu-box:8001"
    assert services.endpoint_identity("OpenAI") == expected  # no key needed to know who answers
    assert services.definitions_store("OpenAI").path.name == (
        "simulator.json" if simulated else "http_gpu-box_8001.json"
    )
    assert services.service_identity == (SIMULATOR if simulated else None)
