"""A rejected key is never retried (issue 13, tests): counted at an independent stub server
(``vlm_gist_dagster_tests.stubs``, not our simulator) that answers every request with HTTP 401 or 403.

Both retry layers are armed (the transport's ``max_retries=3`` and the paper's ``retry: 3`` description
attempts), so a client that retried a rejected key would send 4 to 16 requests; it must send exactly one
and stop with :class:`AuthenticationError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from vlm_gist_dagster.clients.errors import AuthenticationError
from vlm_gist_dagster.clients.transport import RetryPolicy
from vlm_gist_dagster.protocol.settings import load_detection_settings, load_model_settings
from vlm_gist_dagster.stages.descriptions import run_descriptions
from vlm_gist_dagster.stages.grounding import run_detections
from vlm_gist_dagster.stages.services import Services

from ..stubs import Reply, StubServer

REPO = Path(__file__).resolve().parents[2]
RETRY = RetryPolicy(max_retries=3, backoff_base_s=0.001, backoff_max_s=0.001)
KEY_ENV = "VLM_GIST_SIM_API_KEY"


def rejecting(status: int, open_paths: tuple[str, ...] = ()):
    """Every request answered ``status``, except ``open_paths`` (routes a server serves without a key)."""

    def route(method: str, path: str, body: Any) -> Reply:
        if path in open_paths:
            return Reply(200, {"status": "ok"})
        return Reply(status, {"error": {"message": "invalid api key", "code": status}})

    return route


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_chat_key_is_sent_once(status, coco_dataset, tmp_path):
    model = load_model_settings(REPO / "settings" / "models" / "sim_medium.json")
    images = coco_dataset.images.head(1).reset_index(drop=True)
    with StubServer(rejecting(status)) as stub:
        services = Services(
            endpoint_urls={"VLM-GIST simulator": stub.url},
            env={KEY_ENV: "sk-wrong"},
            data_dir=tmp_path / "data",
            concurrency=1,
            retry=RETRY,
        )
        with pytest.raises(AuthenticationError) as info:
            run_descriptions(images, model, services)
    assert [r.path for r in stub.requests] == ["/v1/chat/completions"]
    assert info.value.status == status and KEY_ENV in str(info.value) and "sk-wrong" not in str(info.value)


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_vision_token_is_sent_once(status, coco_dataset, tmp_path):
    model = load_model_settings(REPO / "settings" / "models" / "sim_medium.json")
    detection = load_detection_settings(REPO / "settings" / "detection" / "detection.json")
    images = coco_dataset.images.head(2).reset_index(drop=True)
    descriptions = pd.DataFrame(
        {
            "image_id": images["image_id"],
            "success": [True, True],
            "objects": [[{"object_name": "chair", "description": "a wooden chair"}]] * 2,
        }
    )
    with StubServer(rejecting(status, open_paths=("/health",))) as stub:
        services = Services(
            vision_urls={"mmgroundingdino": stub.url},
            env={"NIMBRO_VISION_API_KEY": "wrong-token"},
            data_dir=tmp_path / "data",
            retry=RETRY,
        )
        with pytest.raises(AuthenticationError) as info:
            run_detections(images, descriptions, model, detection, services)
    authenticated = [r.path for r in stub.requests if r.path != "/health"]
    assert len(authenticated) == 1, authenticated
    assert info.value.status == status and "wrong-token" not in str(info.value)
