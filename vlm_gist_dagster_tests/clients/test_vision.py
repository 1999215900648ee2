"""VisionClient against the simulated NimbRo vision servers over real sockets (docs/protocol/pipeline.md §3, §4.2–4.3,
§6; gotchas 15–16): load once per run, every family's round trip, 3-channel re-encoding of awkward
inputs, bounded retries, auth."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from vlm_gist_dagster.clients.errors import AuthenticationError, ConfigurationError, TransportRetriesExhausted
from vlm_gist_dagster.clients.transport import RetryPolicy
from vlm_gist_dagster.clients.vision import VisionClient, vision_image, vision_server_urls
from vlm_gist_dagster.protocol.settings import load_baseline_settings
from vlm_gist_dagster.sim import run_simulator

from .conftest import EPHEMERAL, REPO

TOKEN = {"NIMBRO_VISION_API_KEY": "vision-token"}
FAST = RetryPolicy(max_retries=2, backoff_base_s=0.001, backoff_max_s=0.001)


def log_of(sim, family: str, path: str | None = None) -> list:
    return [r for r in sim.request_log if r.server == family and (path is None or r.path == path)]


def run(coro_factory):
    return asyncio.run(coro_factory())


@pytest.fixture(scope="module")
def small_image(vlm_gist_dataset):
    """Path of the dataset's smallest image (fewest pixels), to keep full-resolution bodies small."""
    table = vlm_gist_dataset.images
    row = table.loc[(table["width"] * table["height"]).idxmin()]
    return str(row["path"])


def test_load_once_per_run_then_infer_per_call(sim, images):
    async def main():
        async with VisionClient(
            "mmgroundingdino", sim.vision_urls["mmgroundingdino"], env=TOKEN, retry=FAST
        ) as gdino:
            found = [
                await gdino.detect(vision_image(path), ["a person", "a chair"]) for _, path in images[:3]
            ]
            changed = await gdino.ensure_loaded("base")  # another flavour: status + load again
            again = await gdino.ensure_loaded("base")
            return found, changed, again, gdino.loads

    found, changed, again, loads = run(main)
    assert len(log_of(sim, "mmgroundingdino", "/status")) == 2
    assert len(log_of(sim, "mmgroundingdino", "/load")) == 2 and loads == 2
    assert len(log_of(sim, "mmgroundingdino", "/infer")) == 3
    assert (changed, again) == (True, False)
    for detections in found:
        assert set(detections.label) <= {"a person", "a chair"} and detections.xyxy.shape == (
            len(detections),
            4,
        )
    body = json.loads(log_of(sim, "mmgroundingdino", "/infer")[0].body)
    # docs/protocol/pipeline.md §4.2: floats for the numeric fields, prompts as given, one image per request
    assert body["inference_parameters"] == [
        {"prompts": ["a person", "a chair"], "min_confidence": 0.0, "nms_iou": None, "overdetect_factor": 1.0}
    ]
    assert len(body["images"]) == 1 and not body["images"][0].startswith("data:")


def test_sam2_update_and_track_with_one_load(sim, images):
    """sam2_realtime's /status always says null (docs/protocol/pipeline.md gotcha 16): the paper reloaded before every /update,
    we load once per client."""

    async def main():
        async with VisionClient(
            "sam2_realtime", sim.vision_urls["sam2_realtime"], env=TOKEN, retry=FAST
        ) as sam2:
            out = []
            for _, path in images[:2]:
                image = vision_image(path)
                out.append(await sam2.segment(image, [(10, 10, 200, 150), (50, 60, 120, 300)]))
            reset = await sam2.reset()
            return out, reset

    out, reset = run(main)
    assert [len(log_of(sim, "sam2_realtime", p)) for p in ("/status", "/load", "/update", "/infer")] == [
        1,
        1,
        2,
        2,
    ]
    assert reset == {"reset": True}
    for updated, tracked in out:
        assert sorted(t.track_id for t in updated) == [0, 1] and sorted(t.track_id for t in tracked) == [0, 1]
    update_body = json.loads(log_of(sim, "sam2_realtime", "/update")[0].body)
    assert update_body["prompts"] == [
        {"object_id": 0, "bbox": [10, 10, 200, 150]},
        {"object_id": 1, "bbox": [50, 60, 120, 300]},
    ]


@pytest.mark.parametrize(
    ("family", "settings_file", "flavor"),
    [
        ("florence2", "baseline_settings_florence_od.json", "large"),
        ("florence2", "baseline_settings_florence_drc.json", "large"),
        ("kosmos2", "baseline_settings_kosmos.json", "patch14-224"),
    ],
)
def test_baseline_round_trips(sim, images, reference_settings_dir, family, settings_file, flavor):
    settings = load_baseline_settings(reference_settings_dir / "baseline" / settings_file)

    async def main():
        async with VisionClient(family, sim.vision_urls[family], env=TOKEN, retry=FAST) as client:
            return await client.baseline(vision_image(images[0][1]), settings)

    output = run(main)
    assert output.model == family and output.detections
    assert (output.caption is not None) is (family == "kosmos2")
    (load,) = log_of(sim, family, "/load")
    assert json.loads(load.body) == {"flavor": flavor}


