"""Servers a browser test starts (``vlm-gist review``'s FiftyOne App; later ``dagster dev``): each in its
own session and process group (``start_new_session=True``), its output in a log file, stopped by PID.

>>> with ServerProcess(["vlm-gist", "review", "--dataset", "coco", "--port", "5151"], env=env,
...                    log_path=tmp / "review.log") as server:          # doctest: +SKIP
...     url = server.wait_for_output(r"FiftyOne App: (\\S+)", timeout=300).group(1)
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A command running in the background for a test; a context manager that stops it on exit.

    ``stop`` sends ``stop_signal`` to the started process, waits ``stop_timeout`` seconds, then kills
    (by PID) whatever is left of it and of every process it started: FiftyOne's App server and database
    run in process groups of their own, so signalling one group would miss them.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 60.0,
    ) -> None:
        self.command = [str(c) for c in command]
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen | None = None
        self._descendants: dict[int, psutil.Process] = {}

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def _remember_descendants(self) -> None:
        try:
            for child in psutil.Process(self.pid).children(recursive=True):
                self._descendants.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def stop(self) -> None:
        """Stop the server and everything it started (no-op when it is not running)."""
        if self.process is None:
            return
        self._remember_descendants()
        if self.process.poll() is None:
            try:
                self.process.send_signal(self.stop_signal)
                self.process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        # What it started and did not stop (a child that outlived it): by PID, checked to be the
        # same process (psutil compares the creation time), terminate, then kill.
        alive = [p for p in self._descendants.values() if p.is_running()]
        for p in alive:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, still = psutil.wait_procs(alive, timeout=10)
        for p in still:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass

    # -- waiting -----------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _failure(self, what: str) -> AssertionError:
        tail = "\n".join(self.log_text().splitlines()[-40:])
        return AssertionError(
            f"{what}\ncommand: {' '.join(self.command)}\nlog ({self.log_path}), last lines:\n{tail}"
        )

    def wait_for_output(self, pattern: str, *, timeout: float) -> re.Match[str]:
        """Wait until the server's output matches ``pattern``; fail with the log when it exits first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            self._remember_descendants()
            match = regex.search(self.log_text())
            if match:
                return match
            if self.process is not None and self.process.poll() is not None:
                raise self._failure(f"exited with code {self.process.returncode} before printing {pattern!r}")
            if time.monotonic() > deadline:
                raise self._failure(f"did not print {pattern!r} within {timeout:.0f} s")
            time.sleep(0.5)

    def wait_for_http(self, url: str, *, timeout: float) -> None:
        """Wait until ``url`` answers with a status below 500."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            self._remember_descendants()
            if self.process is not None and self.process.poll() is not None:
                raise self._failure(f"exited with code {self.process.returncode} while waiting for {url}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status < 500:
                        return
                    last = response.status
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    return
                last = exc.code
            except (urllib.error.URLError, OSError) as exc:
                last = exc
            time.sleep(0.5)
        raise self._failure(f"{url} did not answer within {timeout:.0f} s (last: {last!r})")


def environment(**overrides: str) -> dict[str, str]:
    """This process's environment with ``overrides`` (for a server started by a test)."""
    env = dict(os.environ)
    env.update(overrides)
    return env
