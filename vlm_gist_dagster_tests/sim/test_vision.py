"""Protocol conformance of the simulated NimbRo vision servers: what the public servers do
(AIS-Bonn/nimbro_vision_servers at 35b229d; docs/nimbro_vision_api.md), every expectation citing the
server code it follows (``router_base.py`` = ``nimbro_vision_server/router_base.py``, ``<family>/model.py`` =
``models/<family>/<family>/model.py``)."""

from __future__ import annotations

import base64

import cv2
import httpx
import numpy as np
import pytest

from vlm_gist_dagster.sim import run_simulator

from .conftest import AUTH, EPHEMERAL, b64_file, image_path

FAMILIES = ("mmgroundingdino", "sam2_realtime", "florence2", "kosmos2", "sam3")


@pytest.fixture(scope="module")
def coco_b64(coco_dataset):
    return b64_file(image_path(coco_dataset, "000000037777"))  # 352 x 230, 11 GT instances


def load(client, url: str, flavor: str) -> dict:
    r = client.post(url + "/load", json={"flavor": flavor})
    assert r.status_code == 200
    return r.json()


@pytest.mark.parametrize("family", FAMILIES)
def test_common_routes(simulator, client, family):
    url = simulator.vision_urls[family]
    # router_base.py:47-52: open route, torch.cuda.is_available() on a healthy GPU server
    assert httpx.get(url + "/health").json() == {"status": "ok", "cuda_available": True}
    flavors = client.get(url + "/model_flavors").json()["flavors"]
    client.post(url + "/load", json={"flavor": flavors[0]})
    assert client.post(url + "/unload").json() == {"unloaded": True}
    assert client.get(url + "/status").json() == {"model_family": family, "status": None}
    # get_manager_dep (router_base.py:39-43): nothing loaded → 503 "No model loaded", also on /unload
    for route in ("/infer", "/unload") + (("/update", "/reset") if family == "sam2_realtime" else ()):
        r = client.post(url + route, json={"images": []})
        assert (r.status_code, r.json()) == (503, {"detail": "No model loaded"}), route
    # /load answers the class name, "Model" for every family (router_base.py:105-108)
    assert load(client, url, flavors[-1]) == {"loaded_model": "Model", "flavor": flavors[-1]}
    status = client.get(url + "/status").json()
    assert status["model_family"] == family
    if family == "sam2_realtime":
        assert status["status"] is None  # sam2/model.py:50-80 never sets self.flavor (get_status, :44-48)
    else:
        assert status["status"] == {"flavor": flavors[-1]}  # <family>/model.py get_status
    # an unknown flavour: 500 "Model load error: ..." (router_base.py:91-101), and the model loaded before
    # is gone, because /load unloads first (:77-86)
    r = client.post(url + "/load", json={"flavor": "no-such-flavor"})
    assert r.status_code == 500
    assert r.json() == {
        "detail": f"Model load error: Unknown flavor 'no-such-flavor', valid flavors: {flavors}"
    }
    assert client.post(url + "/infer", json={"images": []}).status_code == 503
    # a /load body that is not JSON fails outside the server's try (router_base.py:74): a bare 500
    r = client.post(url + "/load", content=b"{flavor", headers={"Content-Type": "application/json"})
    assert (r.status_code, r.text) == (500, "Internal Server Error")
    # FastAPI's 404 body for an unknown route
    assert (client.get(url + "/nope").status_code, client.get(url + "/nope").json()) == (
        404,
        {"detail": "Not Found"},
    )


def test_flavours_are_the_real_servers(simulator, client):
    """<family>/model.py get_available_flavors (gdino :28-31, sam2 :26-29, florence2 :27-30, kosmos2 :27-30)."""
    expected = {
        "mmgroundingdino": [
            "tiny",
            "base",
            "large",
            "large_zeroshot",
            "llmdet_tiny",
            "llmdet_base",
            "llmdet_large",
        ],
        "sam2_realtime": ["tiny", "small", "base", "large"],
        "florence2": ["base", "large", "base_ft", "large_ft"],
        "kosmos2": ["patch14-224"],
        "sam3": ["sam3"],
    }
    for family, flavors in expected.items():
        assert client.get(simulator.vision_urls[family] + "/model_flavors").json() == {"flavors": flavors}


