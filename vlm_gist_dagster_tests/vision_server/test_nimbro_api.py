"""The paper authors' own clients (``nimbro-api`` 0.2.5) against ``vlm-gist vision-serve`` processes.

Each client keeps its default validation (``validate_health`` 60, ``validate_flavor`` /
``validate_status`` on, its own response checks); only the endpoint, and for the generative
baselines the generation length (the tiny random models would otherwise fill 1,024 tokens), are set.
Every server runs as ``vlm-gist vision-serve --random-weights --device cpu`` in a child process, with
a token the clients must send, and is loaded by the client's own ``/status`` → ``/model_flavors`` →
``/load`` sequence (no ``--flavor`` at start).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import needs_vision, vision_serve

pytestmark = needs_vision

TOKEN = "vision-serve-test-token"
KEY_ENV = "NIMBRO_VISION_API_KEY"


@pytest.fixture(scope="module")
def image(coco_dir: Path) -> str:
    return str(sorted((coco_dir / "data").glob("*.jpg"))[0])


@pytest.fixture(scope="module", autouse=True)
def client_key() -> Iterator[None]:
    before = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = TOKEN
    yield
    if before is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = before


def endpoint(url: str) -> dict[str, str]:
    return {"name": "vision-serve", "api_url": url, "key_type": "environment", "key_value": KEY_ENV}


SERVER_ENV = {"NIMBRO_VISION_SERVER_TOKEN": TOKEN}


def test_mmgroundingdino_client(image: str) -> None:
    from nimbro_api.api.nimbro_vision_servers import MmGroundingDino

    with vision_serve("mmgroundingdino", env=SERVER_ENV) as url:
        client = MmGroundingDino(endpoint=endpoint(url))
        success, message, detections = client.get_detections(
            image=image, prompts=["a person", "a red bus", "a dog"]
        )
        assert success, message
        # client defaults: over-detect 0.0 → at most one box per prompt, NMS 0.6
        assert 1 <= len(detections) <= 3
        assert {d["prompt"] for d in detections} <= {"a person", "a red bus", "a dog"}
        status = httpx.get(url + "/status", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert status["status"]["flavor"] == "large"  # the client's default flavour, loaded by the client
        success, message = client.unload()
        assert success, message


def test_sam2_realtime_client_update_then_track(image: str) -> None:
    from nimbro_api.api.nimbro_vision_servers import Sam2Realtime

    with vision_serve("sam2_realtime", env=SERVER_ENV) as url:
        client = Sam2Realtime(endpoint=endpoint(url))
        prompts = [
            {"object_id": 0, "bbox": [10, 20, 200, 300]},
            {"object_id": 1, "points": [[100, 100]], "labels": [1]},
        ]
        success, message, tracks = client.get_response(image=image, prompts=prompts)
        assert success, message
        assert {t["track_id"] for t in tracks} == {0, 1}
        for _ in range(2):  # tracking: the client checks tracker_initialized in /status first
            success, message, tracks = client.get_response(image=image)
            assert success, message
            assert {t["track_id"] for t in tracks} == {0, 1}


def test_florence2_client(image: str) -> None:
    from nimbro_api.api.nimbro_vision_servers import Florence2

    with vision_serve("florence2", env=SERVER_ENV) as url:
        client = Florence2(endpoint=endpoint(url), max_new_tokens=24)
        success, message, response = client.get_response(image=image)  # its default prompt: <OD>
        assert success, message
        assert isinstance(response, dict)


def test_kosmos2_client(image: str) -> None:
    from nimbro_api.api.nimbro_vision_servers import Kosmos2

    with vision_serve("kosmos2", env=SERVER_ENV) as url:
        client = Kosmos2(endpoint=endpoint(url), max_new_tokens=16)
        success, message, response = client.get_response(image=image)
        assert success, message
        assert isinstance(response, dict)


def test_wrong_token_is_refused(image: str) -> None:
    from nimbro_api.api.nimbro_vision_servers import MmGroundingDino

    with vision_serve("mmgroundingdino", env={"NIMBRO_VISION_SERVER_TOKEN": "another-token"}) as url:
        success, message, _ = MmGroundingDino(endpoint=endpoint(url)).get_detections(
            image=image, prompts=["a"]
        )
        assert not success and "403" in message
        assert httpx.get(url + "/health").json()["status"] == "ok"  # and it keeps serving


def test_cuda_flavor_at_start_without_cuda_exits_with_the_reason() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run(
        [sys.executable, "-m", "vlm_gist_dagster.cli", "vision-serve", "--family", "sam3", "--flavor", "sam3",
         "--random-weights", "--device", "cuda", "--port", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "device 'cuda' was requested but CUDA is not available" in result.stderr


def test_unknown_flavor_at_start_lists_the_flavors() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vlm_gist_dagster.cli", "vision-serve", "--family", "sam2_realtime", "--flavor", "huge"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        "unknown flavor 'huge' for sam2_realtime; valid flavors: ['tiny', 'small', 'base', 'large']"
        in result.stderr
    )


def test_the_pipelines_own_client_against_vision_serve(image: str) -> None:
    """Stage B's client (clients.vision) as the pipeline calls it: detect on MM-GDINO, then SAM2 update +
    track on the detections' boxes, masks associated by track id (what the later end-to-end run does)."""
    import asyncio

    import cv2

    from vlm_gist_dagster.clients.vision import VisionClient
    from vlm_gist_dagster.protocol.segmentation import decode_sam2_track, tracks_by_id

    env = {"NIMBRO_VISION_API_KEY": TOKEN}
    prompts = ["a person on a bus", "a red bus", "a red bus"]

    async def stage_b(gdino_url: str, sam2_url: str) -> None:
        async with (
            VisionClient("mmgroundingdino", gdino_url, env=env) as gdino,
            VisionClient("sam2_realtime", sam2_url, env=env) as sam2,
        ):
            detections = await gdino.detect(image, prompts, overdetect_factor=1.0)
            assert len(detections) == 3 and set(detections.label.tolist()) <= set(prompts)
            boxes = [[int(v) for v in box] for box in detections.xyxy.tolist()]
            updated, tracked = await sam2.segment(image, boxes)
            assert tracked is not None
            by_id = tracks_by_id(tracked)
            assert set(by_id) <= {0, 1, 2}
            height, width = cv2.imread(image).shape[:2]
            for track in tracked:
                assert decode_sam2_track(track, width, height)["size"] == [height, width]

    with (
        vision_serve("mmgroundingdino", env=SERVER_ENV) as gdino_url,
        vision_serve("sam2_realtime", env=SERVER_ENV) as sam2_url,
    ):
        asyncio.run(stage_b(gdino_url, sam2_url))
