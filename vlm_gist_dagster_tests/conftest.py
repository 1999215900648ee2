"""Test session setup: everything offline, every store in a temp directory, data from ``../shared``.

The environment is set at import time, before any test imports dagster or fiftyone (both read it once).
"""

from __future__ import annotations

import atexit
import inspect
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from . import fiftyone_db

REPO = Path(__file__).resolve().parents[1]
#: The shared reference data (never copied into the project): ``$VLM_GIST_SHARED_DIR`` or ``../shared``.
SHARED = Path(os.environ.get("VLM_GIST_SHARED_DIR") or REPO.parent / "shared").resolve()
VLM_GIST_DIR = SHARED / "datasets" / "vlm_gist"
COCO_DIR = SHARED / "datasets" / "coco_val2017_32"
REFERENCE_DIR = SHARED / "reference"
SETTINGS_DIR = REFERENCE_DIR / "vlm_gist_settings"

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="vlm_gist_tests_"))
os.environ.update(
    {
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_DATABASE_DIR": str(_SESSION_TMP / "fiftyone_db"),
        "DAGSTER_HOME": str(_SESSION_TMP / "dagster_home"),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "VLM_GIST_DATA_DIR": str(_SESSION_TMP / "data"),
        "VLM_GIST_DATASET_DIR_VLM_GIST": str(VLM_GIST_DIR),
        "VLM_GIST_DATASET_DIR_COCO": str(COCO_DIR),
        # The paper's label-matching definitions, read where real runs would download them.
        "VLM_GIST_PAPER_DEFINITIONS": str(REFERENCE_DIR / "definitions.json"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
)
os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)
# Registered before fiftyone is imported, so it runs after FiftyOne's own atexit hook has stopped the
# MongoDB it started in this directory (atexit runs hooks last-in, first-out).
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)
# The session's MongoDB stops after FiftyOne's exit hook (which queries it) and before the rmtree.
atexit.register(fiftyone_db.stop)

#: A test module that uses FiftyOne (its database: datasets, evaluations) imports it.
_IMPORTS_FIFTYONE = re.compile(r"^\s*(?:import fiftyone|from fiftyone)\b", re.M)


@pytest.fixture(scope="session", autouse=True)
def fiftyone_database(request) -> str | None:
    """The session's own MongoDB for FiftyOne, started once and answering before the first test, when
    any collected test module imports FiftyOne (see ``fiftyone_db``); None otherwise."""
    modules = {item.module for item in request.session.items if getattr(item, "module", None) is not None}
    if not any(_IMPORTS_FIFTYONE.search(inspect.getsource(module)) for module in modules):
        return None
    return fiftyone_db.start(_SESSION_TMP / "fiftyone_db")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared reference data not found at {SHARED}; set VLM_GIST_SHARED_DIR")
    return SHARED


@pytest.fixture(scope="session")
def vlm_gist_dir(shared_dir: Path) -> Path:
    return VLM_GIST_DIR


@pytest.fixture(scope="session")
def coco_dir(shared_dir: Path) -> Path:
    return COCO_DIR


@pytest.fixture(scope="session")
def reference_settings_dir(shared_dir: Path) -> Path:
    return SETTINGS_DIR


@pytest.fixture(scope="session")
def vlm_gist_dataset(vlm_gist_dir: Path):
    from vlm_gist_dagster.datasets import load_dataset

    return load_dataset(vlm_gist_dir)


@pytest.fixture(scope="session")
def coco_dataset(coco_dir: Path):
    from vlm_gist_dagster.datasets import load_dataset

    return load_dataset(coco_dir)


# The benchmark-graph fixtures (``deployment.py``); imported when used, so tests that need no Dagster
# don't import it.


@pytest.fixture(scope="module")
def simulator(vlm_gist_dataset, coco_dataset):
    """One simulator per test module (both datasets, ephemeral ports, seed 0, no latency, no faults),
    with the process environment pointed at it as ``vlm-gist run`` does."""
    from .deployment import quiet_simulator

    with quiet_simulator({"vlm_gist": vlm_gist_dataset, "coco": coco_dataset}) as handle:
        yield handle


@pytest.fixture()
def deployment(tmp_path):
    """An empty deployment (no models) under the test's temp directory (see ``deployment.py``)."""
    from .deployment import Deployment

    return Deployment.create(tmp_path / "deployment")