@pytest.mark.parametrize("family", FAMILIES)
def test_bearer_auth(simulator, family):
    """router_base.py:17-35: HTTPBearer(auto_error=False), one detail text for every 401."""
    url = simulator.vision_urls[family]
    for headers in ({}, {"Authorization": "Basic dXNlcg=="}, {"Authorization": "Bearer"}):
        r = httpx.get(url + "/status", headers=headers)
        assert (r.status_code, r.json()) == (401, {"detail": "Missing or invalid auth scheme"})
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url + "/status", headers=AUTH).status_code == 200  # no server token: any bearer passes


def test_wrong_token_is_403(sim_datasets):
    with run_simulator(sim_datasets, ports=EPHEMERAL, servers=["mmgroundingdino"], vision_token="tok") as sim:
        url = sim.vision_urls["mmgroundingdino"]
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/status").status_code == 401
        r = httpx.get(url + "/status", headers={"Authorization": "Bearer wrong"})
        assert (r.status_code, r.json()) == (403, {"detail": "Invalid token"})
        # auth comes before the "model loaded" check: a wrong token on /infer is 403, not 503
        assert (
            httpx.post(url + "/infer", json={}, headers={"Authorization": "Bearer wrong"}).status_code == 403
        )
        assert httpx.get(url + "/status", headers={"Authorization": "Bearer tok"}).status_code == 200


def test_health_control(sim_datasets):
    with run_simulator(sim_datasets, ports=EPHEMERAL, servers=["florence2"]) as sim:
        url = sim.vision_urls["florence2"]
        sim.set_controls("florence2", cuda_available=False)
        assert httpx.get(url + "/health").json() == {"status": "ok", "cuda_available": False}


