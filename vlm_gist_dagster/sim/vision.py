"""Simulated NimbRo vision servers, one app per model family, as strict as the public servers
(docs/nimbro_vision_api.md; AIS-Bonn/nimbro_vision_servers, ``nimbro_vision_server/router_base.py``).

* **Routes:** ``GET /health`` (open; ``cuda_available`` from the ``cuda_available`` control, true by
  default), ``GET /model_flavors``, ``GET /status``, ``POST /load``, ``POST /unload``, ``POST /infer``;
  sam2_realtime adds ``POST /update`` and ``POST /reset``. Unknown paths: 404 ``{"detail": "Not Found"}``.
* **Auth:** every route but ``/health`` needs ``Authorization: Bearer <token>``: a missing header, another
  scheme or an empty token → 401 ``{"detail": "Missing or invalid auth scheme"}`` with
  ``WWW-Authenticate: Bearer``; a wrong token (when the server has one) → 403 ``{"detail": "Invalid token"}``.
* **Errors:** ``/infer``, ``/update``, ``/unload``, ``/reset`` with nothing loaded → 503
  ``{"detail": "No model loaded"}``; ``/load`` with an unknown flavour → 500 ``Model load error: ...`` and
  nothing loaded afterwards (the server unloads first); a body that is not JSON on ``/load`` → plain-text
  500; every request the server's ``preprocess`` rejects, and every model failure → 500
  ``{"detail": "Inference failed: <message>"}`` (``Update failed: ...`` on ``/update``): no 4xx.
* **Images** are decoded as the server does (``base64.b64decode``, then Pillow): a ``data:`` URI is not an
  image. mmgroundingdino and sam2_realtime convert RGB to BGR with OpenCV, so an image the installed
  OpenCV cannot convert (grayscale + alpha; with older releases grayscale too) fails as on the real server.
  An image the simulator does not know → 400 (its one error of its own: it can only answer images of its
  datasets).
* **Flavours** are the real servers' (:data:`FLAVORS`). sam2_realtime's ``/status`` is always
  ``status: null``, like the public server's (it never records its flavour), unless the
  ``status_reports_flavor`` control is on.

The family-specific parts live in :mod:`.gdino` (MM-Grounding-DINO: validation, chunking, the selection
rule), :mod:`.sam2` (prompts, masks and the thin-mask failure), :mod:`.baselines` (Florence-2,
Kosmos-2) and :mod:`.sam3` (SAM 3 concept prompts, the ``vlm-gist vision-serve`` family). A result depends only on the seed, the family, the flavour and the request; faults (429, 500,
503, dropped connections, stalls, truncated bodies) depend on the attempt (:mod:`.faults`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from . import baselines, gdino, sam2, sam3
from ._http import (
    AbortableApp,
    FaultPlan,
    RejectedRequest,
    RequestTimer,
    SimContext,
    body_digest,
    http_fault_response,
    plan_request,
    settle,
    truncated_json_response,
)
from .controls import CHAT_ONLY_FAULTS, FAULT_TYPES, ServerControls
from .world import Identified, ImageDecodeError, UnknownImageError

#: Each family's flavours, as ``get_available_flavors`` lists them (docs/nimbro_vision_api.md, "Flavours").
FLAVORS: dict[str, tuple[str, ...]] = {
    "mmgroundingdino": (
        "tiny",
        "base",
        "large",
        "large_zeroshot",
        "llmdet_tiny",
        "llmdet_base",
        "llmdet_large",
    ),
    "sam2_realtime": ("tiny", "small", "base", "large"),
    "florence2": ("base", "large", "base_ft", "large_ft"),
    "kosmos2": ("patch14-224",),
    "sam3": ("sam3",),  # ours (``vlm-gist vision-serve --family sam3``), not one of the authors' servers
}
VISION_FAULTS = frozenset(FAULT_TYPES) - CHAT_ONLY_FAULTS
#: Families whose server converts the decoded image with ``cv2.cvtColor(..., COLOR_RGB2BGR)``.
_RGB2BGR_FAMILIES = frozenset({"mmgroundingdino", "sam2_realtime"})
AUTH_FAILED = "Missing or invalid auth scheme"
NO_MODEL = "No model loaded"


class VisionError(Exception):
    """An HTTP error answered as FastAPI writes it: ``{"detail": ...}``."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def decode_server_image(value: Any, *, rgb2bgr: bool) -> bytes:
    """The image bytes of one base64 field, failing exactly where the server's decoding fails
    (``base64.b64decode``, ``PIL.Image.open``, and for ``rgb2bgr`` ``cv2.cvtColor(np.array(img),
    COLOR_RGB2BGR)``, tried on a 1×1 image of the same mode so that nothing large is decoded here).
    Raises :class:`RejectedRequest` with the library's message."""
    try:
        data = base64.b64decode(value)
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
    except (TypeError, binascii.Error, UnidentifiedImageError, OSError) as exc:
        raise RejectedRequest(str(exc)) from None
    if rgb2bgr:
        try:
            cv2.cvtColor(np.asarray(Image.new(mode, (1, 1))), cv2.COLOR_RGB2BGR)
        except cv2.error as exc:
            raise RejectedRequest(str(exc).strip()) from None
    return data


