"""The shared app: one Starlette application per server process, speaking the NimbRo vision API.

Routes and answers are those of the public ``nimbro_vision_server`` base (router_base.py) and its
per-family routers:

=================  ==========================================================================
``GET /health``    open: ``{"status": "ok", "cuda_available": bool, ...}``
``GET /model_flavors``  ``{"flavors": [...]}``
``GET /status``    ``{"model_family": <family>, "status": null | {"flavor": ..., ...}}``
``POST /load``     ``{"flavor": ...}`` → ``{"loaded_model": "Model", "flavor": ...}``; the loaded model
                   is unloaded first; an unknown flavour or a failed load → 500
                   ``{"detail": "Model load error: ..."}`` and nothing stays loaded
``POST /unload``   ``{"unloaded": true}``; 503 ``{"detail": "No model loaded"}`` when nothing is loaded
``POST /infer``    family-specific; 503 when nothing is loaded; any failure → 500
                   ``{"detail": "Inference failed: ..."}``
``POST /update``   sam2_realtime: ``Update failed: ...`` on failure; ``POST /reset`` → ``{"reset": true}``
=================  ==========================================================================

Auth as ``router_base.authenticate``: every route but ``/health`` needs ``Authorization: Bearer <token>``;
a missing header or another scheme → 401 ``Missing or invalid auth scheme`` (with
``WWW-Authenticate: Bearer``); a token other than the server's (``NIMBRO_VISION_SERVER_TOKEN`` or
``--token``; none set = any token) → 403 ``Invalid token``.

``cuda_available`` in ``/health``: the authors' client refuses every call to a server that reports
false, because their servers only run on ``cuda:0`` and mean "my device is usable". Here it has that
meaning — true when the device this server computes on (``--device``) is usable — and ``device`` /
``torch_cuda_available`` say what it is.

Model work runs on one dedicated thread (so requests never run two models at once, and the event loop
keeps answering ``/health`` and ``/status`` during a long ``/load``); decoding images and encoding masks
run on a small thread pool, so one request's encoding overlaps the next request's model work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import TOKEN_ENV
from ._codec import InvalidImageError
from ._runtime import DeviceUnavailableError, MissingExtraError, Runtime, WeightsError, from_pretrained

__all__ = [
    "HTTPError",
    "ModelFamily",
    "RequestError",
    "Stage",
    "TextPromptedFamily",
    "VisionServer",
    "create_app",
]

log = logging.getLogger("vlm_gist_dagster.vision_server")


class HTTPError(Exception):
    """An answer with a status code and FastAPI's ``{"detail": ...}`` body."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


class RequestError(ValueError):
    """A payload the model cannot take; becomes the route's 500 (``Inference failed: <message>``), as
    every validation failure does on the real servers."""


@dataclass(frozen=True)
class Stage:
    """A model route in three steps: ``prepare`` (thread pool: parse, decode images), ``compute`` (the
    model thread) and ``render`` (thread pool: encode the response). ``failure`` prefixes error details."""

    prepare: Callable[[dict[str, Any]], Any]
    compute: Callable[[Any], Any]
    render: Callable[[Any], dict[str, Any]]
    failure: str = "Inference failed"