def _gdino(client, url, image_b64, prompts, factor=1.0):
    body = {
        "images": [image_b64],
        "inference_parameters": [
            {"prompts": prompts, "min_confidence": 0.0, "nms_iou": None, "overdetect_factor": factor}
        ],
    }
    r = client.post(url + "/infer", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_gdino_response_shape_and_selection_rule(simulator, client, coco_b64):
    url = simulator.vision_urls["mmgroundingdino"]
    load(client, url, "large")
    prompts = ["a white chair at the bottom left", "a silver refrigerator on the right", "a purple giraffe in the sky",
               "a silver refrigerator on the right"]  # fmt: skip
    body = _gdino(client, url, coco_b64, prompts)
    assert set(body) == {"artifact"} and body["artifact"]["model"] == "mmgroundingdino"
    (detections,) = body["artifact"]["detections"]
    for d in detections:
        assert set(d) == {"box_xyxy", "confidence", "prompt"}
        assert len(d["box_xyxy"]) == 4 and all(type(v) is int for v in d["box_xyxy"])  # truncated ints
        assert isinstance(d["confidence"], float)
        x1, y1, x2, y2 = d["box_xyxy"]
        assert 0 <= x1 < x2 <= 352 and 0 <= y1 < y2 <= 230
    # overdetect_factor 1.0: ceil(4 × 1.0) = 4 boxes in total; picks first, in descending confidence
    assert len(detections) == 4
    assert all(d["prompt"] in prompts for d in detections)
    # the simulator gives each GT-matched prompt one high-scored box (≥ 0.55) and distractors < 0.4;
    # the refrigerator is one instance, so its duplicated prompt gets one true box and one distractor
    by_prompt = {
        p: sorted((d["confidence"] for d in detections if d["prompt"] == p), reverse=True) for p in prompts
    }
    assert (
        len(by_prompt["a white chair at the bottom left"]) == 1
        and by_prompt["a white chair at the bottom left"][0] >= 0.55
    )
    assert len(by_prompt["a silver refrigerator on the right"]) == 2
    fridge_scores = by_prompt["a silver refrigerator on the right"]
    assert fridge_scores[0] >= 0.55 and fridge_scores[1] < 0.4
    assert (
        len(by_prompt["a purple giraffe in the sky"]) == 1
        and by_prompt["a purple giraffe in the sky"][0] < 0.4
    )
    # factor 0.0: at most one box per prompt occurrence, no padding
    zero = _gdino(client, url, coco_b64, prompts, factor=0.0)["artifact"]["detections"][0]
    assert len(zero) <= 4
    # the refrigerator prompt is grounded on the refrigerator's GT box (352×230 px, jittered)
    fridge = next(d for d in detections if d["prompt"] == "a silver refrigerator on the right")["box_xyxy"]
    gt = simulator.world.images["coco/000000037777"]
    inst = next(i for i in gt.instances if i.label == "refrigerator")
    gx1, gy1, gx2, gy2 = gt.box_xyxy(inst, 352, 230)
    iw = min(fridge[2], gx2) - max(fridge[0], gx1)
    ih = min(fridge[3], gy2) - max(fridge[1], gy1)
    union = (fridge[2] - fridge[0]) * (fridge[3] - fridge[1]) + (gx2 - gx1) * (gy2 - gy1) - iw * ih
    assert iw * ih / union > 0.5


def test_gdino_scales_boxes_to_the_received_image(simulator, client, coco_dataset):
    url = simulator.vision_urls["mmgroundingdino"]
    load(client, url, "large")
    image = cv2.imread(image_path(coco_dataset, "000000037777"), cv2.IMREAD_COLOR)
    half = cv2.resize(image, (176, 115), interpolation=cv2.INTER_AREA)
    data = base64.b64encode(cv2.imencode(".png", half)[1].tobytes()).decode()
    (detections,) = _gdino(client, url, data, ["a silver refrigerator on the right"])["artifact"][
        "detections"
    ]
    assert all(0 <= d["box_xyxy"][2] <= 176 and 0 <= d["box_xyxy"][3] <= 115 for d in detections)


def _infer(client, url, body):
    r = client.post(url + "/infer", json=body)
    return r.status_code, r.json()


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        # gdino/model.py:131-195, in the server's order; every rejection is a 500 "Inference failed: ..."
        ({"inference_parameters": None}, "Missing 'inference_parameters' in payload"),
        ({"images": None}, "Missing 'images' in payload"),
        ({"images": 5}, "Invalid 'images' in payload"),
        ({"inference_parameters": "x"}, "Invalid 'inference_parameters' in payload"),
        ({"inference_parameters": [{"min_confidence": 0.1}]}, "Missing 'prompts' in inference_parameters[0]"),
        ({"inference_parameters": [{"prompts": 3}]}, "Invalid 'prompts' in inference_parameters[0]"),
        (
            {"inference_parameters": [{"prompts": ["a"], "min_confidence": 0}]},
            "Invalid 'min_confidence' in inference_parameters[0]",
        ),
        (
            {"inference_parameters": [{"prompts": ["a"], "min_confidence": None}]},
            "Invalid 'min_confidence' in inference_parameters[0]",
        ),
        (
            {"inference_parameters": [{"prompts": ["a"], "nms_iou": 1}]},
            "Invalid 'nms_iou' in inference_parameters[0]",
        ),
        (
            {"inference_parameters": [{"prompts": ["a"], "overdetect_factor": 1}]},
            "Invalid 'overdetect_factor' in inference_parameters[0]",
        ),
        (
            {"inference_parameters": [{"prompts": ["a"]}] * 2, "images": ["x", "y", "z"]},
            "Mismatch between number of images and inference_parameters",
        ),
        ({"inference_parameters": [{"prompts": [["a"]]}]}, "unhashable type: 'list'"),  # Counter(prompts)
        (
            {"inference_parameters": [{"prompts": [7]}]},
            "object of type 'int' has no len()",
        ),  # determine_bin_width
    ],
)
def test_gdino_request_validation(simulator, client, coco_b64, change, detail):
    url = simulator.vision_urls["mmgroundingdino"]
    load(client, url, "large")
    body = {"images": [coco_b64], "inference_parameters": [{"prompts": ["a chair"], "min_confidence": 0.0}]}
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    assert _infer(client, url, body) == (500, {"detail": f"Inference failed: {detail}"})


