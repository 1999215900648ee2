"""Interoperability tests: the paper authors' own client library, ``nimbro-api`` 0.2.5 (PyPI), drives the
simulator **with its default validation settings** (model validation, health and flavour/status checks,
JSON validation and correction all on). Only endpoints, model names, prompts of the pipeline settings
under test, timeouts (generous, so a loaded machine cannot fail a test) and the embeddings cache folder
are set.

Where nimbro-api needs something the public servers do not provide, the simulator follows the public
server (AIS-Bonn/nimbro_vision_servers at 35b229d) and the test says so, citing the server line.
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# nimbro-api keeps an embeddings cache under $NIMBRO_API_HOME (default ~/.cache/nimbro_api), read when its
# module is imported: point it at a temporary directory before anything imports it.
_NIMBRO_HOME = Path(tempfile.mkdtemp(prefix="nimbro_api_home_"))
os.environ["NIMBRO_API_HOME"] = str(_NIMBRO_HOME)
atexit.register(shutil.rmtree, _NIMBRO_HOME, ignore_errors=True)

import nimbro_api  # noqa: E402  (after NIMBRO_API_HOME)

from vlm_gist_dagster.sim import SERVER_NAMES, run_simulator  # noqa: E402

KEY_ENV = "VLM_GIST_INTEROP_KEY"
#: The simulated chat model the tests talk to: no faults, no latency (faults have their own tests).
MODEL = "sim/interop"
EPHEMERAL = {name: 0 for name in SERVER_NAMES}
#: Generous timeouts (nimbro-api's defaults are 2-10 s): not validation switches, and a loaded 2-core
#: machine must not fail a test.
VISION_TIMEOUTS = {
    "timeout_connect": 10.0,
    "timeout_read": 60.0,
    "timeout_read_load": 60.0,
    "timeout_read_infer": 120.0,
}
CHAT_TIMEOUTS = {
    "timeout_connect": 10.0,
    "timeout_read": 60.0,
    "timeout_chunk_first": 60.0,
    "timeout_chunk_next": 60.0,
    "timeout_completion": 120.0,
}
#: A COCO image (352 × 230, 11 instances: chairs, a refrigerator, people, ...).
COCO_IMAGE = "000000037777"
#: The paper's dict_prompt (settings/models/*.json, docs/protocol/pipeline.md §1.1).
PAPER_DICT_PROMPT = (
    "Provide a list in JSON format that contains each object (including furniture, persons, and animals) visible "
    "in the image above. Explicitly include each object instance as an individual list element, and never group "
    "multiple instances that are clearly distinct from one another. Each list element must be a dictionary with "
    "the fields object_name and description. The object_name of all humans must be person. The description must "
    "be a single short sentence (max. 10 words, starting with 'a' or 'an'), that differs from the other "
    "descriptions and summarizes the most important information about the type, color, and appearance of the "
    "object, allowing for a visual identification of the object without knowing any of the descriptions "
    "generated for the other objects."
)


@pytest.fixture(scope="module")
def sim(vlm_gist_dataset, coco_dataset):
    with run_simulator({"vlm_gist": vlm_gist_dataset, "coco": coco_dataset}, ports=EPHEMERAL) as handle:
        handle.set_controls("chat", model=MODEL, latency_mean_s=0.0, latency_jitter_s=0.0, recall=0.9)
        yield handle


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "interop-key")
    monkeypatch.setenv("NIMBRO_VISION_API_KEY", "interop-token")


@pytest.fixture(scope="module")
def coco_path(coco_dataset) -> str:
    return str(coco_dataset.images.set_index("image_id").loc[COCO_IMAGE, "path"])


@pytest.fixture(scope="module")
def coco_b64(coco_path) -> str:
    return base64.b64encode(Path(coco_path).read_bytes()).decode("ascii")


def chat_endpoint(sim, flavor: str) -> dict[str, str]:
    """A nimbro-api endpoint definition for the simulator; OpenRouter's flavour on OpenRouter's path."""
    base = sim.chat_base_url + ("/api/v1" if flavor == "openrouter" else "/v1")
    return {
        "name": f"Simulator ({flavor})",
        "api_flavor": flavor,
        "api_url": base + "/chat/completions",
        "models_url": base + "/models",
        "key_type": "environment",
        "key_value": KEY_ENV,
    }


def vision_endpoint(sim, family: str) -> dict[str, str]:
    return {
        "name": f"Simulator {family}",
        "api_url": sim.vision_urls[family],
        "key_type": "environment",
        "key_value": "NIMBRO_VISION_API_KEY",
    }


__all__ = ["nimbro_api"]