def _variants(path: str) -> dict[str, bytes]:
    """The same picture as grayscale JPEG/PNG, RGBA, palette, 16-bit grayscale and 16-bit RGB PNG."""
    rgb = Image.open(path).convert("RGB")
    out: dict[str, bytes] = {}
    for name, image, fmt in [
        ("gray_jpeg", rgb.convert("L"), "JPEG"),
        ("gray_png", rgb.convert("L"), "PNG"),
        ("rgba_png", rgb.convert("RGBA"), "PNG"),
        ("palette_png", rgb.convert("P"), "PNG"),
        ("gray16_png", Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257), "PNG"),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        out[name] = buffer.getvalue()
    ok, encoded = cv2.imencode(
        ".png", cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    )
    assert ok
    out["rgb16_png"] = encoded.tobytes()
    return out


def test_awkward_inputs_reach_the_server_as_3_channel_8_bit(sim, small_image):
    variants = _variants(small_image)
    assert Image.open(io.BytesIO(variants["gray16_png"])).mode == "I;16"
    assert (
        cv2.imdecode(np.frombuffer(variants["rgb16_png"], np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    )

    async def main():
        async with VisionClient(
            "mmgroundingdino", sim.vision_urls["mmgroundingdino"], env=TOKEN, retry=FAST
        ) as gdino:
            for data in variants.values():
                await gdino.detect(data, ["a thing"])  # the client re-encodes by itself

    run(main)
    bodies = [json.loads(r.body) for r in log_of(sim, "mmgroundingdino", "/infer")]
    assert len(bodies) == len(variants)
    for name, body in zip(variants, bodies, strict=True):
        received = base64.b64decode(body["images"][0])
        decoded = cv2.imdecode(np.frombuffer(received, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.ndim == 3 and decoded.shape[2] == 3 and decoded.dtype == np.uint8, name
        assert Image.open(io.BytesIO(received)).mode == "RGB", name


def test_retries_on_503_are_bounded(sim, images):
    sim.set_controls("mmgroundingdino", model="large", faults={"unavailable": 1.0})

    async def main():
        async with VisionClient(
            "mmgroundingdino", sim.vision_urls["mmgroundingdino"], env=TOKEN, retry=FAST
        ) as gdino:
            await gdino.detect(vision_image(images[0][1]), ["a person"])

    with pytest.raises(TransportRetriesExhausted) as info:
        run(main)
    assert info.value.tries == 3 and info.value.status == 503
    assert len(log_of(sim, "mmgroundingdino", "/infer")) == 3  # 1 + max_retries, then it stops
    assert len(log_of(sim, "mmgroundingdino", "/load")) == 1  # /status showed the model still loaded


def test_a_server_that_lost_its_model_is_reloaded(sim, images):
    async def main():
        async with VisionClient(
            "mmgroundingdino", sim.vision_urls["mmgroundingdino"], env=TOKEN, retry=FAST
        ) as gdino:
            await gdino.detect(vision_image(images[0][1]), ["a person"])
            async with httpx.AsyncClient() as raw:  # e.g. the server restarted
                await raw.post(
                    sim.vision_urls["mmgroundingdino"] + "/unload", headers={"Authorization": "Bearer x"}
                )
            await gdino.detect(vision_image(images[1][1]), ["a person"])

    run(main)
    statuses = [r.status for r in log_of(sim, "mmgroundingdino", "/infer")]
    assert statuses == [200, 503, 200]
    assert len(log_of(sim, "mmgroundingdino", "/load")) == 2


def test_wrong_token_is_fatal_and_missing_token_is_a_configuration_error(sim_datasets, images):
    with run_simulator(
        sim_datasets, ports=EPHEMERAL, servers=["mmgroundingdino"], vision_token="right"
    ) as sim:

        async def main(env):
            async with VisionClient(
                "mmgroundingdino", sim.vision_urls["mmgroundingdino"], env=env, retry=FAST
            ) as gdino:
                health = await gdino.health()  # the one route without a token
                await gdino.detect(vision_image(images[0][1]), ["a person"])
                return health

        with pytest.raises(AuthenticationError) as info:
            asyncio.run(main({"NIMBRO_VISION_API_KEY": "wrong-token"}))
        assert info.value.status == 403 and "wrong-token" not in str(info.value)
        assert [r.path for r in sim.request_log] == ["/health", "/status"]  # no retries after the 403
        with pytest.raises(ConfigurationError, match="NIMBRO_VISION_API_KEY"):
            asyncio.run(main({}))


def test_server_urls_defaults_settings_file_and_environment(tmp_path):
    shipped = vision_server_urls(REPO / "settings" / "vision_servers.json", env={})
    assert shipped == {
        "mmgroundingdino": "http://localhost:9000",
        "sam2_realtime": "http://localhost:9001",
        "florence2": "http://localhost:9003",
        "kosmos2": "http://localhost:9004",
        "sam3": "http://localhost:9005",  # ours: `vlm-gist vision-serve --family sam3`
    }
    moved = vision_server_urls(
        REPO / "settings" / "vision_servers.json",
        env={"VLM_GIST_VISION_URL_SAM2_REALTIME": "http://gpu-box:9101/"},
    )
    assert (
        moved["sam2_realtime"] == "http://gpu-box:9101"
        and moved["mmgroundingdino"] == "http://localhost:9000"
    )
    bad = tmp_path / "vision_servers.json"
    bad.write_text(json.dumps({"servers": {"dam": "http://localhost:9002"}}))
    with pytest.raises(ConfigurationError, match="servers.dam"):
        vision_server_urls(bad, env={})