def test_gdino_defaults_single_prompt_and_data_uri(simulator, client, coco_b64):
    url = simulator.vision_urls["mmgroundingdino"]
    load(client, url, "large")
    prompt = "a silver refrigerator on the right"
    # a single string prompt is wrapped (gdino/model.py:164-168); overdetect_factor defaults to None
    # (:41, :177-178): every box above min_confidence comes back, the true one and the distractors
    status, body = _infer(client, url, {"images": coco_b64, "inference_parameters": {"prompts": prompt}})
    assert status == 200
    (every,) = body["artifact"]["detections"]
    assert len(every) == 3 and {d["prompt"] for d in every} == {prompt}  # 1 true box + 2 distractors
    # the same with overdetect_factor 1.0: the selection rule keeps one box per requested prompt
    one = {"prompts": [prompt], "min_confidence": 0.0, "overdetect_factor": 1.0}
    (picked,) = _infer(client, url, {"images": [coco_b64], "inference_parameters": [one]})[1]["artifact"][
        "detections"
    ]
    assert picked == [max(every, key=lambda d: d["confidence"])]
    # the servers decode raw base64 only (gdino/model.py:188-189): a data: URI is not an image
    status, body = _infer(
        client, url, {"images": ["data:image/jpeg;base64," + coco_b64], "inference_parameters": one}
    )
    assert status == 500 and body["detail"].startswith("Inference failed: ")
    # cv2.cvtColor(np.array(img), COLOR_RGB2BGR) (gdino/model.py:190) rejects a grayscale + alpha image
    # (OpenCV releases before 4.10-ish rejected plain grayscale too: the simulator asks the installed OpenCV)
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.open(image_path_of(simulator, "coco/000000037777")).convert("LA").save(buffer, format="PNG")
    gray_alpha = base64.b64encode(buffer.getvalue()).decode()
    status, body = _infer(client, url, {"images": [gray_alpha], "inference_parameters": one})
    assert status == 500 and "number of channels" in body["detail"]


def image_path_of(simulator, key: str) -> str:
    return str(simulator.world.images[key].path)


def test_gdino_chunks_prompts_as_the_server(simulator, client, coco_b64, monkeypatch):
    """Unique prompts in chunks of at most 1,000 characters, one model call each (gdino/model.py:200-233,
    :335-344): 12 prompts of ~200 characters go in 3 calls of 4 (800 characters; 12 mod 4 = 0 beats w = 3's
    4 calls), and duplicates are sent once but still count for the selection."""
    from vlm_gist_dagster.sim import gdino

    calls = []
    original = gdino.ground_chunk

    def spy(identified, chunk, controls, parts):
        calls.append(list(chunk))
        return original(identified, chunk, controls, parts)

    monkeypatch.setattr(gdino, "ground_chunk", spy)
    url = simulator.vision_urls["mmgroundingdino"]
    load(client, url, "large")
    prompts = [f"a chair number {i:02d} " + "x" * 180 for i in range(12)]
    params = {"prompts": prompts + prompts[:2], "min_confidence": 0.0, "overdetect_factor": 1.0}
    status, body = _infer(client, url, {"images": [coco_b64], "inference_parameters": [params]})
    assert status == 200
    assert calls == [prompts[0:4], prompts[4:8], prompts[8:12]]
    assert len(body["artifact"]["detections"][0]) == 14  # ceil(14 × 1.0): duplicates count


def test_gdino_results_depend_only_on_the_request(simulator, client, coco_b64):
    """The same request gets the same boxes whatever was asked before and whatever attempt it is: a
    model run alone and in a full run see identical detections (issue 14, item 8)."""
    url = simulator.vision_urls["mmgroundingdino"]
    load(client, url, "large")

    def body(k: int) -> dict:
        params = {"prompts": ["a white chair", f"a cup {k}"], "min_confidence": 0.0, "overdetect_factor": 1.0}
        return {"images": [coco_b64], "inference_parameters": [params]}

    simulator.set_controls("mmgroundingdino", model="large", faults={"server_error": 0.5})
    # a request whose first attempt fails (P(none of 20) = 0.5**20), then its retries until one succeeds
    k = next(k for k in range(20) if client.post(url + "/infer", json=body(k)).status_code == 500)
    for other in ("a dog", "a silver refrigerator on the right"):  # other requests in between
        client.post(url + "/infer", json={**body(k), "inference_parameters": [{"prompts": [other]}]})
    before = len(simulator.request_log)
    retried = client.post(url + "/infer", json=body(k))
    while retried.status_code == 500:
        retried = client.post(url + "/infer", json=body(k))
    attempts = [r.attempt for r in simulator.request_log.snapshot()[before:]]
    assert attempts[0] == 1 and attempts == list(range(1, 1 + len(attempts)))
    simulator.set_controls("mmgroundingdino", model="large", faults={"server_error": 0.0})
    assert client.post(url + "/infer", json=body(k)).json() == retried.json()  # attempt 0, no fault


