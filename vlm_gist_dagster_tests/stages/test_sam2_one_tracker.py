"""One SAM2 tracker per server (issue 15 item 4).

The real SAM2-realtime server holds one global tracker: ``/load`` rebuilds it, ``/update`` replaces its
prompts. The stub here behaves the same and, like a strict referee, answers 409 to an ``/update`` or a
``/load`` that arrives while another ``/update`` → ``/infer`` sequence is open (holding each sequence
open a while, so that unserialised clients really collide). Two processes compute the masks of two
pairs at once against it, released together by a barrier: with the server lease (the default) there is
no conflict, the tracker is loaded once and not rebuilt under the other run, and the masks equal those of
sequential runs. The control: the same two processes without the lease collide.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from vlm_gist_dagster.clients.server_lock import ServerLease
from vlm_gist_dagster.orchestration.policies import vision_server_pool
from vlm_gist_dagster.protocol.settings import load_detection_settings, load_model_settings
from vlm_gist_dagster.stages.descriptions import run_descriptions
from vlm_gist_dagster.stages.grounding import run_detections, run_masks
from vlm_gist_dagster.stages.services import Services

from ..stubs import Reply, StubServer, openai_route, vision_route

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "settings"
#: How long the stub keeps a sequence open after its /update (the first one: see ExclusiveSam2).
HOLD_S = 0.1
FIRST_HOLD_S = 3.0

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path

    import pandas as pd

    from vlm_gist_dagster.protocol.settings import load_detection_settings, load_model_settings
    from vlm_gist_dagster.stages.grounding import run_masks
    from vlm_gist_dagster.stages.services import Services

    name, inputs, data_dir, sam2_url, barrier, out, lease, settings = sys.argv[1:9]
    if lease == "off":
        Services.lock_dir = property(lambda self: None)  # the control: each client on its own
    tables = ("images", "detections", "per_image")
    images, detections, per_image = (pd.read_pickle(Path(inputs) / f"{t}.pkl") for t in tables)
    model = load_model_settings(Path(settings) / "models" / "sim_medium.json")
    detection = load_detection_settings(Path(settings) / "detection" / "detection.json")
    env = {"NIMBRO_VISION_API_KEY": "stub", "VLM_GIST_VISION_URL_SAM2_REALTIME": sam2_url}
    services = Services(env=env, data_dir=Path(data_dir), cache_mode="bypass")
    Path(barrier, name).touch()  # both processes start their masks together
    deadline = time.monotonic() + 120
    while len(list(Path(barrier).iterdir())) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the other process never came")
        time.sleep(0.005)
    run_masks(images, detections, per_image, model, detection, services).to_pickle(out)
    """
)


class ExclusiveSam2:
    """A stateful SAM2 stub that refuses (409) whatever would disturb an open sequence. It keeps the
    first sequence open until another /update or /load arrives (at most FIRST_HOLD_S), so that two
    clients started together that do not take turns are sure to collide, however the machine
    schedules them; later sequences stay open HOLD_S."""

    def __init__(self) -> None:
        self.inner = vision_route("sam2_realtime")
        self.lock = threading.Lock()
        self.open = False
        self.updates = 0
        self.intruder = threading.Event()
        self.conflicts: list[str] = []

    def __call__(self, method: str, path: str, body) -> Reply:
        if path in ("/update", "/load"):
            with self.lock:
                if self.open:
                    self.conflicts.append(path)
                    self.intruder.set()
                    return Reply(409, {"detail": f"{path} while another client's sequence is open"})
                self.open = path == "/update"
                self.updates += path == "/update"
                first = self.updates == 1 and path == "/update"
            if first:
                self.intruder.wait(FIRST_HOLD_S)
            elif path == "/update":
                time.sleep(HOLD_S)
            return self.inner(method, path, body)
        reply = self.inner(method, path, body)
        if path == "/infer":
            with self.lock:
                self.open = False
        return reply


@pytest.fixture(scope="module")
def pairs(coco_dataset, tmp_path_factory):
    """Detections of six COCO images (stub VLM + stub MM-Grounding-DINO), split into two pairs."""
    root = tmp_path_factory.mktemp("sam2_pairs")
    images = coco_dataset.images.head(6).reset_index(drop=True)
    model = load_model_settings(SETTINGS / "models" / "sim_medium.json")
    detection = load_detection_settings(SETTINGS / "detection" / "detection.json")
    with StubServer(openai_route()) as chat, StubServer(vision_route("mmgroundingdino")) as gdino:
        env = {
            "VLM_GIST_ENDPOINT_URL_VLM_GIST_SIMULATOR": chat.url,
            "VLM_GIST_SIM_API_KEY": "stub",
            "NIMBRO_VISION_API_KEY": "stub",
            "VLM_GIST_VISION_URL_MMGROUNDINGDINO": gdino.url,
        }
        services = Services(env=env, data_dir=root / "data", concurrency=6)
        descriptions = run_descriptions(images, model, services)
        detections, per_image = run_detections(images, descriptions, model, detection, services)
    assert len(detections) == 12
    out = {}
    for name, ids in (("a", images["image_id"][:3]), ("b", images["image_id"][3:])):
        folder = root / name
        folder.mkdir()
        images[images["image_id"].isin(ids)].to_pickle(folder / "images.pkl")
        detections[detections["image_id"].isin(ids)].to_pickle(folder / "detections.pkl")
        per_image[per_image["image_id"].isin(ids)].to_pickle(folder / "per_image.pkl")
        out[name] = folder
    return out


