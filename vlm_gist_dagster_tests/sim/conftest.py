"""Fixtures of the simulator tests: one simulator per module on ephemeral loopback ports."""

from __future__ import annotations

import base64

import httpx
import pytest

from vlm_gist_dagster.sim import SERVER_NAMES, run_simulator

#: Any bearer token passes when the server has none configured (docs/protocol/pipeline.md §3).
AUTH = {"Authorization": "Bearer test-token"}
EPHEMERAL = {name: 0 for name in SERVER_NAMES}
#: A chat model with the default controls that the tests' simulator serves (it lists, and answers, only
#: the models it knows: others get the provider's 404).
TEST_MODEL = "sim/test"


@pytest.fixture(scope="session")
def sim_datasets(vlm_gist_dataset, coco_dataset):
    return {"vlm_gist": vlm_gist_dataset, "coco": coco_dataset}


@pytest.fixture(scope="module")
def simulator(sim_datasets):
    with run_simulator(sim_datasets, ports=EPHEMERAL, served_models=[TEST_MODEL]) as handle:
        yield handle


@pytest.fixture()
def client():
    with httpx.Client(headers=AUTH, timeout=30.0) as c:
        yield c


def b64_file(path) -> str:
    with open(path, "rb") as fh:
        return base64.b64encode(fh.read()).decode("ascii")


def image_path(dataset, image_id: str) -> str:
    return str(dataset.images.set_index("image_id").loc[image_id, "path"])