def test_sam2_update_infer_reset(simulator, client, coco_b64):
    url = simulator.vision_urls["sam2_realtime"]
    load(client, url, "large")
    client.post(url + "/reset")
    never = client.post(url + "/infer", json={"images": [coco_b64]}).json()
    assert never["artifact"]["tracks"] == []  # tracker never initialised (docs/protocol/pipeline.md §4.3)
    prompts = [
        {"object_id": 0, "bbox": [300, 60, 352, 220]},  # around the refrigerator
        {"object_id": 1, "bbox": [10, 10, 40, 40]},  # empty wall: filled box
        {"object_id": 2, "bbox": [20, 200, 90, 230]},
    ]
    update = client.post(url + "/update", json={"image": coco_b64, "prompts": prompts}).json()
    track = client.post(url + "/infer", json={"images": [coco_b64, coco_b64]}).json()
    for body, frames in ((update, 1), (track, 2)):
        artifact = body["artifact"]
        assert artifact["model"] == "sam2_realtime"
        assert len(artifact["tracks"]) == frames
        assert artifact["metadata"] == [{"image_width": 352, "image_height": 230}] * frames
        for entry in artifact["tracks"][0]:
            assert set(entry) == {"box_xyxy", "mask", "track_id"}
            x1, y1, x2, y2 = entry["box_xyxy"]
            png = cv2.imdecode(np.frombuffer(base64.b64decode(entry["mask"]), np.uint8), cv2.IMREAD_UNCHANGED)
            assert png.ndim == 2 and png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
            # crop mask[y1:y2, x1:x2] with an inclusive-max box: one row and column short (docs/protocol/pipeline.md gotcha 11)
            assert png.shape == (y2 - y1, x2 - x1)
            prompt = prompts[entry["track_id"]]["bbox"]
            assert (
                prompt[0] <= x1 and prompt[1] <= y1 and x2 < prompt[2] and y2 < prompt[3]
            )  # clipped to the box
        assert sorted(e["track_id"] for e in artifact["tracks"][0]) == [0, 1, 2]
    filled = next(e for e in update["artifact"]["tracks"][0] if e["track_id"] == 1)
    assert filled["box_xyxy"] == [10, 10, 39, 39]  # filled prompt box [10, 40) → inclusive max 39
    assert client.post(url + "/reset").json() == {"reset": True}
    assert client.post(url + "/infer", json={"images": [coco_b64]}).json()["artifact"]["tracks"] == []


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        # sam2/model.py:181-224 (preprocess, mode "update"), in the server's order: 500 "Update failed: ..."
        ({"prompts": []}, "Missing 'image' in payload"),
        ({"image": "IMG"}, "Missing 'prompts' in payload"),
        ({"image": "IMG", "prompts": "box"}, "Invalid 'prompts' in payload"),
        ({"image": "IMG", "prompts": [{"bbox": [1, 2, 3, 4]}]}, "Missing 'object_id' in prompt"),
        (
            {"image": "IMG", "prompts": [{"object_id": 0}]},
            "Missing 'bbox' or 'points' and 'labels' in prompt",
        ),
        ({"image": "IMG", "prompts": [{"object_id": 0, "bbox": [1, 2, 3]}]}, "Invalid 'bbox' in prompt"),
        (
            {"image": "IMG", "prompts": [{"object_id": 0, "points": [], "labels": [1]}]},
            "Invalid 'points' in prompt",
        ),
        (
            {"image": "IMG", "prompts": [{"object_id": 0, "points": [[1, 2]], "labels": [1, 0]}]},
            "Invalid 'labels' in prompt",
        ),
        # no prompt: the server's outputs are never assigned (sam2/model.py:124-148)
        (
            {"image": "IMG", "prompts": []},
            "cannot access local variable 'out_obj_ids' where it is not associated with a value",
        ),
    ],
)
def test_sam2_update_validation(simulator, client, coco_b64, body, detail):
    url = simulator.vision_urls["sam2_realtime"]
    load(client, url, "large")
    body = {k: (coco_b64 if v == "IMG" else v) for k, v in body.items()}
    r = client.post(url + "/update", json=body)
    assert (r.status_code, r.json()) == (500, {"detail": f"Update failed: {detail}"})


def test_sam2_update_takes_a_single_prompt_dict_and_points(simulator, client, coco_b64):
    url = simulator.vision_urls["sam2_realtime"]
    load(client, url, "large")
    # a prompt dict instead of a list is wrapped (sam2/model.py:188-192)
    r = client.post(
        url + "/update", json={"image": coco_b64, "prompts": {"object_id": 7, "bbox": [10, 10, 40, 40]}}
    )
    assert r.status_code == 200 and [t["track_id"] for t in r.json()["artifact"]["tracks"][0]] == [7]
    # point prompts: the smallest GT box around the first positive point
    r = client.post(
        url + "/update",
        json={"image": coco_b64, "prompts": [{"object_id": 1, "points": [[330, 140]], "labels": [1]}]},
    )
    assert r.status_code == 200 and len(r.json()["artifact"]["tracks"][0]) == 1