class ModelFamily:
    """One model family of the API. Subclasses set :attr:`name`, :attr:`flavors` and implement
    :meth:`load_model` and either the three steps of their one ``/infer`` route (``prepare``,
    ``compute``, ``render``: see :class:`Stage`) or :meth:`stages`; everything torch happens in the
    subclass."""

    name: ClassVar[str]
    #: flavour → Hugging Face model id of its official weights
    flavors: ClassVar[dict[str, str]]
    # The three steps of the /infer stage, each family's own (:meth:`stages`).
    prepare: Callable[[dict[str, Any]], Any]
    compute: Callable[[Any], Any]
    render: Callable[[Any], dict[str, Any]]

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.flavor: str | None = None
        self.device: Any = None
        self.dtype: Any = None
        self.weights: str | None = None
        #: the loaded torch model (None: nothing loaded)
        self.model: Any = None

    # -- lifecycle (model thread) ----------------------------------------------------------------
    def load(self, flavor: str, payload: dict[str, Any]) -> None:
        if flavor not in self.flavors:
            raise RequestError(f"Unknown flavor {flavor!r}, valid flavors: {list(self.flavors)}")
        self.unload()
        self.device = self.runtime.torch_device()
        self.dtype = self.runtime.torch_dtype(self.device)
        if self.runtime.random_weights:
            self.weights = (
                "random"
                if self.runtime.random_size == "tiny"
                else f"random ({self.runtime.random_size} size)"
            )
        else:
            self.weights = self.runtime.weights_source(flavor, self.flavors[flavor])
        self.load_model(flavor, payload)
        self.flavor = flavor

    def load_model(self, flavor: str, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    def pretrained_weights(self) -> str:
        """The weights :meth:`load_model` loads (a local directory or a hub id), which :meth:`load` chose."""
        assert self.weights is not None, "load() sets the weights before it calls load_model()"
        return self.weights

    def load_pretrained(self, cls: Any, flavor: str) -> Any:
        """``cls.from_pretrained`` on :meth:`pretrained_weights` (a model, tokenizer or processor class)."""
        return from_pretrained(cls, self.pretrained_weights(), flavor=flavor)

    def use_model(self, model: Any) -> None:
        """Keep ``model`` as :attr:`model`, on the server's device and dtype, in eval mode."""
        self.model = model.to(self.device, dtype=self.dtype).eval()

    def unload(self) -> None:
        """Drop the model and free its memory (subclasses drop their own attributes first)."""
        self.model = None
        self.flavor = None
        try:
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - the server does not start without torch
            pass

    def status(self) -> dict[str, Any] | None:
        if self.flavor is None:
            return None
        return {
            "flavor": self.flavor,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "weights": self.weights,
        }

    def stages(self) -> dict[str, Stage]:
        """Route path (``/infer``, ``/update``) → its :class:`Stage`: by default the one ``/infer``."""
        return {"/infer": Stage(self.prepare, self.compute, self.render)}

    def extra_routes(self) -> dict[str, Callable[[], dict[str, Any]]]:
        """Model routes without a body that run on the model thread (sam2_realtime's ``/reset``)."""
        return {}


class TextPromptedFamily(ModelFamily):
    """A family whose model reads text prompts through a tokenizer and images in batches of at most
    ``max_batch_size`` (``--max-batch-size``): mmgroundingdino and sam3."""

    def __init__(self, runtime: Runtime, *, max_batch_size: int = 4) -> None:
        super().__init__(runtime)
        self.max_batch_size = max_batch_size
        self.tokenizer: Any = None

    def unload(self) -> None:
        self.tokenizer = None
        super().unload()


class VisionServer:
    """The state of one server process: its family, its token, its model thread."""

    def __init__(self, family: ModelFamily, *, token: str | None = None) -> None:
        self.family = family
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vision-model")
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vision-io")

    async def in_model_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._model_thread, fn, *args)

    async def in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._model_thread.submit(self.family.unload).result()
        self._model_thread.shutdown(wait=True)
        self._pool.shutdown(wait=True)

    # -- helpers ---------------------------------------------------------------------------------
    def authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not credentials.strip():
            raise HTTPError(401, "Missing or invalid auth scheme", {"WWW-Authenticate": "Bearer"})
        if self.token and credentials.strip() != self.token:
            raise HTTPError(403, "Invalid token")

    def require_model(self) -> None:
        if self.family.flavor is None:
            raise HTTPError(503, "No model loaded")

    @staticmethod
    async def json_body(request: Request, failure: str) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPError(500, f"{failure}: the request body is not valid JSON ({exc})") from None