def masks_at_once(tmp_path: Path, pairs: dict, lease: str) -> tuple[ExclusiveSam2, StubServer, dict]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    barrier = tmp_path / f"barrier_{lease}"
    barrier.mkdir()
    data_dir = tmp_path / f"data_{lease}"
    referee = ExclusiveSam2()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with StubServer(referee) as sam2:
        children = {}
        for name, inputs in pairs.items():
            out = tmp_path / f"{name}_{lease}.pkl"
            args = [name, inputs, data_dir, sam2.url, barrier, out, lease, SETTINGS]
            command = [sys.executable, str(script), *map(str, args)]
            children[name] = (subprocess.Popen(command, env=env, stderr=subprocess.PIPE), out)
        results = {}
        for name, (child, out) in children.items():
            _, stderr = child.communicate(timeout=300)
            assert child.returncode == 0, f"{name} failed:\n{stderr.decode()[-3000:]}"
            results[name] = pd.read_pickle(out)
    return referee, sam2, results


def sequential(tmp_path: Path, pairs: dict) -> dict:
    model = load_model_settings(SETTINGS / "models" / "sim_medium.json")
    detection = load_detection_settings(SETTINGS / "detection" / "detection.json")
    results = {}
    with StubServer(vision_route("sam2_realtime")) as sam2:
        env = {"NIMBRO_VISION_API_KEY": "stub", "VLM_GIST_VISION_URL_SAM2_REALTIME": sam2.url}
        for name, inputs in pairs.items():
            frames = [pd.read_pickle(inputs / f"{t}.pkl") for t in ("images", "detections", "per_image")]
            services = Services(env=env, data_dir=tmp_path / "sequential" / name, cache_mode="bypass")
            results[name] = run_masks(*frames, model, detection, services)
    return results


def test_two_pairs_at_once_share_the_sam2_server_without_conflict(tmp_path, pairs):
    referee, sam2, concurrent = masks_at_once(tmp_path, pairs, "on")
    assert referee.conflicts == []
    assert len(sam2.seen("/update")) == len(sam2.seen("/infer")) == 6
    assert len(sam2.seen("/load")) == 1  # the second run did not rebuild the tracker the first was using
    expected = sequential(tmp_path, pairs)
    for name in pairs:
        table = concurrent[name]
        assert table["segmentation_error"].isna().all() and table["mask"].notna().all()
        pd.testing.assert_frame_equal(table, expected[name])
    # The state the lease leaves for the next client: the flavour loaded, just now.
    state = ServerLease(tmp_path / "data_on" / "locks" / "vision", sam2.url).state()
    assert state is not None and state.flavor == "large" and state.in_use()


def test_the_control_without_the_lease_collides(tmp_path, pairs):
    referee, _, results = masks_at_once(tmp_path, pairs, "off")
    assert referee.conflicts  # unserialised clients do disturb each other's sequences here
    assert any(table["segmentation_error"].notna().any() for table in results.values())


def test_a_client_loads_again_when_another_switched_the_flavour(tmp_path):
    import asyncio

    from vlm_gist_dagster.clients.vision import VisionClient

    async def sequence(client: VisionClient, flavor: str) -> None:
        await client._update_and_track(flavor, {"prompts": [], "images": []}, {"images": []})

    async def main(url: str) -> tuple[int, int, int]:
        env = {"NIMBRO_VISION_API_KEY": "stub"}
        first = VisionClient("sam2_realtime", url, env=env, lock_dir=tmp_path)
        second = VisionClient("sam2_realtime", url, env=env, lock_dir=tmp_path)
        await sequence(first, "large")  # loads large
        await sequence(second, "large")  # in use with large: no load
        await sequence(second, "small")  # loads small
        await sequence(first, "large")  # the server has small now: loads large again
        await sequence(first, "large")  # nothing changed: no load
        return first.loads, second.loads, len(stub.seen("/load"))

    with StubServer(vision_route("sam2_realtime")) as stub:
        assert asyncio.run(main(stub.url)) == (2, 1, 3)
    assert [r.body["flavor"] for r in stub.seen("/load")] == ["large", "small", "large"]


def test_the_masks_step_is_in_the_pool_of_its_sam2_server(monkeypatch):
    from vlm_gist_dagster.definitions import build_definitions
    from vlm_gist_dagster.defs import grounding

    # The pool is the SAM2 server's, at the URL the resources read when the definitions load (once per
    # process: the module is imported once, so the URLs below are checked through the same function).
    default = vision_server_pool("sam2_realtime", {"sam2_realtime": "http://localhost:9001"})
    assert build_definitions().resolve_assets_def("masks").op.pool == grounding.SAM2_POOL
    monkeypatch.delenv("VLM_GIST_VISION_URL_SAM2_REALTIME", raising=False)
    assert grounding._sam2_pool() == default == "sam2_realtime@localhost:9001"  # settings/vision_servers.json
    monkeypatch.setenv("VLM_GIST_VISION_URL_SAM2_REALTIME", "https://gpu-box.lab")
    assert grounding._sam2_pool() == "sam2_realtime@gpu-box.lab:443"
    monkeypatch.setenv("VLM_GIST_VISION_URL_SAM2_REALTIME", "http://10.0.0.7:9001")
    assert grounding._sam2_pool() == "sam2_realtime@10.0.0.7:9001"
    monkeypatch.setenv("VLM_GIST_VISION_URL_SAM2_REALTIME", "not a url")  # reported when the step runs
    assert grounding._sam2_pool() == "sam2_realtime"