def test_sam2_thin_mask_is_a_500_like_the_real_server(simulator, client, coco_b64):
    """mask_to_box gives an inclusive max, the crop mask[y1:y2, x1:x2] of a one-pixel-wide mask is empty
    and cv2.imencode raises (sam2/model.py:263-269, nimbro_vision_server/utils.py:81-88): the whole
    request fails, and the tracker keeps the objects, so tracking fails the same way."""
    url = simulator.vision_urls["sam2_realtime"]
    load(client, url, "large")
    prompts = [{"object_id": 0, "bbox": [300, 60, 352, 220]}, {"object_id": 1, "bbox": [10, 10, 11, 40]}]
    r = client.post(url + "/update", json={"image": coco_b64, "prompts": prompts})
    assert r.status_code == 500
    assert r.json()["detail"].startswith("Update failed: OpenCV") and "imencode" in r.json()["detail"]
    r = client.post(url + "/infer", json={"images": [coco_b64]})
    assert r.status_code == 500 and r.json()["detail"].startswith("Inference failed: OpenCV")
    # the control switches it off: the thin mask grows to two pixels
    simulator.set_controls("sam2_realtime", thin_mask_error=False)
    try:
        r = client.post(url + "/update", json={"image": coco_b64, "prompts": prompts})
        assert r.status_code == 200
        thin = next(t for t in r.json()["artifact"]["tracks"][0] if t["track_id"] == 1)
        assert thin["box_xyxy"] == [10, 10, 11, 39]
    finally:
        simulator.set_controls("sam2_realtime", thin_mask_error=True)


def test_sam2_status_control(simulator, client, coco_b64):
    """The public server always reports status null; with status_reports_flavor the simulator reports what
    nimbro-api expects (nimbro_api/api/nimbro_vision_servers/utility.py:85-88)."""
    url = simulator.vision_urls["sam2_realtime"]
    load(client, url, "large")
    simulator.set_controls("sam2_realtime", status_reports_flavor=True)
    try:
        client.post(url + "/reset")
        assert client.get(url + "/status").json()["status"] == {
            "flavor": "large",
            "tracker_initialized": False,
        }
        client.post(
            url + "/update", json={"image": coco_b64, "prompts": [{"object_id": 0, "bbox": [10, 10, 40, 40]}]}
        )
        assert client.get(url + "/status").json()["status"] == {
            "flavor": "large",
            "tracker_initialized": True,
        }
    finally:
        simulator.set_controls("sam2_realtime", status_reports_flavor=False)
    assert client.get(url + "/status").json()["status"] is None


def test_florence_and_kosmos(simulator, client, coco_b64):
    params = {"num_beams": 3, "max_new_tokens": 1024, "max_batch_size": 6}
    florence = simulator.vision_urls["florence2"]
    load(client, florence, "large")
    for task in ("<OD>", "<DENSE_REGION_CAPTION>"):
        body = {
            "images": [coco_b64],
            "prompts": [{"task_prompt": task, "prompt_args": None}],
            "inference_parameters": params,
        }
        artifact = client.post(florence + "/infer", json=body).json()["artifact"]
        assert artifact["model"] == "florence2" and artifact["captions"] == [None]
        (detections,) = artifact["detections"]
        assert detections and all(
            set(d) == {"box_xyxy", "label"} and isinstance(d["label"], str) for d in detections
        )
        assert all(type(v) is int for d in detections for v in d["box_xyxy"])
    # without prompts Florence-2 runs <DENSE_REGION_CAPTION> (florence2/model.py:38, :168-170)
    default = client.post(florence + "/infer", json={"images": coco_b64}).json()["artifact"]
    assert default["detections"] == artifact["detections"]
    # a caption task: no detections, one caption (florence2/model.py:260-263)
    body = {"images": [coco_b64], "prompts": "<CAPTION>"}
    artifact = client.post(florence + "/infer", json=body).json()["artifact"]
    assert artifact["detections"] == [[]] and artifact["captions"][0].startswith("The image shows")
    kosmos = simulator.vision_urls["kosmos2"]
    load(client, kosmos, "patch14-224")
    body = {
        "images": [coco_b64],
        "prompts": ["<grounding> Describe this image in detail:"],
        "inference_parameters": params,
    }
    artifact = client.post(kosmos + "/infer", json=body).json()["artifact"]
    assert artifact["model"] == "kosmos2"
    (caption,) = artifact["captions"]
    assert caption.startswith(
        "Describe this image in detail: The image features"
    )  # the prompt's text, continued
    assert all(d["label"] in caption for d in artifact["detections"][0])


