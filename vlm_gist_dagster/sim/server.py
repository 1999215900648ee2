"""Starting and stopping the simulator: uvicorn servers in background threads, loopback only.

>>> from vlm_gist_dagster.sim import run_simulator                       # doctest: +SKIP
>>> with run_simulator(datasets={"coco": "../shared/datasets/coco_val2017_32"},
...                    ports={"chat": 0}) as sim:                       # doctest: +SKIP
...     sim.chat_url, sim.vision_urls["mmgroundingdino"]
('http://127.0.0.1:41234/v1', 'http://127.0.0.1:41235')
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import uvicorn

from ..datasets import Dataset
from ._http import ControlsStore, SimContext
from .chat import ChatServer
from .controls import SERVER_NAMES, VISION_FAMILIES, ModelControls, ServerControls, default_controls
from .log import RequestLog
from .presets import preset_controls
from .vision import VisionServer
from .world import World, load_world

HOST = "127.0.0.1"
#: Default ports (the real servers' defaults are 9000–9003; ours are apart so both can run side by side).
DEFAULT_PORTS: dict[str, int] = {
    "chat": 8900,
    "mmgroundingdino": 8910,
    "sam2_realtime": 8911,
    "florence2": 8913,
    "kosmos2": 8914,
    "sam3": 8915,
}


class SimulatorStartError(RuntimeError):
    """A server did not come up (e.g. its port is taken)."""


class _ServerThread:
    """One uvicorn server on 127.0.0.1 in a daemon thread with its own event loop."""

    def __init__(self, name: str, app: Any, port: int) -> None:
        self.name = name
        config = uvicorn.Config(
            app,
            host=HOST,
            port=port,
            http="h11",
            lifespan="off",
            log_level="error",
            log_config=None,
            access_log=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"vlm-gist-sim-{name}", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self.error = exc

    def start(self, timeout: float = 15.0) -> int:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                reason = self.error or "did not start in time (port in use?)"
                raise SimulatorStartError(
                    f"simulated {self.name} server on {HOST}:{self.server.config.port}: {reason}"
                )
            time.sleep(0.01)
        sockets = [s for server in self.server.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1])

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        if self.thread.is_alive():  # a stuck streaming response: force it
            self.server.force_exit = True
            self.thread.join(timeout)


@dataclass
class SimulatorHandle:
    """A running simulator. ``chat_url`` is the OpenAI base URL (``…/v1``); ``vision_urls`` maps each
    model family to its server's base URL; ``request_log`` records every request."""

    chat_base_url: str
    vision_urls: dict[str, str]
    request_log: RequestLog
    world: World
    _controls: ControlsStore
    _threads: list[_ServerThread]
    _context: SimContext
    _stopped: bool = False

    @property
    def chat_url(self) -> str:
        """OpenAI-style base URL, e.g. ``http://127.0.0.1:8900/v1``."""
        return self.chat_base_url + "/v1"

    @property
    def chat_completions_url(self) -> str:
        return self.chat_url + "/chat/completions"

    @property
    def models_url(self) -> str:
        return self.chat_url + "/models"

    @property
    def embeddings_url(self) -> str:
        return self.chat_url + "/embeddings"

    def endpoint_dict(
        self, api_flavor: str = "openrouter", key_env_var: str = "VLM_GIST_SIM_API_KEY"
    ) -> dict[str, str]:
        """The paper's endpoint-dict form for this simulator (docs/protocol/pipeline.md §2.1)."""
        return {
            "name": "VLM-GIST simulator",
            "api_flavor": api_flavor,
            "completions_url": self.chat_completions_url,
            "models_url": self.models_url,
            "key_type": "environment",
            "key_value": key_env_var,
        }

    def controls(self, server: str = "chat") -> ServerControls:
        return self._controls.get(server)

    def set_controls(self, server: str = "chat", model: str | None = None, **changes: Any) -> ServerControls:
        """Change controls at run time: ``set_controls(model="sim/strong", recall=0.5,
        faults={"rate_limit": 0.3})``; ``model=None`` changes the server's defaults (and ``seed=`` the server's
        seed; with a model, ``seed=`` gives that model its own seed).
        Also resets the attempt counters, so draws restart from attempt 0."""
        if server not in SERVER_NAMES:
            raise ValueError(f"unknown server {server!r} (known: {list(SERVER_NAMES)})")
        updated = self._controls.update(server, model, **changes)
        self._context.attempts.reset()
        return updated

    def replace_controls(self, server: str, controls: ServerControls) -> None:
        self._controls.set(server, controls)
        self._context.attempts.reset()

    def reset_counters(self) -> None:
        """Forget every run of attempts in progress (the next request of each kind is attempt 0)."""
        self._context.attempts.reset()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for thread in self._threads:
            thread.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _coerce_controls(
    controls: Mapping[str, ServerControls | Mapping[str, Any]] | None, seed: int
) -> dict[str, ServerControls]:
    merged = default_controls(seed)
    merged["chat"] = merged["chat"].model_copy(update={"models": preset_controls()})
    for name, value in (controls or {}).items():
        if name not in SERVER_NAMES:
            raise ValueError(f"unknown server {name!r} in controls (known: {list(SERVER_NAMES)})")
        merged[name] = value if isinstance(value, ServerControls) else ServerControls.model_validate(value)
    return merged


