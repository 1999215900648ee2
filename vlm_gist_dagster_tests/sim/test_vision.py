"""Protocol conformance of the simulated NimbRo Vision Servers (spec/pipeline.md §3, §4.2–4.3, §6)."""

from __future__ import annotations

import base64

import cv2
import httpx
import numpy as np
import pytest

from vlm_gist_dagster.sim import run_simulator

from .conftest import AUTH, EPHEMERAL, b64_file, image_path

FAMILIES = ("mmgroundingdino", "sam2_realtime", "florence2", "kosmos2")


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
    assert httpx.get(url + "/health").json() == {"status": "ok", "cuda_available": False}  # open route
    flavors = client.get(url + "/model_flavors").json()["flavors"]
    assert isinstance(flavors, list) and flavors
    client.post(url + "/unload")
    assert client.get(url + "/status").json() == {"model_family": family, "status": None}
    assert client.post(url + "/infer", json={"images": []}).status_code == 503  # no model loaded
    assert load(client, url, flavors[-1]) == {"loaded_model": "Model", "flavor": flavors[-1]}
    status = client.get(url + "/status").json()
    assert status["model_family"] == family
    if family == "sam2_realtime":
        assert status["status"] is None  # the real server never stores its flavor (spec §7 caveat)
    else:
        assert status["status"]["flavor"] == flavors[-1]
    assert client.post(url + "/load", json={"flavor": "no-such-flavor"}).status_code == 400
    assert client.post(url + "/unload").json() == {"unloaded": True}


@pytest.mark.parametrize("family", FAMILIES)
def test_bearer_auth(simulator, family):
    url = simulator.vision_urls[family]
    assert httpx.get(url + "/status").status_code == 401
    assert httpx.get(url + "/status", headers={"Authorization": "Basic dXNlcg=="}).status_code == 401
    assert httpx.get(url + "/status", headers=AUTH).status_code == 200  # no server token: any bearer passes


def test_wrong_token_is_403(sim_datasets):
    with run_simulator(sim_datasets, ports=EPHEMERAL, servers=["mmgroundingdino"], vision_token="tok") as sim:
        url = sim.vision_urls["mmgroundingdino"]
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/status").status_code == 401
        r = httpx.get(url + "/status", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 403 and "detail" in r.json()
        assert httpx.get(url + "/status", headers={"Authorization": "Bearer tok"}).status_code == 200


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


def test_sam2_update_infer_reset(simulator, client, coco_b64):
    url = simulator.vision_urls["sam2_realtime"]
    load(client, url, "large")
    client.post(url + "/reset")
    never = client.post(url + "/infer", json={"images": [coco_b64]}).json()
    assert never["artifact"]["tracks"] == []  # tracker never initialised (spec §4.3)
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
            # crop mask[y1:y2, x1:x2] with an inclusive-max box: one row and column short (gotcha 11)
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
    assert caption.startswith("An image of")
    assert all(d["label"] in caption for d in artifact["detections"][0])


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
    from vlm_gist_dagster.sim.vision import mask_for_box

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
    """The real server fails on one-pixel-thin masks; the simulator never produces them."""
    from vlm_gist_dagster.sim.vision import mask_for_box

    gt = np.zeros((20, 20), dtype=bool)
    gt[5, 3:15] = True  # one row thick
    image = _sim_image([gt], [(3 / 20, 5 / 20, 12 / 20, 1 / 20)])
    mask = mask_for_box(image, 20, 20, np.array([3.0, 5.0, 15.0, 6.0]))
    expected = np.zeros_like(gt)
    expected[5:7, 3:15] = True  # grown by the row below
    assert np.array_equal(mask, expected)
    # On the last row it grows upwards.
    gt = np.zeros((20, 20), dtype=bool)
    gt[19, 3:15] = True
    image = _sim_image([gt], [(3 / 20, 19 / 20, 12 / 20, 1 / 20)])
    mask = mask_for_box(image, 20, 20, np.array([3.0, 19.0, 15.0, 20.0]))
    expected = np.zeros_like(gt)
    expected[18:20, 3:15] = True
    assert np.array_equal(mask, expected)
