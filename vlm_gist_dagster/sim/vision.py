"""Simulated NimbRo Vision Servers (spec/pipeline.md §3, §4.2–4.3, §6): one app per model family.

Common routes: ``GET /health`` (open), ``GET /model_flavors``, ``GET /status``, ``POST /load``,
``POST /unload``, ``POST /infer``; sam2_realtime adds ``POST /update`` and ``POST /reset``. Every route
but ``/health`` needs ``Authorization: Bearer <token>``: a missing header or another scheme → 401;
a wrong token (when the server has one) → 403. ``/infer`` (and ``/update``) without a loaded model →
503. Errors carry ``{"detail": ...}`` as FastAPI writes them. An image that is in none of the
simulator's datasets → 400.

* **mmgroundingdino** — each prompt is mapped to the GT instance(s) it was derived from
  (:meth:`.world.SimImage.candidates_for_prompt`). An exactly recognised prompt yields its GT box,
  each edge shifted by ``N(0, box_jitter × box size)``, with a score in [0.55, 0.95) (the detector
  misses it with probability 1 − ``recall``); a prompt recognised only by class / head noun scores
  lower; plus ``distractors`` wrong boxes per prompt (another GT instance's box or a random box) with
  scores in [0.05, 0.4). Then the paper's server-side selection rule
  (:func:`.gdino.select_detections`) and response format
  (:func:`.gdino.gdino_response`, boxes truncated to int).
* **sam2_realtime** — ``/update`` stores the prompts (object id + box, in relative coordinates) and
  answers frame 0; ``/infer`` answers every image for the stored objects (empty ``tracks`` if never
  initialised). The mask of an object is the GT mask of the instance whose box overlaps the prompt box
  best (IoU ≥ 0.3), clipped to the prompt box, else the filled prompt box; encoded by
  :func:`vlm_gist_dagster.protocol.segmentation.sam2_response` (inclusive-max box, PNG crop, empty
  masks dropped). ``/status`` always reports ``status: null``, like the real server (§7 caveat).
* **florence2** — ``<OD>``: a label per detected GT instance (the class, or a sentence's head noun);
  ``<DENSE_REGION_CAPTION>``: a short caption instead; ``captions: [null]``. **kosmos2** — entity
  phrases (``"a car"``) with boxes and a caption listing them. Both detect each GT instance with
  probability ``recall`` and add ``hallucinations`` random boxes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..protocol.segmentation import sam2_response
from . import language as lang
from ._http import (
    AbortableApp,
    RequestTimer,
    SimContext,
    decode_b64_image,
    http_fault_response,
    plan_request,
    truncated_json_response,
)
from .controls import CHAT_ONLY_FAULTS, FAULT_TYPES, ModelControls
from .faults import rng
from .gdino import DetectorBox, gdino_response, select_detections
from .world import Identified, SimImage, UnknownImageError

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
    "sam2_realtime": ("tiny", "small", "base_plus", "large"),
    "florence2": ("base", "large", "base-ft", "large-ft"),
    "kosmos2": ("patch14-224",),
}
VISION_FAULTS = frozenset(FAULT_TYPES) - CHAT_ONLY_FAULTS
FLORENCE_CAPTION_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")


class VisionError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _detail(status: int, message: str) -> dict[str, Any]:
    return {"detail": message}


# --------------------------------------------------------------------------------------------------
# Geometry helpers


def jitter_box(
    box: np.ndarray, jitter: float, gen: np.random.Generator, width: int, height: int
) -> np.ndarray:
    """``box`` (pixel xyxy floats) with each edge moved by ``N(0, jitter × box size)``, kept inside the
    image and at least 1 px wide and tall."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    shift = gen.normal(0.0, jitter, 4) * np.array([w, h, w, h]) if jitter > 0 else np.zeros(4)
    out = np.array([x1, y1, x2, y2]) + shift
    out[[0, 2]] = np.clip(out[[0, 2]], 0.0, float(width))
    out[[1, 3]] = np.clip(out[[1, 3]], 0.0, float(height))
    if out[2] - out[0] < 1.0 or out[3] - out[1] < 1.0:
        out = np.array([x1, y1, x2, y2])
    return out


