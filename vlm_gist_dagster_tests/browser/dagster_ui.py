"""The Dagster UI on a temporary instance after a small simulated run, for the browser tests.

:func:`simulated_instance` runs the COCO sample through stages A-E for two simulated VLMs in this
process (on the running simulator) and materialises the leaderboard; :func:`dagster_dev` then starts
``dg dev`` (webserver, daemon and code server) on that instance, in a process group of its own, and stops
it (and everything it started) by PID. The runs it launches reach the simulator of this process and the
FiftyOne database of this test session.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from vlm_gist_dagster.runner import ensure_instance_yaml

from ..deployment import Deployment, run_job
from ..review.simulated_run import simulated_deployment
from .servers import ServerProcess, environment, free_port

REPO = Path(__file__).resolve().parents[2]
DATASET = "coco"
MODELS = ("sim_strong", "sim_weak")
LOCATION = "vlm_gist_dagster"
#: Starting the UI imports Dagster and the definitions in several processes: minutes on a loaded machine.
START_TIMEOUT_S = 300


def simulated_instance(root: Path) -> Deployment:
    """A deployment whose instance holds the simulated run and a materialised leaderboard."""
    ensure_instance_yaml(Deployment(root).home)  # telemetry off, as `vlm-gist dev` writes it
    deployment = simulated_deployment(root, [DATASET], MODELS)
    instance = deployment.instance()
    try:
        run_job(deployment.definitions(), instance, "leaderboard_job")
    finally:
        instance.dispose()
    return deployment


@dataclass
class DagsterUI:
    url: str
    deployment: Deployment
    server: ServerProcess

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        return body["data"]

    def location_loaded(self) -> bool:
        query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
        try:
            entries = self.graphql(query)["workspaceOrError"]["locationEntries"]
        except (httpx.HTTPError, AssertionError, KeyError, TypeError, ValueError):
            return False
        return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


@contextlib.contextmanager
def dagster_dev(deployment: Deployment, log_path: Path, **env: str) -> Iterator[DagsterUI]:
    """``dg dev -w workspace.yaml`` on ``deployment``'s instance until the code location has loaded."""
    port = free_port()
    command = [
        Path(sys.executable).with_name("dg"),
        "dev",
        "-w",
        REPO / "workspace.yaml",
        "--port",
        str(port),
    ]
    variables = environment(**deployment.environ(), PYTHONUNBUFFERED="1", **env)
    variables.pop("DAGSTER_DISABLE_TELEMETRY", None)
    with ServerProcess(command, env=variables, log_path=log_path, cwd=REPO, stop_timeout=60) as server:
        url = f"http://127.0.0.1:{port}"
        server.wait_for_http(f"{url}/server_info", timeout=START_TIMEOUT_S)
        ui = DagsterUI(url, deployment, server)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ui.location_loaded():
            if time.monotonic() > deadline:
                raise server._failure("the code location did not load")
            time.sleep(1)
        yield ui


def fiftyone_uri(tmp: Path) -> str:
    """This session's private MongoDB for FiftyOne (runs launched from the UI use it)."""
    from .. import fiftyone_db

    return os.environ.get("FIFTYONE_DATABASE_URI") or fiftyone_db.start(tmp / "fiftyone_db")