@pytest.mark.parametrize(
    ("family", "body", "detail"),
    [
        # florence2/model.py:150-219 and :105-148
        ("florence2", {"prompts": ["<XYZ>"]}, "Invalid prompt format: <XYZ>. Accepted formats: "),
        ("florence2", {"prompts": [{"prompt_args": None}]}, "Missing 'task_prompt' in prompt"),
        (
            "florence2",
            {"prompts": [{"task_prompt": "<OPEN_VOCABULARY_DETECTION>"}]},
            "Missing 'phrase' in prompt_args for <OPEN_VOCABULARY_DETECTION>",
        ),
        ("florence2", {"prompts": ["<OD>", "<OD>"]}, "Mismatch between number of images and prompts"),
        (
            "florence2",
            {"inference_parameters": {"num_beams": 2.5}},
            "Invalid 'num_beams' in inference_parameters",
        ),
        ("florence2", {"inference_parameters": []}, "Invalid 'inference_parameters' in payload"),
        # kosmos2/model.py:98-150
        (
            "kosmos2",
            {"prompts": ["Describe the image"]},
            "Invalid prompt format: Describe the image. Accepted formats: ",
        ),
        ("kosmos2", {"prompts": [3]}, "Invalid 'prompts' in payload"),
        (
            "kosmos2",
            {"inference_parameters": {"max_new_tokens": "64"}},
            "Invalid 'max_new_tokens' in inference_parameters",
        ),
    ],
)
def test_florence_and_kosmos_request_validation(simulator, client, coco_b64, family, body, detail):
    url = simulator.vision_urls[family]
    load(client, url, FLAVORS_LAST[family])
    r = client.post(url + "/infer", json={"images": [coco_b64], **body})
    assert r.status_code == 500 and r.json()["detail"].startswith(f"Inference failed: {detail}")


FLAVORS_LAST = {"florence2": "large", "kosmos2": "patch14-224"}


def test_florence_tasks(simulator, client, coco_b64):
    """Every task the Florence-2 server accepts gets the response shape of florence2/model.py:252-353."""
    url = simulator.vision_urls["florence2"]
    load(client, url, "large")
    fridge = [300, 60, 352, 220]
    cases = {
        "<REGION_PROPOSAL>": (None, {"box_xyxy"}),
        "<CAPTION_TO_PHRASE_GROUNDING>": (
            {"caption": "a refrigerator next to a chair"},
            {"box_xyxy", "label"},
        ),
        "<OPEN_VOCABULARY_DETECTION>": ({"phrase": "refrigerator"}, {"box_xyxy", "label"}),
        "<REFERRING_EXPRESSION_SEGMENTATION>": ({"phrase": "refrigerator"}, {"box_xyxy", "mask", "label"}),
        "<REGION_TO_SEGMENTATION>": ({"bbox_xyxy": fridge}, {"box_xyxy", "mask"}),
    }
    for task, (args, keys) in cases.items():
        body = {"images": [coco_b64], "prompts": [{"task_prompt": task, "prompt_args": args}]}
        artifact = client.post(url + "/infer", json=body).json()["artifact"]
        assert artifact["captions"] == [None], task
        assert artifact["detections"][0] and all(set(d) == keys for d in artifact["detections"][0]), task
    body = {
        "images": [coco_b64],
        "prompts": [{"task_prompt": "<REGION_TO_CATEGORY>", "prompt_args": {"bbox_xyxy": fridge}}],
    }
    assert client.post(url + "/infer", json=body).json()["artifact"] == {
        "detections": [[]], "captions": ["refrigerator"], "model": "florence2"
    }  # fmt: skip


def test_unknown_image_is_400(simulator, client):
    url = simulator.vision_urls["mmgroundingdino"]
    load(client, url, "large")
    noise = np.random.default_rng(2).integers(0, 256, size=(50, 50, 3), dtype=np.uint8)
    data = base64.b64encode(cv2.imencode(".png", noise)[1].tobytes()).decode()
    r = client.post(url + "/infer", json={"images": [data], "inference_parameters": [{"prompts": ["a cat"]}]})
    assert r.status_code == 400 and "not in the simulator's datasets" in r.json()["detail"]


