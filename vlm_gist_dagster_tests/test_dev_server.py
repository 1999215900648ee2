"""``vlm-gist dev`` (``make dev``) as a user runs it (issue 12, items 5 and 6): started in a process group of
its own on a fresh ``DAGSTER_HOME``, it writes ``dagster.yaml`` (telemetry off), serves the UI without
Dagster's telemetry script (the only thing the UI bundle loads from the internet, gated by
``telemetryEnabled``), prints no "No dagster.yaml found", telemetry banner, BetaWarning or
SupersessionWarning; and one signal to its process group stops it and every process it started
(``dg dev``, the webserver, the daemon, the code servers, runs in flight), with nothing left running:

* SIGTERM, to a ``vlm-gist dev`` started with SIGINT ignored, as ``make dev &`` from a script starts it
  (Dagster's dev server maps SIGTERM to its SIGINT handler, so an inherited "ignore SIGINT" made it
  and its children ignore SIGTERM too: only SIGKILL ended them);
* SIGINT, as Ctrl-C in a terminal sends it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
VLM_GIST = Path(sys.executable).with_name("vlm-gist")
#: Starting the UI imports Dagster and the definitions in four processes; on a loaded 2-core machine
#: that can take minutes. Only the wait for it is long; stopping is asserted on its own deadline.
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_ui(url: str, process: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vlm-gist dev exited with {process.returncode} before the UI came up")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response.text
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"the UI did not answer on {url} within {timeout} s")


def processes_of(home: Path) -> list[psutil.Process]:
    """Running processes whose environment has ``DAGSTER_HOME=home`` (unique to one test)."""
    found = []
    for process in psutil.process_iter():
        try:
            if (
                process.environ().get("DAGSTER_HOME") == str(home)
                and process.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def code_location_loaded(port: int) -> bool:
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
    try:
        response = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=10)
        entries = response.json()["data"]["workspaceOrError"]["locationEntries"]
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return False
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


@pytest.mark.parametrize(
    ("stop_signal", "ignore_sigint_at_start"),
    [(signal.SIGTERM, True), (signal.SIGINT, False)],
    ids=["sigterm-started-in-background", "sigint-ctrl-c"],
)
def test_dev_writes_a_quiet_private_instance_and_stops_on_one_signal(
    tmp_path, stop_signal, ignore_sigint_at_start
):
    home = tmp_path / "dagster_home"  # does not exist yet: a fresh checkout
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "VLM_GIST_DATA_DIR": str(tmp_path / "data"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DAGSTER_DISABLE_TELEMETRY", None)  # the instance file alone must keep telemetry off
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        command = [str(VLM_GIST), "dev", "--port", str(port)]
        if ignore_sigint_at_start:  # what a non-interactive shell does to a job started with '&'
            command = ["sh", "-c", 'trap "" INT; exec "$0" "$@"', *command]
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal gives `make dev`
        )
    try:
        page = wait_for_ui(f"http://127.0.0.1:{port}/", process, START_TIMEOUT_S)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not code_location_loaded(port) and time.monotonic() < deadline:
            time.sleep(1)
        assert code_location_loaded(port), "the code location did not load"
        started = psutil.Process(process.pid).children(recursive=True)
        commands = [" ".join(p.cmdline()) for p in started]
        assert any(" dev " in c and "workspace.yaml" in c for c in commands), commands
        assert any("dagster_webserver" in c for c in commands), commands
        assert any("dagster._daemon" in c for c in commands), commands
        assert any("grpc" in c or "code-server" in c for c in commands), commands
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        for child in psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []:
            child.kill()
        raise

    # dagster.yaml written with telemetry off; the UI's initialization data says so.
    config = (home / "dagster.yaml").read_text()
    assert re.search(r"^telemetry:\n  enabled: false$", config, re.M)
    init = re.search(
        r'<script type="application/json" id="initialization-data"[^>]*>(.*?)</script>', page, re.S
    )
    assert init and json.loads(init.group(1))["telemetryEnabled"] is False
    assert not re.search(r"<script[^>]+src=\"https?://", page)

    # One signal to the process group: everything stops within the deadline, nothing is left.
    os.killpg(process.pid, stop_signal)
    try:
        returncode = process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"vlm-gist dev did not stop within {STOP_TIMEOUT_S} s after {stop_signal.name}")
    gone, alive = psutil.wait_procs(started, timeout=10)
    # Also anything started after the snapshot (a run launched by automation): every process that
    # carries this test's DAGSTER_HOME in its environment.
    alive += [p for p in processes_of(home) if p not in alive]
    leftover = [f"{p.pid} {' '.join(p.cmdline())}" for p in alive]
    for p in alive:
        p.kill()
    assert not leftover, leftover
    assert returncode == 0

    output = log.read_text(errors="replace")
    for noise in (
        "No dagster instance configuration file",
        "Telemetry:",
        "BetaWarning",
        "SupersessionWarning",
    ):
        assert noise not in output, f"{noise!r} in the output of vlm-gist dev:\n{output[-3000:]}"
