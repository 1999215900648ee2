"""vision-serve's API, in process (Starlette's TestClient), one family at a time, tiny random weights.

Expected values come from the public code of the NimbRo vision servers (router_base.py and each
family's model.py): routes, status codes, detail texts and response shapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from .conftest import decode_png, image_b64, needs_vision

pytestmark = needs_vision

AUTH = {"Authorization": "Bearer any-token"}


def make_client(family: str, *, flavor: str | None = None, token: str | None = None, **runtime: Any) -> Any:
    from starlette.testclient import TestClient

    from vlm_gist_dagster.vision_server._runtime import Runtime
    from vlm_gist_dagster.vision_server.app import VisionServer, create_app
    from vlm_gist_dagster.vision_server.serve import family_class

    options = {"device": "cpu", "random_weights": True, **runtime}
    server = VisionServer(family_class(family)(Runtime(**options)), token=token or "")
    if flavor is not None:
        server.family.load(flavor, {"flavor": flavor})
    return TestClient(create_app(server)), server


@pytest.fixture(scope="module")
def gdino() -> Iterator[Any]:
    client, server = make_client("mmgroundingdino", flavor="large")
    yield client
    server.close()


def gdino_body(images: list[str], prompts: list[str], **params: Any) -> dict[str, Any]:
    parameters = {
        "prompts": prompts,
        "min_confidence": 0.0,
        "nms_iou": None,
        "overdetect_factor": 1.0,
        **params,
    }
    return {"images": images, "inference_parameters": [parameters]}


# -- common routes -----------------------------------------------------------------------------------


def test_common_routes_lifecycle() -> None:
    client, server = make_client("mmgroundingdino")
    try:
        health = client.get("/health")  # open route
        assert health.status_code == 200
        assert health.json()["status"] == "ok" and health.json()["cuda_available"] is True  # cpu is usable
        assert client.get("/model_flavors", headers=AUTH).json() == {
            "flavors": [
                "tiny",
                "base",
                "large",
                "large_zeroshot",
                "llmdet_tiny",
                "llmdet_base",
                "llmdet_large",
            ]
        }
        assert client.get("/status", headers=AUTH).json() == {
            "model_family": "mmgroundingdino",
            "status": None,
        }
        for path in ("/infer", "/unload"):
            response = client.post(path, headers=AUTH, json={})
            assert (response.status_code, response.json()) == (503, {"detail": "No model loaded"})
        loaded = client.post("/load", headers=AUTH, json={"flavor": "tiny"})
        assert (loaded.status_code, loaded.json()) == (200, {"loaded_model": "Model", "flavor": "tiny"})
        status = client.get("/status", headers=AUTH).json()
        assert status["model_family"] == "mmgroundingdino"
        assert status["status"]["flavor"] == "tiny" and status["status"]["weights"] == "random"
        assert client.post("/unload", headers=AUTH).json() == {"unloaded": True}
        assert client.get("/status", headers=AUTH).json()["status"] is None
    finally:
        server.close()


def test_auth_as_router_base() -> None:
    client, server = make_client("sam3", token="s3cret")
    try:
        missing = client.get("/status")
        assert (missing.status_code, missing.json()) == (401, {"detail": "Missing or invalid auth scheme"})
        assert missing.headers["www-authenticate"] == "Bearer"
        assert client.get("/status", headers={"Authorization": "Basic s3cret"}).status_code == 401
        wrong = client.get("/status", headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()) == (403, {"detail": "Invalid token"})
        assert client.get("/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200
        assert client.post("/update", headers={"Authorization": "Bearer s3cret"}, json={}).status_code == 404
    finally:
        server.close()


def test_unknown_flavor_is_a_load_error_and_the_server_keeps_serving(gdino: Any) -> None:
    response = gdino.post("/load", headers=AUTH, json={"flavor": "huge"})
    assert response.status_code == 500
    detail = response.json()["detail"]
    assert detail.startswith("Model load error: Unknown flavor 'huge'") and "'llmdet_large'" in detail
    # as on the real server, the previous model was unloaded first
    assert gdino.get("/status", headers=AUTH).json()["status"] is None
    assert gdino.post("/load", headers=AUTH, json={"flavor": "large"}).status_code == 200
    assert gdino.post("/infer", headers=AUTH, json=gdino_body([image_b64()], ["a cat"])).status_code == 200


def test_cuda_request_without_cuda_names_the_device() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    client, server = make_client("sam2_realtime", device="cuda")
    try:
        assert client.get("/health").json()["cuda_available"] is False
        response = client.post("/load", headers=AUTH, json={"flavor": "tiny"})
        assert response.status_code == 500
        assert "device 'cuda' was requested but CUDA is not available" in response.json()["detail"]
        assert client.get("/status", headers=AUTH).json() == {"model_family": "sam2_realtime", "status": None}
    finally:
        server.close()


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        ("bm90IGFuIGltYWdl", "images[1] is not an image file"),
        ("data:image/png;base64," + image_b64(), "images[1] is a data URI"),
        (42, "images[1] must be a base64 string"),
    ],
)
def test_an_image_that_is_not_an_image(gdino: Any, image: Any, fragment: str) -> None:
    response = gdino.post("/infer", headers=AUTH, json=gdino_body([image_b64(), image], ["a cat"]))
    assert response.status_code == 500
    assert response.json()["detail"].startswith("Inference failed: " + fragment)
    assert gdino.post("/infer", headers=AUTH, json=gdino_body([image_b64()], ["a cat"])).status_code == 200


def test_request_validation_as_the_real_server(gdino: Any) -> None:
    def detail(body: Any) -> str:
        response = gdino.post("/infer", headers=AUTH, json=body)
        assert response.status_code == 500
        return response.json()["detail"]

    assert detail({"images": [image_b64()]}) == "Inference failed: Missing 'inference_parameters' in payload"
    assert detail(gdino_body([image_b64()], ["a"], min_confidence=0)) == (
        "Inference failed: Invalid 'min_confidence' in inference_parameters[0]"  # an int is refused
    )
    assert detail(
        gdino_body([image_b64()] * 2, ["a"]) | {"inference_parameters": [{"prompts": ["a"]}] * 3}
    ) == ("Inference failed: Mismatch between number of images and inference_parameters")
    bad_json = gdino.post(
        "/infer", headers={**AUTH, "Content-Type": "application/json"}, content=b"{not json"
    )
    assert bad_json.status_code == 500 and "not valid JSON" in bad_json.json()["detail"]


# -- mmgroundingdino ---------------------------------------------------------------------------------


def test_gdino_response_and_selection(gdino: Any) -> None:
    prompts = ["a red chair", "a dog", "a dog"]
    response = gdino.post(
        "/infer", headers=AUTH, json=gdino_body([image_b64(120, 160), image_b64(90, 70, seed=1)], prompts)
    )
    assert response.status_code == 200
    artifact = response.json()["artifact"]
    assert artifact["model"] == "mmgroundingdino" and len(artifact["detections"]) == 2
    for detections, (width, height) in zip(artifact["detections"], [(160, 120), (70, 90)], strict=True):
        # over-detect 1.0 with 100 queries: exactly one box per prompt occurrence, padding included
        assert len(detections) == len(prompts)
        confidences = [d["confidence"] for d in detections]
        assert all(isinstance(c, float) and 0.0 < c < 1.0 for c in confidences)
        for d in detections:
            x1, y1, x2, y2 = d["box_xyxy"]
            assert all(isinstance(v, int) for v in d["box_xyxy"])
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert d["prompt"] in prompts


def test_gdino_overdetect_none_returns_up_to_300_per_chunk(gdino: Any) -> None:
    body = gdino_body([image_b64()], ["a cat", "a dog"], overdetect_factor=None)
    detections = gdino.post("/infer", headers=AUTH, json=body).json()["artifact"]["detections"][0]
    # 100 queries x 2 entities = 200 pairs, all kept (every sigmoid mean is > 0.0)
    assert len(detections) == 200
    assert {d["prompt"] for d in detections} == {"a cat", "a dog"}


def test_gdino_chunks_over_1000_characters_keep_their_prompts(gdino: Any) -> None:
    # 600 + 600 characters do not fit one 1,000-character caption: two chunks, each with its own entity
    prompts = ["a " + "very " * 119 + "red chair", "a " + "very " * 119 + "blue dog"]
    body = gdino_body([image_b64()], prompts, overdetect_factor=0.0)
    detections = gdino.post("/infer", headers=AUTH, json=body).json()["artifact"]["detections"][0]
    assert sorted(d["prompt"] for d in detections) == sorted(prompts)


def test_chunk_width_as_the_server() -> None:
    from vlm_gist_dagster.protocol.gdino_selection import chunk_width
    from vlm_gist_dagster.vision_server.mmgroundingdino import clean_label_name

    # chunk_width takes the prompts' character lengths
    assert chunk_width([1] * 7) == 7  # everything fits: one chunk
    assert chunk_width([400] * 5) == 2  # widths 1 and 2 fit; 1 is avoided
    assert chunk_width([300] * 6) == 3  # widths 1-3 fit; 6 % 3 == 0 beats 6 % 2 == 0 by width
    assert chunk_width([1200]) == 1  # nothing fits: 1
    assert clean_label_name("cup_(drinking)") == "cup "


def test_gdino_images_of_a_request_share_batched_passes(gdino: Any) -> None:
    family = gdino.app.state.server.family
    calls = []
    original = family.model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["pixel_values"].shape[0])
        return original(*args, **kwargs)

    family.model.forward = counting
    try:
        body = gdino_body([image_b64(seed=i) for i in range(5)], ["a cat"])
        assert gdino.post("/infer", headers=AUTH, json=body).status_code == 200
    finally:
        del family.model.forward
    assert calls == [4, 1]  # --max-batch-size 4: five images in two forward passes


# -- sam2_realtime -----------------------------------------------------------------------------------


def _check_tracks(frame: list[dict[str, Any]], width: int, height: int, object_ids: set[int]) -> None:
    assert frame, "the tiny model's objects are all visible: every prompt has a mask"
    for track in frame:
        assert track["track_id"] in object_ids
        x1, y1, x2, y2 = track["box_xyxy"]
        assert 0 <= x1 < x2 <= width - 1 + 1 and 0 <= y1 < y2 <= height
        assert decode_png(track["mask"]).shape == (y2 - y1, x2 - x1)


def test_sam2_update_then_track_frame_after_frame() -> None:
    client, server = make_client("sam2_realtime", flavor="large")
    try:
        never = client.post("/infer", headers=AUTH, json={"images": [image_b64()]}).json()
        assert never == {"artifact": {"tracks": [], "model": "sam2_realtime", "metadata": []}}
        assert client.get("/status", headers=AUTH).json()["status"]["tracker_initialized"] is False
        prompts = [{"object_id": j, "bbox": [10 * j, 5, 60 + 10 * j, 80]} for j in range(3)]
        prompts.append({"object_id": 7, "points": [[100, 50], [20, 20]], "labels": [1, 0]})
        update = client.post("/update", headers=AUTH, json={"image": image_b64(), "prompts": prompts})
        assert update.status_code == 200
        artifact = update.json()["artifact"]
        assert artifact["model"] == "sam2_realtime" and len(artifact["tracks"]) == 1
        assert artifact["metadata"] == [{"image_width": 160, "image_height": 120}]
        _check_tracks(artifact["tracks"][0], 160, 120, {0, 1, 2, 7})
        assert client.get("/status", headers=AUTH).json()["status"]["tracker_initialized"] is True
        frames = [image_b64(seed=s) for s in (1, 2, 3)]
        tracked = client.post("/infer", headers=AUTH, json={"images": frames}).json()["artifact"]
        assert len(tracked["tracks"]) == 3 and len(tracked["metadata"]) == 3
        for frame in tracked["tracks"]:
            _check_tracks(frame, 160, 120, {0, 1, 2, 7})
        assert server.family.frame_index == 3
        assert client.post("/reset", headers=AUTH).json() == {"reset": True}
        assert (
            client.post("/infer", headers=AUTH, json={"images": frames[:1]}).json()["artifact"]["tracks"]
            == []
        )
        bad = client.post(
            "/update", headers=AUTH, json={"image": image_b64(), "prompts": [{"bbox": [0, 0, 5, 5]}]}
        )
        assert (bad.status_code, bad.json()) == (
            500,
            {"detail": "Update failed: Missing 'object_id' in prompt 0"},
        )
    finally:
        server.close()


def test_sam2_long_stream_keeps_memory_bounded() -> None:
    client, server = make_client("sam2_realtime", flavor="tiny")
    try:
        prompts = [{"object_id": 0, "bbox": [10, 10, 50, 50]}]
        assert (
            client.post(
                "/update", headers=AUTH, json={"image": image_b64(64, 64), "prompts": prompts}
            ).status_code
            == 200
        )
        frames = [image_b64(64, 64, seed=s) for s in range(30)]
        assert client.post("/infer", headers=AUTH, json={"images": frames}).status_code == 200
        session = server.family.session
        assert sorted(session.processed_frames) == [0, 30]  # frame 0 (conditioning) and the latest
        kept = session.output_dict_per_obj[0]["non_cond_frame_outputs"]
        assert min(kept) >= 30 - 17 and max(kept) == 30  # memory window: 16 pointers + the current frame
    finally:
        server.close()


# -- sam3 --------------------------------------------------------------------------------------------


def test_sam3_prompts_of_an_image_are_one_batch_on_one_vision_pass() -> None:
    client, server = make_client("sam3", flavor="sam3")
    family = server.family
    vision_calls, forward_calls = [], []
    get_vision, forward = family.model.get_vision_features, family.model.forward

    def count_vision(pixel_values: Any, **kwargs: Any) -> Any:
        vision_calls.append(pixel_values.shape[0])
        return get_vision(pixel_values, **kwargs)

    def count_forward(*args: Any, **kwargs: Any) -> Any:
        forward_calls.append(kwargs["text_embeds"].pooler_output.shape[0])
        return forward(*args, **kwargs)

    family.model.get_vision_features, family.model.forward = count_vision, count_forward
    try:
        prompts = ["a red chair", "a dog", "a dog", "a lamp"]
        body = {
            "images": [image_b64(120, 160), image_b64(90, 70, seed=1)],
            "inference_parameters": {"prompts": prompts, "min_confidence": 0.0},
        }
        response = client.post("/infer", headers=AUTH, json=body)
        assert response.status_code == 200
        assert vision_calls == [2]  # both images in one vision pass
        assert forward_calls == [3, 3]  # per image, its three distinct prompts in one batch
        artifact = response.json()["artifact"]
        assert artifact["model"] == "sam3"
        assert artifact["metadata"] == [
            {"image_width": 160, "image_height": 120},
            {"image_width": 70, "image_height": 90},
        ]
        for detections, (width, height) in zip(artifact["detections"], [(160, 120), (70, 90)], strict=True):
            assert (
                len(detections) == 3 * 20
            )  # min_confidence 0: every one of the 20 queries, per distinct prompt
            assert [d["prompt"] for d in detections] == [p for p in dict.fromkeys(prompts) for _ in range(20)]
            for d in detections:
                x1, y1, x2, y2 = d["box_xyxy"]
                assert 0 <= x1 <= width and 0 <= x2 <= width and 0 <= y1 <= height and 0 <= y2 <= height
                if d["mask"] is not None:
                    mx1, my1, mx2, my2 = d["mask_box_xyxy"]
                    assert decode_png(d["mask"]).shape == (my2 - my1, mx2 - mx1)
            per_prompt = [d["confidence"] for d in detections[:20]]
            assert per_prompt == sorted(per_prompt, reverse=True)
        strict = {**body, "inference_parameters": {"prompts": prompts, "min_confidence": 1.0}}
        assert client.post("/infer", headers=AUTH, json=strict).json()["artifact"]["detections"] == [[], []]
        best = {
            **body,
            "inference_parameters": {
                "prompts": prompts,
                "min_confidence": 0.0,
                "max_detections_per_prompt": 1,
            },
        }
        firsts = client.post("/infer", headers=AUTH, json=best).json()["artifact"]["detections"][0]
        assert [(d["prompt"], d["confidence"]) for d in firsts] == [
            (d["prompt"], d["confidence"]) for d in artifact["detections"][0][::20]
        ]
    finally:
        server.close()


# -- florence2, kosmos2 (the paper's baseline requests, docs/protocol/pipeline.md §6) ------------------------------------


def test_florence2_paper_baseline_request() -> None:
    client, server = make_client("florence2", flavor="large")
    try:
        body = {
            "images": [image_b64(), image_b64(seed=1)],
            "prompts": [{"task_prompt": "<OD>", "prompt_args": None}],
            "inference_parameters": {"num_beams": 3, "max_new_tokens": 24, "max_batch_size": 6},
        }
        artifact = client.post("/infer", headers=AUTH, json=body).json()["artifact"]
        assert artifact["model"] == "florence2" and artifact["captions"] == [None, None]
        assert len(artifact["detections"]) == 2
        for d in artifact["detections"][0]:
            assert set(d) == {"box_xyxy", "label"} and len(d["box_xyxy"]) == 4
        caption = client.post(
            "/infer",
            headers=AUTH,
            json={
                "images": [image_b64()],
                "prompts": "<CAPTION>",
                "inference_parameters": {"max_new_tokens": 8},
            },
        ).json()["artifact"]
        assert caption["detections"] == [[]] and isinstance(caption["captions"][0], str)
        bad = client.post("/infer", headers=AUTH, json={"images": [image_b64()], "prompts": "<NOPE>"})
        assert bad.status_code == 500 and bad.json()["detail"].startswith(
            "Inference failed: Invalid prompt format: <NOPE>"
        )
    finally:
        server.close()


def test_kosmos2_paper_baseline_request() -> None:
    client, server = make_client("kosmos2", flavor="patch14-224")
    try:
        body = {
            "images": [image_b64(), image_b64(seed=1)],
            "prompts": ["<grounding> Describe this image in detail:"],
            "inference_parameters": {"num_beams": 3, "max_new_tokens": 16, "max_batch_size": 6},
        }
        artifact = client.post("/infer", headers=AUTH, json=body).json()["artifact"]
        assert artifact["model"] == "kosmos2"
        assert len(artifact["detections"]) == 2 and len(artifact["captions"]) == 2
        assert all(isinstance(c, str) for c in artifact["captions"])
    finally:
        server.close()


def test_weights_that_cannot_be_had_are_a_clear_load_error(tmp_path: Any) -> None:
    # HF_HUB_OFFLINE=1 in the test session: the official weights are not in the cache and cannot be fetched
    client, server = make_client("sam2_realtime", random_weights=False)
    try:
        response = client.post("/load", headers=AUTH, json={"flavor": "tiny"})
        assert response.status_code == 500
        detail = response.json()["detail"]
        assert detail.startswith(
            "Model load error: cannot load the weights of flavor 'tiny' from 'facebook/sam2.1-hiera-tiny'"
        )
        assert "--weights DIR" in detail
        assert client.get("/status", headers=AUTH).json()["status"] is None
    finally:
        server.close()
    client, server = make_client(
        "sam2_realtime", random_weights=False, weights=str(tmp_path), weights_flavor="tiny"
    )
    try:
        detail = client.post("/load", headers=AUTH, json={"flavor": "tiny"}).json()["detail"]
        assert f"from {str(tmp_path)!r}" in detail and "does not hold this model's files" in detail
    finally:
        server.close()


def test_selection_rule_by_hand() -> None:
    # the rule vision-serve's mmgroundingdino applies (shared with the simulator)
    from vlm_gist_dagster.protocol.gdino_selection import DetectorBox, nms
    from vlm_gist_dagster.protocol.gdino_selection import select_detections as select

    def box(prompt: str, score: float, x: float = 0.0) -> DetectorBox:
        return DetectorBox(prompt, (x, 0.0, x + 10.0, 10.0), score)

    raw = [box("cat", 0.9), box("cat", 0.8, x=1.0), box("dog", 0.3, x=50.0), box("cow", 0.05, x=80.0)]

    def confidences(prompts: list[str], **kw: Any) -> list[float]:
        options = {"min_confidence": 0.05, "nms_iou": None, "overdetect_factor": 1.0} | kw
        return [d.confidence for d in select(raw, prompts, **options)]

    # strict > 0.05 drops the cow; one box per prompt occurrence, best first
    assert confidences(["cat", "dog"]) == [0.9, 0.3]
    # "cat" sent twice gets two boxes
    assert confidences(["cat", "cat", "dog"]) == [0.9, 0.8, 0.3]
    # "bird" finds nothing: padded to ceil(2 × 1.0) = 2 with the best box left (the second cat)
    assert confidences(["cat", "bird"]) == [0.9, 0.8]
    assert confidences(["cat", "bird"], overdetect_factor=0.0) == [0.9]  # no padding
    assert confidences(["cat", "bird"], overdetect_factor=1.5) == [0.9, 0.8, 0.3]  # ceil(3.0) = 3
    # NMS: the two cats overlap with IoU 90/110 = 0.82 > 0.5, so the second goes
    assert confidences(["cat", "cat"], nms_iou=0.5) == [0.9, 0.3]
    assert confidences(["cat", "dog"], overdetect_factor=None) == [0.9, 0.8, 0.3]  # everything, model order
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=float)  # IoU 50 / 150 = 1/3
    assert nms(boxes, np.array([0.4, 0.6]), 0.33).tolist() == [1]
    assert nms(boxes, np.array([0.4, 0.6]), 0.34).tolist() == [1, 0]
