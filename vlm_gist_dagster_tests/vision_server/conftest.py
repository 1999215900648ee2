"""vision-serve tests: tiny random-weight architectures on the CPU, offline.

They need the optional extra ``vision`` (torch, transformers). Without it the modules that need it are
skipped with the reason below; ``make test-vision`` installs the extra and sets
``VLM_GIST_REQUIRE_VISION=1``, under which a missing extra is an error instead of a skip (CI runs that
target, so these tests can never pass silently by not running).
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

REQUIRE_VISION = os.environ.get("VLM_GIST_REQUIRE_VISION") == "1"


def _vision_extra_missing() -> str | None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        if REQUIRE_VISION:
            raise RuntimeError(
                f"VLM_GIST_REQUIRE_VISION=1 but the 'vision' extra is not installed: {exc}"
            ) from exc
        return str(exc)
    return None


_MISSING = _vision_extra_missing()
#: module-level mark of every test that runs models
needs_vision = pytest.mark.skipif(
    _MISSING is not None,
    reason=f"the optional extra 'vision' is not installed ({_MISSING}); `make test-vision` installs it and runs these tests",
)


def image_b64(height: int = 120, width: int = 160, seed: int = 0, ext: str = ".png") -> str:
    """Base64 of a random RGB image file (what the NimbRo clients send)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return base64.b64encode(cv2.imencode(ext, pixels)[1].tobytes()).decode("ascii")


def decode_png(b64: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), dtype=np.uint8), cv2.IMREAD_UNCHANGED)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def vision_serve(family: str, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``vlm-gist vision-serve --family FAMILY --random-weights --device cpu ARGS`` as a child process
    and yield its URL once ``/health`` answers; stopped afterwards by SIGTERM (by PID), after which it
    must exit within 30 s (status 0, or -SIGTERM: uvicorn re-raises the signal after its graceful
    shutdown) without a traceback."""
    port = free_port()
    command = [
        sys.executable, "-m", "vlm_gist_dagster.cli", "vision-serve", "--family", family,
        "--random-weights", "--device", "cpu", "--port", str(port), *args,
    ]  # fmt: skip
    log = Path(os.environ["VLM_GIST_DATA_DIR"]) / f"vision_serve_{family}_{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"vision-serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vision-serve did not answer /health in 120 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"vision-serve did not stop within 30 s of SIGTERM:\n{log.read_text()}")
    output = log.read_text()
    assert process.returncode in (0, -signal.SIGTERM), (
        f"vision-serve exited with {process.returncode}:\n{output}"
    )
    assert "Traceback" not in output, output