def start_simulator(
    datasets: Mapping[str, str | Path | Dataset],
    *,
    controls: Mapping[str, ServerControls | Mapping[str, Any]] | None = None,
    model_controls: Mapping[str, ModelControls] | None = None,
    ports: Mapping[str, int] | None = None,
    servers: Iterable[str] = SERVER_NAMES,
    seed: int = 0,
    chat_api_key: str | None = None,
    vision_token: str | None = None,
    embedding_backend: str = "hashed",
    capture_bodies: bool = False,
    served_models: Iterable[str] = (),
) -> SimulatorHandle:
    """Start the simulator's servers and return a handle (call ``stop()``; or use :func:`run_simulator`).

    ``datasets``: ``{name: directory or loaded Dataset}``. ``controls``: per server, replacing the
    defaults (:func:`~.controls.default_controls` plus the built-in ``sim/*`` presets for chat).
    ``model_controls``: extra per-model chat controls (e.g. from model files), applied on top.
    ``ports``: per server, default :data:`DEFAULT_PORTS`; 0 picks a free port. ``servers``: which to
    start. ``chat_api_key`` / ``vision_token``: required credentials (None: any bearer token is accepted).
    ``capture_bodies``: keep every request body in its :class:`~.log.RequestRecord` (for tests that
    assert on the wire payload; off by default because image bodies are large). ``served_models``: chat
    model names answered besides the simulated VLMs and :data:`~.chat.AUXILIARY_MODELS` (any other name
    gets the provider's 404, as it would from a real provider).
    """
    wanted = list(servers)
    unknown = [s for s in wanted if s not in SERVER_NAMES]
    if unknown:
        raise ValueError(f"unknown server(s) {unknown} (known: {list(SERVER_NAMES)})")
    world = load_world(datasets)
    merged = _coerce_controls(controls, seed)
    if model_controls:
        chat = merged["chat"]
        merged["chat"] = chat.model_copy(update={"models": {**chat.models, **model_controls}})
    store = ControlsStore(merged)
    context = SimContext(world=world, controls=store, log=RequestLog(), capture_bodies=capture_bodies)
    port_map = {**DEFAULT_PORTS, **(ports or {})}

    threads: list[_ServerThread] = []
    urls: dict[str, str] = {}
    try:
        for name in wanted:
            if name == "chat":
                app = ChatServer(
                    context,
                    api_key=chat_api_key,
                    embedding_backend=embedding_backend,
                    served_models=served_models,
                ).app()
            else:
                app = VisionServer(name, context, token=vision_token).app()
            thread = _ServerThread(name, app, int(port_map[name]))
            threads.append(thread)
            port = thread.start()
            urls[name] = f"http://{HOST}:{port}"
    except BaseException:
        for thread in threads:
            thread.stop()
        raise
    return SimulatorHandle(
        chat_base_url=urls.get("chat", ""),
        vision_urls={k: v for k, v in urls.items() if k in VISION_FAMILIES},
        request_log=context.log,
        world=world,
        _controls=store,
        _threads=threads,
        _context=context,
    )


@contextlib.contextmanager
def run_simulator(datasets: Mapping[str, str | Path | Dataset], **kwargs: Any) -> Iterator[SimulatorHandle]:
    """Context manager around :func:`start_simulator`; stops every server on exit."""
    handle = start_simulator(datasets, **kwargs)
    try:
        yield handle
    finally:
        handle.stop()