def random_box(gen: np.random.Generator, width: int, height: int) -> np.ndarray:
    w = width * gen.uniform(0.05, 0.4)
    h = height * gen.uniform(0.05, 0.4)
    x = gen.uniform(0, width - w)
    y = gen.uniform(0, height - h)
    return np.array([x, y, x + w, y + h])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# --------------------------------------------------------------------------------------------------
# What each family computes


def ground_prompts(
    identified: Identified, prompts: list[str], controls: ModelControls, parts: tuple
) -> list[DetectorBox]:
    """Raw MM-Grounding-DINO output for an image before the selection rule (see the module docstring)."""
    image, width, height = identified.image, identified.width, identified.height
    raw: list[DetectorBox] = []
    for prompt in dict.fromkeys(prompts):
        gen = rng(*parts, "ground", prompt)  # per prompt: independent of the other prompts
        candidates, exact = image.candidates_for_prompt(prompt)
        used: set[int] = set()
        for rank, index in enumerate(candidates[:8]):
            if gen.random() >= controls.recall:
                continue
            inst = image.instances[index]
            box = jitter_box(image.box_xyxy(inst, width, height), controls.box_jitter, gen, width, height)
            if exact:
                score = 0.55 + 0.4 * gen.random()
            else:
                score = (0.42 + 0.2 * gen.random()) * 0.85**rank
            raw.append(DetectorBox(prompt, tuple(box), score))
            used.add(index)
        others = [i for i in range(len(image.instances)) if i not in used]
        for _ in range(controls.distractors):
            if others and gen.random() < 0.6:
                inst = image.instances[others[int(gen.integers(0, len(others)))]]
                box = jitter_box(image.box_xyxy(inst, width, height), controls.box_jitter, gen, width, height)
            else:
                box = random_box(gen, width, height)
            raw.append(DetectorBox(prompt, tuple(box), 0.05 + 0.35 * gen.random()))
    return raw