def test_start_stop_leaves_no_threads(sim_datasets):
    import threading

    before = {t.name for t in threading.enumerate()}
    for _ in range(3):
        with run_simulator(sim_datasets, ports=EPHEMERAL) as sim:
            assert httpx.get(sim.vision_urls["kosmos2"] + "/health").status_code == 200
            port = int(sim.chat_base_url.rsplit(":", 1)[1])
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=AUTH)
    leaked = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert not [name for name in leaked if name.startswith("vlm-gist-sim")]


# ------------------------------------------------------------------ simulated SAM2 masks, unit level


def _sim_image(masks: list[np.ndarray], boxes_rel: list[tuple[float, float, float, float]]):
    from pycocotools import mask as mask_utils

    from vlm_gist_dagster.sim.world import GtInstance, SimImage

    height, width = masks[0].shape
    instances = []
    for i, (m, box) in enumerate(zip(masks, boxes_rel, strict=True)):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        instances.append(
            GtInstance(i, str(i), "thing", box, {"size": rle["size"], "counts": rle["counts"].decode()})
        )
    return SimImage(
        "t/1", "t", "1", "1.png", None, width, height, "0" * 64, "class", tuple(instances), ("thing",)
    )


def test_sam2_mask_is_the_overlapping_gt_mask_cut_to_the_box():
    from vlm_gist_dagster.sim.sam2 import mask_for_box

    gt = np.zeros((40, 60), dtype=bool)
    gt[10:30, 20:50] = True  # the instance: rows 10-29, columns 20-49
    gt[12, 20] = False
    image = _sim_image([gt], [(20 / 60, 10 / 40, 30 / 60, 20 / 40)])
    # Box x 18..45, y 8..28 (IoU with the GT box 0.6): the GT pixels inside the box, nothing outside.
    mask = mask_for_box(image, 60, 40, np.array([18.0, 8.0, 45.0, 28.0]))
    expected = np.zeros_like(gt)
    expected[10:28, 20:45] = True
    expected[12, 20] = False
    assert mask.shape == (40, 60) and mask.dtype == bool
    assert np.array_equal(mask, expected)
    # A box overlapping no instance enough (IoU < 0.3) is segmented as the box itself, clipped to the image.
    mask = mask_for_box(image, 60, 40, np.array([-5.2, 31.5, 9.1, 45.0]))
    expected = np.zeros_like(gt)
    expected[31:40, 0:10] = True
    assert np.array_equal(mask, expected)


def test_sam2_mask_one_pixel_thin_grows_to_two():
    """With the thin_mask_error control off, a one-pixel-thin mask grows to two pixels (the real server
    fails on it; by default the simulator does too)."""
    from vlm_gist_dagster.sim.sam2 import mask_for_box

    gt = np.zeros((20, 20), dtype=bool)
    gt[5, 3:15] = True  # one row thick
    image = _sim_image([gt], [(3 / 20, 5 / 20, 12 / 20, 1 / 20)])
    mask = mask_for_box(image, 20, 20, np.array([3.0, 5.0, 15.0, 6.0]), grow_thin=True)
    expected = np.zeros_like(gt)
    expected[5:7, 3:15] = True  # grown by the row below
    assert np.array_equal(mask, expected)
    # by default it stays thin, and encoding it fails as cv2.imencode fails on the real server
    from vlm_gist_dagster.sim._http import RejectedRequest
    from vlm_gist_dagster.sim.sam2 import encode_frames

    thin = mask_for_box(image, 20, 20, np.array([3.0, 5.0, 15.0, 6.0]))
    assert thin.sum() == 12 and thin[5].sum() == 12
    with pytest.raises(RejectedRequest, match="imencode"):
        encode_frames([[(0, thin)]])
    # On the last row it grows upwards.
    gt = np.zeros((20, 20), dtype=bool)
    gt[19, 3:15] = True
    image = _sim_image([gt], [(3 / 20, 19 / 20, 12 / 20, 1 / 20)])
    mask = mask_for_box(image, 20, 20, np.array([3.0, 19.0, 15.0, 20.0]), grow_thin=True)
    expected = np.zeros_like(gt)
    expected[18:20, 3:15] = True
    assert np.array_equal(mask, expected)