def _error_detail(exc: BaseException) -> str:
    if isinstance(
        exc, (RequestError, InvalidImageError, DeviceUnavailableError, WeightsError, MissingExtraError)
    ):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def create_app(server: VisionServer) -> Starlette:
    """The Starlette app of ``server`` (routes as in the module docstring)."""
    family = server.family

    def handler(fn: Callable[[Request], Any], *, auth: bool = True) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                if auth:
                    server.authenticate(request)
                content = await fn(request)
                response: Response = JSONResponse(content)
            except HTTPError as exc:
                response = JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)
            elapsed = time.perf_counter() - started
            level = logging.INFO if response.status_code < 400 else logging.WARNING
            if request.url.path not in ("/health", "/status") or response.status_code >= 400:
                log.log(
                    level,
                    "%s %s → %d in %.3f s",
                    request.method,
                    request.url.path,
                    response.status_code,
                    elapsed,
                )
            return response

        return endpoint

    async def health(request: Request) -> dict[str, Any]:
        import torch

        return {
            "status": "ok",
            "cuda_available": family.runtime.device_available(),
            "device": str(family.device) if family.device is not None else family.runtime.device,
            "torch_cuda_available": torch.cuda.is_available(),
        }

    async def model_flavors(request: Request) -> dict[str, Any]:
        return {"flavors": list(family.flavors)}

    async def status(request: Request) -> dict[str, Any]:
        return {"model_family": family.name, "status": family.status()}

    async def load(request: Request) -> dict[str, Any]:
        payload = await server.json_body(request, "Model load error")
        if not isinstance(payload, dict):
            raise HTTPError(500, 'Model load error: the request body must be a JSON object {"flavor": ...}')
        flavor = payload.get("flavor")
        started = time.perf_counter()
        try:
            await server.in_model_thread(family.load, flavor, payload)
        except Exception as exc:  # noqa: BLE001 - every load failure is the real server's 500
            await server.in_model_thread(family.unload)
            log.error("load of %s flavor %r failed: %s", family.name, flavor, _error_detail(exc))
            if not isinstance(exc, (RequestError, DeviceUnavailableError, WeightsError, MissingExtraError)):
                log.debug("%s", traceback.format_exc())
            raise HTTPError(500, f"Model load error: {_error_detail(exc)}") from None
        log.info(
            "loaded %s flavor %r (%s) on %s as %s in %.1f s",
            family.name,
            flavor,
            family.weights,
            family.device,
            family.dtype,
            time.perf_counter() - started,
        )
        return {"loaded_model": "Model", "flavor": flavor}

    async def unload(request: Request) -> dict[str, Any]:
        server.require_model()
        await server.in_model_thread(family.unload)
        return {"unloaded": True}

    def model_route(path: str) -> Callable[[Request], Any]:
        async def run(request: Request) -> dict[str, Any]:
            server.require_model()
            stage = family.stages()[path]
            try:
                payload = await server.json_body(request, stage.failure)
                if not isinstance(payload, dict):
                    raise RequestError("the request body must be a JSON object")
                prepared = await server.in_pool(stage.prepare, payload)
                if family.flavor is None:  # unloaded while the images were decoded
                    raise HTTPError(503, "No model loaded")
                computed = await server.in_model_thread(stage.compute, prepared)
                return await server.in_pool(stage.render, computed)
            except HTTPError:
                raise
            except Exception as exc:  # noqa: BLE001 - the real servers answer 500 for every failure
                if not isinstance(exc, (RequestError, InvalidImageError)):
                    log.error("%s %s failed:\n%s", family.name, path, traceback.format_exc())
                raise HTTPError(500, f"{stage.failure}: {_error_detail(exc)}") from None

        return run

    def simple_model_route(fn: Callable[[], dict[str, Any]]) -> Callable[[Request], Any]:
        async def run(request: Request) -> dict[str, Any]:
            server.require_model()
            return await server.in_model_thread(fn)

        return run

    routes = [
        Route("/health", handler(health, auth=False), methods=["GET"]),
        Route("/model_flavors", handler(model_flavors), methods=["GET"]),
        Route("/status", handler(status), methods=["GET"]),
        Route("/load", handler(load), methods=["POST"]),
        Route("/unload", handler(unload), methods=["POST"]),
    ]
    for path in family.stages():
        routes.append(Route(path, handler(model_route(path)), methods=["POST"]))
    for path, fn in family.extra_routes().items():
        routes.append(Route(path, handler(simple_model_route(fn)), methods=["POST"]))

    async def http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app = Starlette(routes=routes, exception_handlers={StarletteHTTPException: http_exception})
    app.state.server = server
    return app