def _ensure_encodable(mask: np.ndarray, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Grow a one-pixel-thin mask to two pixels: the real server fails (HTTP 500) on such masks, which
    would make a client retry forever (protocol/segmentation.py ``DegenerateMaskError``).

    ``window`` (x1, y1, x2, y2, exclusive ends) bounds the foreground when known, so only that part of a
    full-image mask is scanned."""
    wx, wy = (window[0], window[1]) if window is not None else (0, 0)
    part = mask[window[1] : window[3], window[0] : window[2]] if window is not None else mask
    rows = np.flatnonzero(part.any(axis=1))
    if rows.size == 0:
        return mask
    cols = np.flatnonzero(part.any(axis=0))
    height, width = mask.shape
    y1, y2, x1, x2 = int(rows[0]) + wy, int(rows[-1]) + wy, int(cols[0]) + wx, int(cols[-1]) + wx
    if y2 > y1 and x2 > x1:
        return mask
    out = mask.copy()
    ys = (y1, y1 + 1) if y1 + 1 < height else (max(y1 - 1, 0), y1)
    xs = (x1, x1 + 1) if x1 + 1 < width else (max(x1 - 1, 0), x1)
    out[ys[0] : max(y2, ys[1]) + 1, xs[0] : max(x2, xs[1]) + 1] = True
    return out


def mask_for_box(image: SimImage, width: int, height: int, box: np.ndarray) -> np.ndarray:
    """The simulated SAM2 mask for a prompt box (full image, bool): the best-overlapping GT instance's
    mask cut to the box, or the box itself when none overlaps enough."""
    x1 = int(np.clip(np.floor(box[0]), 0, width))
    y1 = int(np.clip(np.floor(box[1]), 0, height))
    x2 = int(np.clip(np.ceil(box[2]), 0, width))
    y2 = int(np.clip(np.ceil(box[3]), 0, height))
    best, best_iou = None, 0.0
    for inst in image.instances:
        iou = box_iou(image.box_xyxy(inst, width, height), np.asarray(box, dtype=np.float64))
        if iou > best_iou:
            best, best_iou = inst, iou
    mask = np.zeros((height, width), dtype=bool)
    # Only the box is ever foreground, so everything below works on that window of the image (a full
    # 1920 x 1080 AND and scan per box made the simulated SAM2 the slowest part of a pair run).
    crop = None
    if best is not None and best_iou >= 0.3:
        gt = image.full_mask(best, width, height)
        if gt is not None:
            crop = gt[y1:y2, x1:x2]
    mask[y1:y2, x1:x2] = crop if crop is not None and crop.any() else True
    return _ensure_encodable(mask, (x1, y1, x2, y2))


def baseline_detections(
    identified: Identified, controls: ModelControls, parts: tuple, style: str
) -> list[dict[str, Any]]:
    """Florence-2 / Kosmos-2 style labelled boxes (ints) for one image. ``style``: od, drc or kosmos."""
    image, width, height = identified.image, identified.width, identified.height
    gen = rng(*parts, "baseline", style)
    variants = image.variants()
    out: list[dict[str, Any]] = []
    for inst in image.instances:
        if gen.random() >= controls.recall:
            continue
        box = jitter_box(image.box_xyxy(inst, width, height), controls.box_jitter, gen, width, height)
        name = inst.label if image.mode == "class" else lang.head_noun(inst.label)
        if style == "od":
            label = name
        elif style == "drc":
            phrase = variants[inst.index][-1].description
            label = phrase[2:] if phrase.lower().startswith("a ") else phrase
            label = lang.shorten_sentence(label, 6).lower()
        else:
            label = lang.with_article(name)
        out.append({"box_xyxy": [int(v) for v in box], "label": label})
    count = int(controls.hallucinations) + int(
        gen.random() < controls.hallucinations - int(controls.hallucinations)
    )
    for _ in range(count):
        name = lang.INVENTED_OBJECTS[int(gen.integers(0, len(lang.INVENTED_OBJECTS)))][0]
        label = name if style != "kosmos" else lang.with_article(name)
        out.append({"box_xyxy": [int(v) for v in random_box(gen, width, height)], "label": label})
    return out


def kosmos_caption(detections: list[dict[str, Any]]) -> str:
    phrases = [d["label"] for d in detections]
    if not phrases:
        return "An image of a scene."
    listing = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"An image of {listing}."


# --------------------------------------------------------------------------------------------------
# The app


class VisionServer:
    """One simulated NimbRo vision server (a model family)."""

    def __init__(self, family: str, ctx: SimContext, token: str | None = None) -> None:
        if family not in FLAVORS:
            raise ValueError(f"unknown model family {family!r} (known: {sorted(FLAVORS)})")
        self.family = family
        self.ctx = ctx
        self.token = token
        self.flavor: str | None = None
        # sam2_realtime tracker state: (object id, relative xyxy box) per stored prompt.
        self.tracker: list[tuple[int, np.ndarray]] | None = None

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
        return AbortableApp(Starlette(routes=routes))

    # ---------------------------------------------------------------- plumbing
    def _auth(self, request: Request) -> None:
        header = request.headers.get("authorization")
        if not header:
            raise VisionError(401, "Not authenticated")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise VisionError(401, "Invalid authentication credentials")
        if self.token is not None and credentials.strip() != self.token:
            raise VisionError(403, "Invalid token")

    async def _json(self, request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise VisionError(422, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise VisionError(422, "request body must be a JSON object")
        return body

    async def _handle(self, request: Request, handler, *, needs_auth: bool = True) -> Response:
        timer = RequestTimer(self.ctx, self.family, request)
        timer.model = self.flavor
        try:
            if needs_auth:
                self._auth(request)
            response = await handler(request, timer)
        except VisionError as exc:
            timer.finish(exc.status, exc.detail)
            return JSONResponse(_detail(exc.status, exc.detail), status_code=exc.status)
        timer.finish(None if timer.fault == "connection_drop" else response.status_code)
        return response

    def _identify_all(self, images: Any, field: str = "images") -> list[Identified]:
        if isinstance(images, str):
            images = [images]
        if not isinstance(images, list) or not images:
            raise VisionError(422, f"'{field}' must be a non-empty list of base64 images")
        out = []
        for i, value in enumerate(images):
            try:
                data = decode_b64_image(value, f"{field}[{i}]")
                out.append(self.ctx.world.identify(data))
            except ValueError as exc:
                raise VisionError(400, f"{field}[{i}]: {exc}") from None
            except UnknownImageError as exc:
                raise VisionError(400, f"{field}[{i}]: simulator: {exc}") from None
        return out

    def _require_model(self) -> None:
        if self.flavor is None:
            raise VisionError(503, "No model loaded. POST /load first.")

    async def _faulted(self, request: Request, timer: RequestTimer, key: str):
        plan = plan_request(self.ctx, self.family, self.flavor, key, allowed=VISION_FAULTS)
        timer.attempt, timer.fault = plan.attempt, plan.fault
        response = await http_fault_response(plan, request, _detail)
        if response is None:
            delay = plan.latency_s + (
                plan.controls.faults.stall_seconds if plan.fault == "stall_first_chunk" else 0.0
            )
            if delay > 0:
                await asyncio.sleep(delay)
        return plan, response

    @staticmethod
    def _respond(plan, content: dict[str, Any]) -> Response:
        if plan.fault == "truncated_stream":
            return truncated_json_response(content)
        return JSONResponse(content)

    # ---------------------------------------------------------------- common routes
    async def health(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            return JSONResponse({"status": "ok", "cuda_available": False})

        return await self._handle(request, handler, needs_auth=False)

    async def model_flavors(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            return JSONResponse({"flavors": list(FLAVORS[self.family])})

        return await self._handle(request, handler)

    async def status(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            if self.family == "sam2_realtime" or self.flavor is None:
                # The real sam2_realtime server never stores its flavor (spec §7 caveat): always null.
                return JSONResponse({"model_family": self.family, "status": None})
            return JSONResponse(
                {
                    "model_family": self.family,
                    "status": {"flavor": self.flavor, "device": "cpu", "simulated": True},
                }
            )

        return await self._handle(request, handler)

    async def load(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            body = await self._json(request)
            flavor = body.get("flavor")
            if flavor not in FLAVORS[self.family]:
                raise VisionError(400, f"Unknown flavor {flavor!r}; available: {list(FLAVORS[self.family])}")
            self.flavor = flavor
            self.tracker = None  # loading re-instantiates the model: tracker state is lost (spec §7)
            timer.model = flavor
            return JSONResponse({"loaded_model": "Model", "flavor": flavor})

        return await self._handle(request, handler)

    async def unload(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            self.flavor = None
            self.tracker = None
            return JSONResponse({"unloaded": True})

        return await self._handle(request, handler)

    async def infer(self, request: Request) -> Response:
        handlers = {
            "mmgroundingdino": self._infer_gdino,
            "sam2_realtime": self._infer_sam2,
            "florence2": self._infer_florence,
            "kosmos2": self._infer_kosmos,
        }
        return await self._handle(request, handlers[self.family])

    # ---------------------------------------------------------------- mmgroundingdino
    async def _infer_gdino(self, request: Request, timer: RequestTimer) -> Response:
        self._require_model()
        body = await self._json(request)
        identified = await asyncio.to_thread(self._identify_all, body.get("images"))
        params = body.get("inference_parameters")
        if isinstance(params, dict):
            params = [params] * len(identified)
        if not isinstance(params, list) or len(params) not in (1, len(identified)):
            raise VisionError(422, "'inference_parameters' must be a list with one entry per image")
        if len(params) == 1:
            params = params * len(identified)
        parsed = []
        for i, p in enumerate(params):
            prompts = p.get("prompts") if isinstance(p, dict) else None
            if not isinstance(prompts, list) or not all(isinstance(s, str) and s for s in prompts):
                raise VisionError(
                    422, f"inference_parameters[{i}].prompts must be a list of non-empty strings"
                )
            parsed.append(
                (
                    prompts,
                    float(p.get("min_confidence") or 0.0),
                    p.get("nms_iou"),
                    p.get("overdetect_factor", 1.0),
                )
            )
        key = "+".join(item.image.key for item in identified)
        timer.image_key = key
        plan, faulted = await self._faulted(request, timer, key)
        if faulted is not None:
            return faulted
        detections = []
        for item, (prompts, min_conf, nms_iou, factor) in zip(identified, parsed, strict=True):
            raw = ground_prompts(item, prompts, plan.controls, (*plan.parts, item.image.key))
            selected = select_detections(
                raw, prompts, min_confidence=min_conf, nms_iou=nms_iou, overdetect_factor=factor
            )
            detections.append(gdino_response(selected)["artifact"]["detections"][0])
        return self._respond(plan, {"artifact": {"detections": detections, "model": "mmgroundingdino"}})

    # ---------------------------------------------------------------- sam2_realtime
    def _masks_for_frame(self, item: Identified) -> list[tuple[int, np.ndarray]]:
        assert self.tracker is not None
        scale = np.array([item.width, item.height, item.width, item.height], dtype=np.float64)
        return [
            (object_id, mask_for_box(item.image, item.width, item.height, rel * scale))
            for object_id, rel in self.tracker
        ]

    async def update(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            self._require_model()
            body = await self._json(request)
            identified = (await asyncio.to_thread(self._identify_all, body.get("image"), "image"))[0]
            prompts = body.get("prompts")
            if not isinstance(prompts, list):
                raise VisionError(422, "'prompts' must be a list")
            size = np.array(
                [identified.width, identified.height, identified.width, identified.height], dtype=np.float64
            )
            tracker: list[tuple[int, np.ndarray]] = []
            for i, prompt in enumerate(prompts):
                if not isinstance(prompt, dict) or not isinstance(prompt.get("object_id"), int):
                    raise VisionError(422, f"prompts[{i}] must be an object with an integer object_id")
                box = self._prompt_box(prompt, i, identified)
                tracker.append((prompt["object_id"], box / size))
            timer.image_key = identified.image.key
            plan, faulted = await self._faulted(request, timer, identified.image.key)
            if faulted is not None:
                return faulted
            self.tracker = tracker  # the real server always resets and adds every prompt (spec §4.3)
            frames = await asyncio.to_thread(lambda: [self._masks_for_frame(identified)])
            return self._respond(plan, sam2_response(frames))

        return await self._handle(request, handler)

    @staticmethod
    def _prompt_box(prompt: dict[str, Any], i: int, item: Identified) -> np.ndarray:
        bbox = prompt.get("bbox")
        if bbox is not None:
            if (
                not isinstance(bbox, list)
                or len(bbox) != 4
                or not all(isinstance(v, (int, float)) for v in bbox)
            ):
                raise VisionError(422, f"prompts[{i}].bbox must be [x1, y1, x2, y2]")
            return np.asarray(bbox, dtype=np.float64)
        points = prompt.get("points")
        labels = prompt.get("labels") or [1] * len(points or [])
        if not isinstance(points, list) or not points:
            raise VisionError(422, f"prompts[{i}] needs a bbox or points")
        positive = [p for p, label in zip(points, labels, strict=False) if label] or points
        x, y = float(positive[0][0]), float(positive[0][1])
        for inst in item.image.instances:  # the smallest GT box containing the first positive point
            box = item.image.box_xyxy(inst, item.width, item.height)
            if box[0] <= x <= box[2] and box[1] <= y <= box[3]:
                return box
        r = 0.05 * min(item.width, item.height)
        return np.array([x - r, y - r, x + r, y + r])

    async def _infer_sam2(self, request: Request, timer: RequestTimer) -> Response:
        self._require_model()
        body = await self._json(request)
        identified = await asyncio.to_thread(self._identify_all, body.get("images"))
        key = "+".join(item.image.key for item in identified)
        timer.image_key = key
        plan, faulted = await self._faulted(request, timer, key)
        if faulted is not None:
            return faulted
        if self.tracker is None:  # never initialised: an empty tracks list (spec §4.3)
            return self._respond(plan, sam2_response([]))
        frames = await asyncio.to_thread(lambda: [self._masks_for_frame(item) for item in identified])
        return self._respond(plan, sam2_response(frames))

    async def reset(self, request: Request) -> Response:
        async def handler(request: Request, timer: RequestTimer) -> Response:
            self.tracker = None
            return JSONResponse({"reset": True})

        return await self._handle(request, handler)

    # ---------------------------------------------------------------- florence2 / kosmos2
    def _baseline_common(self, body: dict[str, Any], identified: list[Identified]) -> list[Any]:
        prompts = body.get("prompts")
        if not isinstance(prompts, list) or len(prompts) not in (1, len(identified)):
            raise VisionError(422, "'prompts' must be a list with one prompt (or one per image)")
        return prompts * len(identified) if len(prompts) == 1 else prompts

    async def _infer_florence(self, request: Request, timer: RequestTimer) -> Response:
        self._require_model()
        body = await self._json(request)
        identified = await asyncio.to_thread(self._identify_all, body.get("images"))
        prompts = self._baseline_common(body, identified)
        tasks = []
        for i, prompt in enumerate(prompts):
            task = prompt.get("task_prompt") if isinstance(prompt, dict) else None
            if task not in ("<OD>", "<DENSE_REGION_CAPTION>", *FLORENCE_CAPTION_TASKS):
                raise VisionError(
                    500, f"prompts[{i}]: task_prompt {task!r} is not supported by the simulator"
                )
            tasks.append(task)
        key = "+".join(item.image.key for item in identified)
        timer.image_key = key
        plan, faulted = await self._faulted(request, timer, key)
        if faulted is not None:
            return faulted
        detections, captions = [], []
        for item, task in zip(identified, tasks, strict=True):
            parts = (*plan.parts, item.image.key)
            if task in FLORENCE_CAPTION_TASKS:
                found = baseline_detections(item, plan.controls, parts, "kosmos")
                detections.append([])
                captions.append(kosmos_caption(found))
            else:
                detections.append(
                    baseline_detections(item, plan.controls, parts, "od" if task == "<OD>" else "drc")
                )
                captions.append(None)
        return self._respond(
            plan, {"artifact": {"detections": detections, "captions": captions, "model": "florence2"}}
        )

    async def _infer_kosmos(self, request: Request, timer: RequestTimer) -> Response:
        self._require_model()
        body = await self._json(request)
        identified = await asyncio.to_thread(self._identify_all, body.get("images"))
        prompts = self._baseline_common(body, identified)
        if not all(isinstance(p, str) for p in prompts):
            raise VisionError(422, "kosmos2 prompts must be strings")
        key = "+".join(item.image.key for item in identified)
        timer.image_key = key
        plan, faulted = await self._faulted(request, timer, key)
        if faulted is not None:
            return faulted
        detections, captions = [], []
        for item in identified:
            found = baseline_detections(item, plan.controls, (*plan.parts, item.image.key), "kosmos")
            detections.append(found)
            captions.append(kosmos_caption(found))
        return self._respond(
            plan, {"artifact": {"detections": detections, "captions": captions, "model": "kosmos2"}}
        )