class VisionServer:
    """One simulated NimbRo vision server (a model family)."""

    def __init__(self, family: str, ctx: SimContext, token: str | None = None) -> None:
        if family not in FLAVORS:
            raise ValueError(f"unknown model family {family!r} (known: {sorted(FLAVORS)})")
        self.family = family
        self.ctx = ctx
        self.token = token
        #: The loaded flavour (None: nothing loaded, the server's ``manager`` is None).
        self.flavor: str | None = None
        #: sam2_realtime tracker: object id → relative xyxy box, in the order SAM2 keeps its objects
        #: (None: never initialised since the last load or reset).
        self.tracker: dict[Any, np.ndarray] | None = None

    def app(self) -> AbortableApp:
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/model_flavors", self.model_flavors, methods=["GET"]),
            Route("/status", self.status, methods=["GET"]),
            Route("/load", self.load, methods=["POST"]),
            Route("/unload", self.unload, methods=["POST"]),
            Route("/infer", self.infer, methods=["POST"]),
        ]
        if self.family == "sam2_realtime":
            routes += [
                Route("/update", self.update, methods=["POST"]),
                Route("/reset", self.reset, methods=["POST"]),
            ]
        return AbortableApp(Starlette(routes=routes, exception_handlers={HTTPException: _fastapi_http_error}))

    @property
    def controls(self) -> ServerControls:
        return self.ctx.controls.get(self.family)

    # ---------------------------------------------------------------- plumbing
    def _auth(self, request: Request) -> None:
        # router_base.py:17-35: HTTPBearer(auto_error=False) yields nothing for a missing header, another
        # scheme or an empty token; the token is compared only when the server was started with one.
        scheme, _, credentials = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise VisionError(401, AUTH_FAILED, {"WWW-Authenticate": "Bearer"})
        if self.token and credentials.strip() != self.token:
            raise VisionError(403, "Invalid token")

    async def _handle(
        self,
        request: Request,
        handler: Callable[[Request, RequestTimer], Awaitable[Response]],
        *,
        auth: bool = True,
        needs_model: bool = False,
        failure: str = "Inference failed",
    ) -> Response:
        timer = RequestTimer(self.ctx, self.family, request)
        timer.model = self.flavor
        try:
            if auth:
                self._auth(request)
            if needs_model and self.flavor is None:  # get_manager_dep, router_base.py:39-43
                raise VisionError(503, NO_MODEL)
            response = await handler(request, timer)
        except VisionError as exc:
            timer.finish(exc.status, exc.detail)
            return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)
        except RejectedRequest as exc:
            detail = f"{failure}: {exc}"
            timer.finish(500, detail)
            return JSONResponse({"detail": detail}, status_code=500)
        timer.finish(None if timer.fault == "connection_drop" else response.status_code)
        return response

    @staticmethod
    async def _payload(request: Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RejectedRequest(str(exc)) from None

    def _identify(self, images: list[Any]) -> list[Identified]:
        rgb2bgr = self.family in _RGB2BGR_FAMILIES
        decoded = [decode_server_image(value, rgb2bgr=rgb2bgr) for value in images]
        out = []
        for i, data in enumerate(decoded):
            try:
                out.append(self.ctx.world.identify(data))
            except (UnknownImageError, ImageDecodeError) as exc:
                raise VisionError(400, f"simulator: image {i}: {exc}") from None
        return out

    async def _plan(
        self, request: Request, timer: RequestTimer, images: list[Any]
    ) -> tuple[list[Identified], FaultPlan, Response | None]:
        """The request's images identified, and its fault plan: a fault's response (answer it), or None
        after the plan's latency (then answer the request)."""
        identified = await asyncio.to_thread(self._identify, images)
        key = "+".join(item.image.key for item in identified)
        timer.image_key = key
        plan = plan_request(
            self.ctx, self.family, self.flavor, key, content=body_digest(request), allowed=VISION_FAULTS
        )
        timer.attempt, timer.fault = plan.attempt, plan.fault
        response = await http_fault_response(plan, request, lambda status, message: {"detail": message})
        if response is None:
            settle(self.ctx, plan)  # the result does not depend on the attempt: nothing to redraw
            delay = plan.latency_s + (
                plan.controls.faults.stall_seconds if plan.fault == "stall_first_chunk" else 0.0
            )
            if delay > 0:
                await asyncio.sleep(delay)
        return identified, plan, response

    def _parts(self, plan: FaultPlan, item: Identified) -> tuple:
        """What seeds a result: never the attempt, so the same request always gets the same result."""
        return (plan.seed, self.family, self.flavor, item.image.key)

    @staticmethod
    def _respond(plan: FaultPlan, content: dict[str, Any]) -> Response:
        if plan.fault == "truncated_stream":
            return truncated_json_response(content)
        return JSONResponse(content)

    # ---------------------------------------------------------------- common routes
    async def health(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            return JSONResponse({"status": "ok", "cuda_available": self.controls.cuda_available})

        return await self._handle(request, handler, auth=False)

    async def model_flavors(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            return JSONResponse({"flavors": list(FLAVORS[self.family])})

        return await self._handle(request, handler)

    async def status(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            status: dict[str, Any] | None = None
            if self.flavor is not None and self.family != "sam2_realtime":
                status = {"flavor": self.flavor}
            elif self.flavor is not None and self.controls.status_reports_flavor:
                status = {"flavor": self.flavor, "tracker_initialized": self.tracker is not None}
            return JSONResponse({"model_family": self.family, "status": status})

        return await self._handle(request, handler)

    async def load(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            try:
                payload = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError):  # raised outside the server's try: bare 500
                return PlainTextResponse("Internal Server Error", status_code=500)
            self.flavor, self.tracker = None, None  # the current model is unloaded before loading
            if not isinstance(payload, dict):
                raise VisionError(
                    500, f"Model load error: '{type(payload).__name__}' object has no attribute 'get'"
                )
            flavor = payload.get("flavor")
            if flavor not in FLAVORS[self.family]:
                raise VisionError(
                    500,
                    f"Model load error: Unknown flavor '{flavor}', valid flavors: {list(FLAVORS[self.family])}",
                )
            self.flavor = flavor
            timer.model = flavor
            return JSONResponse({"loaded_model": "Model", "flavor": flavor})

        return await self._handle(request, handler)

    async def unload(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            self.flavor, self.tracker = None, None
            return JSONResponse({"unloaded": True})

        return await self._handle(request, handler, needs_model=True)

    async def infer(self, request: Request) -> Response:
        handlers = {
            "mmgroundingdino": self._infer_gdino,
            "sam2_realtime": self._infer_sam2,
            "florence2": self._infer_florence,
            "kosmos2": self._infer_kosmos,
            "sam3": self._infer_sam3,
        }
        return await self._handle(request, handlers[self.family], needs_model=True)

    # ---------------------------------------------------------------- mmgroundingdino
    async def _infer_gdino(self, request: Request, timer: RequestTimer) -> Response:
        images, parameters = gdino.parse_infer_request(await self._payload(request))
        identified, plan, faulted = await self._plan(request, timer, images)
        if faulted is not None:
            return faulted

        def run() -> list[list[dict[str, Any]]]:
            return [
                gdino.gdino_response(gdino.detect(item, params, plan.controls, self._parts(plan, item)))[
                    "artifact"
                ]["detections"][0]
                for item, params in zip(identified, parameters, strict=True)
            ]

        detections = await asyncio.to_thread(run)
        return self._respond(plan, {"artifact": {"detections": detections, "model": "mmgroundingdino"}})

    # ---------------------------------------------------------------- sam2_realtime
    def _frame(self, item: Identified) -> list[tuple[Any, np.ndarray]]:
        assert self.tracker is not None
        scale = np.array([item.width, item.height, item.width, item.height], dtype=np.float64)
        grow = not self.controls.thin_mask_error
        return [
            (object_id, sam2.mask_for_box(item.image, item.width, item.height, rel * scale, grow_thin=grow))
            for object_id, rel in self.tracker.items()
        ]

    async def update(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            image, prompts = sam2.parse_update_request(await self._payload(request))
            (item,), plan, faulted = await self._plan(request, timer, [image])
            if faulted is not None:
                return faulted
            size = np.array([item.width, item.height, item.width, item.height], dtype=np.float64)
            # Every /update resets the tracker and adds every prompt (model.py:114-130); a repeated
            # object id adds to the same object, which keeps its first position.
            self.tracker = {}
            for prompt in prompts:
                self.tracker[prompt.object_id] = sam2.prompt_box(prompt, item) / size
            if not prompts:  # the server's outputs stay unset: UnboundLocalError
                raise RejectedRequest(
                    "cannot access local variable 'out_obj_ids' where it is not associated with a value"
                )
            odd = next((p.object_id for p in prompts if not isinstance(p.object_id, int)), None)
            if odd is not None:  # torch.tensor(out_obj_ids) needs numbers
                raise RejectedRequest(f"new(): invalid data type '{type(odd).__name__}'")
            body = await asyncio.to_thread(lambda: sam2.encode_frames([self._frame(item)]))
            return self._respond(plan, body)

        return await self._handle(request, handler, needs_model=True, failure="Update failed")

    async def _infer_sam2(self, request: Request, timer: RequestTimer) -> Response:
        images = sam2.parse_track_request(await self._payload(request))
        identified, plan, faulted = await self._plan(request, timer, images)
        if faulted is not None:
            return faulted
        if self.tracker is None:  # never initialised: no frames at all (model.py:235-236)
            return self._respond(plan, {"artifact": {"tracks": [], "model": "sam2_realtime", "metadata": []}})
        body = await asyncio.to_thread(lambda: sam2.encode_frames([self._frame(item) for item in identified]))
        return self._respond(plan, body)

    async def reset(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            self.tracker = None
            return JSONResponse({"reset": True})

        return await self._handle(request, handler, needs_model=True)

    # ---------------------------------------------------------------- florence2 / kosmos2
    async def _infer_florence(self, request: Request, timer: RequestTimer) -> Response:
        return await self._infer_captioner(
            request, timer, baselines.parse_florence_request, baselines.florence_answer
        )

    async def _infer_kosmos(self, request: Request, timer: RequestTimer) -> Response:
        return await self._infer_captioner(
            request, timer, baselines.parse_kosmos_request, baselines.kosmos_answer
        )

    async def _infer_captioner(
        self,
        request: Request,
        timer: RequestTimer,
        parse: Callable[[Any], tuple[list[Any], list[Any]]],
        answer: Callable[..., tuple[list[dict[str, Any]], str | None]],
    ) -> Response:
        """Florence-2 and Kosmos-2: one prompt per image, answered with detections and a caption."""
        images, prompts = parse(await self._payload(request))
        identified, plan, faulted = await self._plan(request, timer, images)
        if faulted is not None:
            return faulted
        answers = [
            answer(item, prompt, plan.controls, self._parts(plan, item))
            for item, prompt in zip(identified, prompts, strict=True)
        ]
        artifact = {
            "detections": [d for d, _ in answers],
            "captions": [c for _, c in answers],
            "model": self.family,
        }
        return self._respond(plan, {"artifact": artifact})

    # ---------------------------------------------------------------- sam3
    async def _infer_sam3(self, request: Request, timer: RequestTimer) -> Response:
        images, parameters = sam3.parse_infer_request(await self._payload(request))
        identified, plan, faulted = await self._plan(request, timer, images)
        if faulted is not None:
            return faulted

        def run() -> list[list[dict[str, Any]]]:
            return [
                sam3.sam3_detections(item, params, plan.controls, self._parts(plan, item))
                for item, params in zip(identified, parameters, strict=True)
            ]

        detections = await asyncio.to_thread(run)
        metadata = [{"image_width": item.width, "image_height": item.height} for item in identified]
        return self._respond(
            plan, {"artifact": {"detections": detections, "model": "sam3", "metadata": metadata}}
        )


async def _fastapi_http_error(request: Request, exc: Exception) -> Response:
    """404 / 405 as FastAPI writes them (``{"detail": "Not Found"}``), not Starlette's plain text."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
