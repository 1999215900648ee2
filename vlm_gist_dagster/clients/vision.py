"""Client of the NimbRo Vision Servers HTTP API (docs/protocol/pipeline.md §3, §4.2–4.3, §6): MM-Grounding-DINO,
SAM2-realtime, Florence-2 and Kosmos-2, one server per model family.

* **Routes:** ``/health`` (open), ``/model_flavors``, ``/status``, ``/load``, ``/unload``, ``/infer``;
  sam2_realtime adds ``/update`` and ``/reset``. Every route but ``/health`` sends
  ``Authorization: Bearer <token>``, the token read from ``$NIMBRO_VISION_API_KEY`` (a server without
  ``NIMBRO_VISION_SERVER_TOKEN`` accepts any value, but still requires the header).
* **Loading:** :meth:`VisionClient.ensure_loaded` does ``GET /status`` and ``POST /load`` only when the
  family or flavour differs, **once per client** (= per run), not before every call as the paper's
  ROS client does. Caveat (docs/protocol/pipeline.md gotcha 16): sam2_realtime's ``/status`` always reports ``null``, so the
  paper reloaded SAM2 before every ``/update``; we load it once per run. Loading only re-creates the
  model, and every ``/update`` resets all tracks anyway, so results are the same. When a server
  answers 503 ("no model loaded", e.g. after a restart) the client loads again before retrying.
* **Images** are re-encoded to plain 3-channel 8-bit (PNG, or JPEG for JPEG input) before sending
  (:func:`vision_image`): grayscale, RGBA, palette and 16-bit inputs would otherwise fail on the
  server's ``cvtColor(RGB2BGR)`` (docs/protocol/pipeline.md gotcha 15), and the paper's client then retried forever.
* **Retries** are bounded (:class:`~.transport.RetryPolicy`): 429 / 5xx / connection errors / a
  truncated or non-JSON 200 body are retried with backoff, then
  :class:`~.errors.TransportRetriesExhausted`; 401/403 raise :class:`~.errors.AuthenticationError` at
  once; other 4xx raise :class:`~.errors.ResponseError`.
* **SAM2 state:** ``/update`` followed by ``/infer`` (track) must not interleave with another image's
  ``/update``; :meth:`VisionClient.segment` runs the pair under a lock. With a ``lock_dir`` the pair
  (and any ``/load``) also holds the server's :class:`~.server_lock.ServerLease`, so sequences of other
  processes never interleave either, and a ``/load`` never rebuilds the tracker another run is using.

Server URLs: :func:`vision_server_urls` — ``settings/vision_servers.json`` (defaults as the paper's
client: mmgroundingdino ``http://localhost:9000``, sam2_realtime ``:9001``, florence2 ``:9003``;
kosmos2 ``:9004`` is our choice, the paper's port being unknown), each overridable by
``VLM_GIST_VISION_URL_<FAMILY>`` (family upper-cased).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

from .. import paths
from ..protocol.baselines import BaselineOutput, baseline_request, parse_baseline_response
from ..protocol.detection import gdino_request, parse_gdino_response
from ..protocol.detections import Detections
from ..protocol.images import PreparedImage, prepare_image
from ..protocol.segmentation import Sam2Track, parse_sam2_response, sam2_track_request, sam2_update_request
from ..protocol.settings import BaselineSettings
from .base import ServiceClient
from .cache import ResponseCache
from .errors import ConfigurationError, ResponseError, get_logger, register_secret
from .server_lock import ServerLease
from .transport import RetryPolicy, json_body, transport_error

__all__ = [
    "DEFAULT_VISION_URLS",
    "TOKEN_ENV",
    "VISION_FAMILIES",
    "VisionClient",
    "vision_image",
    "vision_server_urls",
    "vision_url_env_var",
]

log = get_logger("vlm_gist_dagster.clients.vision")

VISION_FAMILIES: tuple[str, ...] = ("mmgroundingdino", "sam2_realtime", "florence2", "kosmos2", "sam3")
TOKEN_ENV = "NIMBRO_VISION_API_KEY"
#: Built-in defaults (used when ``settings/vision_servers.json`` is missing or lacks a family).
DEFAULT_VISION_URLS: dict[str, str] = {
    "mmgroundingdino": "http://localhost:9000",
    "sam2_realtime": "http://localhost:9001",
    "florence2": "http://localhost:9003",
    "kosmos2": "http://localhost:9004",  # ours: the paper's kosmos2 port is not known (docs/protocol/pipeline.md §12)
    "sam3": "http://localhost:9005",  # ours: a new family (``vlm-gist vision-serve --family sam3``)
}
VISION_URL_ENV_PREFIX = "VLM_GIST_VISION_URL_"


def vision_url_env_var(family: str) -> str:
    """``VLM_GIST_VISION_URL_<FAMILY>``.

    >>> vision_url_env_var("sam2_realtime")
    'VLM_GIST_VISION_URL_SAM2_REALTIME'
    """
    return VISION_URL_ENV_PREFIX + family.upper()


def vision_server_urls(
    settings_file: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    missing_ok: bool = False,
) -> dict[str, str]:
    """Family → base URL: built-in defaults, then the settings file's ``servers``, then the environment.
    Without ``settings_file``, ``<settings dir>/vision_servers.json`` is read when it exists; a
    ``settings_file`` named explicitly must exist unless ``missing_ok``."""
    env = os.environ if env is None else env
    urls = dict(DEFAULT_VISION_URLS)
    path = Path(settings_file) if settings_file is not None else paths.settings_dir() / "vision_servers.json"
    if (settings_file is not None and not missing_ok) or path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"{path}: cannot read the vision server settings ({exc})") from None
        servers = data.get("servers") if isinstance(data, Mapping) else None
        if not isinstance(servers, Mapping):
            raise ConfigurationError(f"{path}: expected an object 'servers' mapping model family → base URL")
        for family, url in servers.items():
            if family not in VISION_FAMILIES:
                raise ConfigurationError(
                    f"{path}: field 'servers.{family}': unknown model family (known: {list(VISION_FAMILIES)})"
                )
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ConfigurationError(
                    f"{path}: field 'servers.{family}' must be an http(s) URL, got {url!r}"
                )
            urls[family] = url
    for family in VISION_FAMILIES:
        override = env.get(vision_url_env_var(family))
        if override:
            if not override.startswith(("http://", "https://")):
                raise ConfigurationError(
                    f"${vision_url_env_var(family)} must be an http(s) URL, got {override!r}"
                )
            urls[family] = override
    return {family: url.rstrip("/") for family, url in urls.items()}


def _is_16bit_png(data: bytes) -> bool:
    # PNG signature, then the IHDR chunk: bit depth is byte 24. Pillow reports 48-bit RGB PNGs as mode
    # "RGB", so protocol.images' plain-RGB check alone would send them unchanged.
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 and data[24] == 16


def vision_image(source: str | os.PathLike[str] | bytes | np.ndarray | PreparedImage) -> PreparedImage:
    """The image as a vision server must receive it: 3-channel, 8-bit, JPEG or PNG, never resized
    (the benchmark's detect run sends full resolution, docs/protocol/pipeline.md §4.1 ``png_max_pixels`` forced None)."""
    if isinstance(source, PreparedImage):
        prepared = source
    elif isinstance(source, np.ndarray):
        return prepare_image(source, None)
    else:
        prepared = prepare_image(
            Path(source) if isinstance(source, (str, os.PathLike)) else bytes(source), None, ensure_rgb=True
        )
    if _is_16bit_png(prepared.data):
        decoded = cv2.imdecode(np.frombuffer(prepared.data, np.uint8), cv2.IMREAD_COLOR)  # 3-channel 8-bit
        if decoded is None:
            raise ResponseError("cannot decode a 16-bit PNG for re-encoding")
        return prepare_image(decoded, None, name="image.png")
    if prepared.encoding == "original" and isinstance(source, PreparedImage):
        # An already prepared image (e.g. the VLM's copy) may be grayscale: re-check it.
        return prepare_image(prepared.data, None, ensure_rgb=True)
    return prepared


VisionImage = str | os.PathLike[str] | bytes | np.ndarray | PreparedImage
"""An image for the convenience methods: a file path (as the paper's client takes it), the file's bytes,
a BGR array, or a prepared image. Always sent through :func:`vision_image` (3-channel, 8-bit)."""


def _vision_b64(image: VisionImage) -> str:
    return vision_image(image).base64


class VisionClient(ServiceClient):
    """Async client of one NimbRo vision server (one model family).

    ``base_url`` defaults to :func:`vision_server_urls` for the family. ``retry`` bounds the transport
    retries (default 4, i.e. 5 tries); ``timeout_s`` is httpx's read timeout (inference on a slow
    server can take long); ``concurrency`` bounds requests in flight (default 1: the servers run one
    model instance). With a ``cache``, :meth:`infer_cached` and :meth:`segment_cached` answer repeated
    requests from it (keyed by the server's identity, the route, the flavour and the body) and load the
    model on the first miss only. With a ``lock_dir``, SAM2 sequences hold the server's cross-process
    :class:`~.server_lock.ServerLease` there.
    """

    default_retry = RetryPolicy(max_retries=4)

    def __init__(
        self,
        family: str,
        base_url: str | None = None,
        *,
        token_env: str = TOKEN_ENV,
        env: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        cache: ResponseCache | None = None,
        service_identity: str | None = None,
        timeout_s: float | None = 300.0,
        connect_timeout: float = 10.0,
        concurrency: int = 1,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        lock_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if family not in VISION_FAMILIES:
            raise ConfigurationError(
                f"unknown vision model family {family!r} (known: {list(VISION_FAMILIES)})"
            )
        super().__init__(
            retry=retry,
            cache=cache,
            service_identity=service_identity,
            concurrency=concurrency,
            connect_timeout=connect_timeout,
            read_timeout=timeout_s,
            http_client=http_client,
            sleep=sleep,
        )
        self.family = family
        self.env = os.environ if env is None else env
        self.base_url = (base_url or vision_server_urls(env=self.env)[family]).rstrip("/")
        self.token_env = token_env
        self._sam2_lock: asyncio.Lock | None = None
        self._load_lock: asyncio.Lock | None = None
        #: The flavour this client made sure is loaded (None: not yet, or the server lost it).
        self.loaded_flavor: str | None = None
        self._wanted_flavor: str | None = None
        #: Diagnostics: /load calls.
        self.loads = 0
        #: Exclusive use of a stateful server across processes (SAM2 only; None: this client's lock only).
        stateful = family == "sam2_realtime"
        self.lease = ServerLease(lock_dir, self.base_url) if lock_dir is not None and stateful else None

    @property
    def service(self) -> str:
        return f"{self.family} server at {self.base_url}"

    async def __aenter__(self) -> VisionClient:
        return self

    # ---------------------------------------------------------------- plumbing
    def _headers(self) -> dict[str, str]:
        token = (self.env.get(self.token_env) or "").strip()
        if not token:
            raise ConfigurationError(
                f"{self.service}: the Bearer token is read from ${self.token_env}, which is not set; export it "
                "(any non-empty value works when the server has no NIMBRO_VISION_SERVER_TOKEN)"
            )
        register_secret(token)
        return {"Authorization": f"Bearer {token}"}

    async def _request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        auth: bool = True,
        before_try: Callable[[], Awaitable[None]] | None = None,
    ) -> Any:
        """One API call with bounded transport retries; returns the parsed JSON body."""
        url = self.base_url + path
        headers = self._headers() if auth else {}

        async def send_once() -> Any:
            try:
                response = await self._client.request(method, url, json=body, headers=headers)
            except httpx.TransportError as exc:
                raise transport_error(exc, self.service, url) from None
            if response.status_code == 503 and path in ("/infer", "/update"):
                self.loaded_flavor = None  # "no model loaded": load again before the retry
            return json_body(response, self.service, f"{method} {path}", f"check ${self.token_env}")

        result, _ = await self.send(send_once, service=self.service, before_try=before_try)
        return result

    async def _reload_if_lost(self) -> None:
        if self._wanted_flavor is not None and self.loaded_flavor is None:
            await self.ensure_loaded(self._wanted_flavor)

    async def _model_request(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A call that needs the model; when the server answered 503 (no model loaded) the model is
        loaded again before the next try, within the same bounded retry budget."""
        result = await self._request("POST", path, body, before_try=self._reload_if_lost)
        if not isinstance(result, dict):
            raise ResponseError(
                f"{self.service}: POST {path} answered {type(result).__name__}, not a JSON object"
            )
        return result

    # ---------------------------------------------------------------- routes
    async def health(self) -> dict[str, Any]:
        """``GET /health`` (no token): ``{"status": "ok", "cuda_available": bool}``."""
        return await self._request("GET", "/health", auth=False)

    async def model_flavors(self) -> list[str]:
        body = await self._request("GET", "/model_flavors")
        flavors = body.get("flavors") if isinstance(body, dict) else None
        if not isinstance(flavors, list):
            raise ResponseError(f"{self.service}: /model_flavors lacks the list 'flavors'")
        return flavors

    async def status(self) -> dict[str, Any]:
        """``GET /status``: ``{"model_family": ..., "status": null | {"flavor": ..., ...}}``."""
        body = await self._request("GET", "/status")
        if not isinstance(body, dict):
            raise ResponseError(f"{self.service}: /status is not a JSON object")
        return body

    async def load(self, flavor: str) -> dict[str, Any]:
        """``POST /load {"flavor"}`` (unloads the previous model on the server)."""
        self.loads += 1
        body = await self._request("POST", "/load", {"flavor": flavor})
        self.loaded_flavor = flavor
        return body

    async def ensure_loaded(self, flavor: str) -> bool:
        """Make sure ``flavor`` is loaded; True when a ``/load`` was sent. Once per client: later calls
        with the same flavour send nothing (see the module docstring for sam2_realtime)."""
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:
            self._wanted_flavor = flavor
            if self.loaded_flavor == flavor:
                return False
            status = await self.status()
            family = status.get("model_family")
            if family != self.family:
                raise ResponseError(
                    f"{self.service}: the server serves model family {family!r}, expected {self.family!r}; "
                    f"check the URL (settings/vision_servers.json or ${vision_url_env_var(self.family)})"
                )
            current = status.get("status")
            if isinstance(current, dict) and current.get("flavor") == flavor:
                self.loaded_flavor = flavor
                return False
            await self.load(flavor)
            return True

    async def unload(self) -> dict[str, Any]:
        body = await self._request("POST", "/unload")
        self.loaded_flavor = None
        return body

    async def infer(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /infer`` with a family-specific body (built by ``protocol.detection`` /
        ``protocol.segmentation`` / ``protocol.baselines``)."""
        return await self._model_request("/infer", body)

    async def update(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /update`` (sam2_realtime): initialise the tracker (docs/protocol/pipeline.md §4.3)."""
        self._require_sam2("update")
        return await self._model_request("/update", body)

    async def reset(self) -> dict[str, Any]:
        """``POST /reset`` (sam2_realtime): ``{"reset": true}``."""
        self._require_sam2("reset")
        return await self._request("POST", "/reset", {})

    def _require_sam2(self, what: str) -> None:
        if self.family != "sam2_realtime":
            raise ConfigurationError(f"/{what} exists only on sam2_realtime servers, not on {self.family}")

    # ---------------------------------------------------------------- conveniences (protocol bodies)
    async def detect(
        self,
        image: VisionImage,
        prompts: Sequence[str],
        *,
        flavor: str = "large",
        min_confidence: float = 0.0,
        nms_iou: float | None = None,
        overdetect_factor: float | None = 1.0,
    ) -> Detections:
        """MM-Grounding-DINO on one image (docs/protocol/pipeline.md §4.2)."""
        await self.ensure_loaded(flavor)
        body = gdino_request(
            _vision_b64(image),
            prompts,
            min_confidence=min_confidence,
            nms_iou=nms_iou,
            overdetect_factor=overdetect_factor,
        )
        return parse_gdino_response(await self.infer(body), prompts=prompts)

    async def segment(
        self,
        image: VisionImage,
        boxes_xyxy: Sequence[Sequence[int]],
        *,
        flavor: str = "large",
        track: bool = True,
    ) -> tuple[list[Sam2Track], list[Sam2Track] | None]:
        """SAM2 ``/update`` with one box prompt per detection, then (``track``) ``/infer`` on the same
        image (docs/protocol/pipeline.md §4.3–4.4): (update tracks, track tracks or None). Runs under a lock so two images'
        calls never interleave on the stateful server."""
        b64 = _vision_b64(image)
        answer = await self._update_and_track(
            flavor, sam2_update_request(b64, boxes_xyxy), sam2_track_request(b64) if track else None
        )
        tracked = parse_sam2_response(answer["track"]) if answer["track"] is not None else None
        return parse_sam2_response(answer["update"]), tracked

    async def _update_and_track(
        self, flavor: str, update_body: Mapping[str, Any], track_body: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """``/update`` then (with a ``track_body``) ``/infer`` on the same image, under a lock so two
        images' calls never interleave on the stateful server: ``{"update": ..., "track": ... | None}``."""
        self._require_sam2("update")
        if self._sam2_lock is None:
            self._sam2_lock = asyncio.Lock()
        async with self._sam2_lock:
            if self.lease is None:
                await self.ensure_loaded(flavor)
                updated = await self.update(update_body)
                tracked = await self.infer(track_body) if track_body is not None else None
                return {"update": updated, "track": tracked}
            async with self.lease.hold():
                self._adopt_server_state(flavor)
                try:
                    await self.ensure_loaded(flavor)
                    updated = await self.update(update_body)
                    tracked = await self.infer(track_body) if track_body is not None else None
                finally:
                    # What the server has now, for the next holder: the flavour this client loaded (None
                    # when a failure left it unknown, e.g. a 503 with no successful reload).
                    self.lease.record(self.loaded_flavor)
        return {"update": updated, "track": tracked}

    def _adopt_server_state(self, flavor: str) -> None:
        """Under the lease: what the last holder left on the server decides whether to ``/load``.
        Another flavour since this client's own load → load again; this flavour, used moments ago by
        another client → loaded, do not rebuild the tracker it is using; nothing recent → this client's
        own knowledge (one load per client)."""
        assert self.lease is not None
        state = self.lease.state()
        if state is None:
            return
        if state.flavor != self.loaded_flavor and self.loaded_flavor is not None:
            self.loaded_flavor = None
        if self.loaded_flavor is None and state.flavor == flavor and state.in_use():
            self.loaded_flavor = flavor

    # ---------------------------------------------------------------- cached calls (the stages use these)
    async def infer_cached(self, flavor: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``/infer`` with ``body`` on ``flavor``, answered from the cache when it was asked before; the
        model is loaded on a miss only."""

        async def call() -> dict[str, Any]:
            await self.ensure_loaded(flavor)
            return await self.infer(body)

        key = self.cache_key("vision", self.base_url + "/infer", flavor, dict(body))
        return await self.cached(key, call)

    async def segment_cached(
        self, flavor: str, update_body: Mapping[str, Any], track_body: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """SAM2 ``/update`` + ``/infer`` (see :meth:`segment`) cached as one entry:
        ``{"update": ..., "track": ... | None}``."""
        body = {"update": dict(update_body), "track": dict(track_body) if track_body else None}
        key = self.cache_key("vision", self.base_url, flavor, body, route="/update+/infer")
        return await self.cached(key, lambda: self._update_and_track(flavor, update_body, track_body))

    async def baseline(self, image: VisionImage, settings: BaselineSettings) -> BaselineOutput:
        """Florence-2 / Kosmos-2 on one image with the paper's baseline settings (docs/protocol/pipeline.md §6)."""
        if settings.model_name != self.family:
            raise ConfigurationError(
                f"baseline settings are for {settings.model_name!r}, this client talks to {self.family!r}"
            )
        await self.ensure_loaded(settings.model_flavor)
        body = baseline_request(_vision_b64(image), settings)
        return parse_baseline_response(await self.infer(body), model=settings.model_name)  # type: ignore[arg-type]
