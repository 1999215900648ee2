"""Independent stub servers for tests that need "a real endpoint" that is not our simulator.

Plain ``http.server`` in a thread on 127.0.0.1, written against the public wire formats (OpenAI chat
completions and embeddings, the NimbRo vision server API), sharing no code with ``vlm_gist_dagster.sim``.
Every request is recorded (``requests``: method, path, parsed JSON body) so tests count calls at the
server. Answers are recognisable: every text holds :data:`MARK`, every vector has :data:`STUB_DIM`
dimensions (the simulator's have 384).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

MARK = "STUBBED"
STUB_DIM = 7


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    body: Any


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None
    sse: list[str] | None = None


Route = Callable[[str, str, Any], Reply]


class StubServer:
    """``route(method, path, body) -> Reply`` served on ``url`` (use as a context manager)."""

    def __init__(self, route: Route, port: int = 0) -> None:
        self.route = route
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with stub._lock:
                    stub.requests.append(Seen(self.command, self.path, body))
                reply = stub.route(self.command, self.path, body)
                if reply.sse is not None:
                    data = "".join(f"{line}\n\n" for line in reply.sse).encode()
                    kind = "text/event-stream"
                else:
                    data = json.dumps(reply.body).encode()
                    kind = "application/json"
                self.send_response(reply.status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def seen(self, path: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.path == path]


def stub_vector(text: str) -> list[float]:
    """A deterministic unit vector of :data:`STUB_DIM` dimensions for ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    vector = np.frombuffer(digest[: 4 * STUB_DIM], dtype="<u4").astype(np.float64) / 2**32 - 0.5
    return (vector / np.linalg.norm(vector)).tolist()


def _user_text(body: dict) -> tuple[str, bool]:
    """The user message's text and whether it carries an image."""
    texts, image = [], False
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    texts.append(part["text"])
                image = image or part.get("type") == "image_url"
    return "\n".join(texts), image


def openai_route(answer: Callable[[dict], str] | None = None) -> Route:
    """``/v1/chat/completions`` (JSON or SSE, as the request asks) and ``/v1/embeddings``. The default
    answer describes an image as two stub objects, and defines any term as a stub sentence naming the
    model asked."""

    def default(body: dict) -> str:
        text, image = _user_text(body)
        if image:
            return json.dumps(
                [
                    {"object_name": "stubbed lamp", "description": f"a {MARK} lamp"},
                    {"object_name": "stubbed crate", "description": f"a {MARK} crate"},
                ]
            )
        return (
            f"{MARK} definition by {body.get('model')} of {hashlib.sha256(text.encode()).hexdigest()[:12]}."
        )

    reply = answer or default

    def route(method: str, path: str, body: Any) -> Reply:
        if path.endswith("/embeddings"):
            data = [
                {"object": "embedding", "index": i, "embedding": stub_vector(t)}
                for i, t in enumerate(body["input"])
            ]
            return Reply(200, {"object": "list", "data": data, "usage": {"prompt_tokens": len(data)}})
        if not path.endswith("/chat/completions"):
            return Reply(404, {"error": {"message": f"no route {path}"}})
        content = reply(body)
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if body.get("stream"):
            delta = {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
            end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
            return Reply(
                200,
                sse=[
                    ": keep-alive",
                    "data: " + json.dumps(delta),
                    "data: " + json.dumps(end),
                    "data: [DONE]",
                ],
            )
        message = {"role": "assistant", "content": content}
        return Reply(
            200,
            {
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            },
        )

    return route


def _mask_png(height: int, width: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.full((max(height, 1), max(width, 1)), 255, dtype=np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def vision_route(family: str, fail: Callable[[str, Any], bool] | None = None) -> Route:
    """A NimbRo vision server of ``family`` with one model: MM-Grounding-DINO finds every prompt as a
    box in the image's top-left corner; SAM2 (stateful, like the real one) masks each prompt box whole.
    ``fail(path, body)`` True answers HTTP 500 (a permanent server error)."""
    state: dict[str, Any] = {"loaded": None, "tracks": []}

    def route(method: str, path: str, body: Any) -> Reply:
        if fail is not None and fail(path, body):
            return Reply(500, {"detail": "stub: internal server error"})
        if path == "/status":
            status = (
                None
                if family == "sam2_realtime"
                else ({"flavor": state["loaded"]} if state["loaded"] else None)
            )
            return Reply(200, {"model_family": family, "status": status})
        if path == "/load":
            state["loaded"] = body["flavor"]
            return Reply(200, {"loaded": body["flavor"]})
        if family == "mmgroundingdino" and path == "/infer":
            prompts = body["inference_parameters"][0]["prompts"]
            found = [
                {"box_xyxy": [2 + 3 * k, 2 + 3 * k, 40 + 3 * k, 30 + 3 * k], "confidence": 0.9, "prompt": p}
                for k, p in enumerate(prompts)
            ]
            return Reply(200, {"artifact": {"detections": [found]}})
        if family == "sam2_realtime" and path == "/update":
            state["tracks"] = [
                {
                    "track_id": p["object_id"],
                    "box_xyxy": p["bbox"],
                    "mask": _mask_png(p["bbox"][3] - p["bbox"][1], p["bbox"][2] - p["bbox"][0]),
                }
                for p in body["prompts"]
            ]
            return Reply(200, {"artifact": {"tracks": [state["tracks"]]}})
        if family == "sam2_realtime" and path == "/infer":
            return Reply(200, {"artifact": {"tracks": [state["tracks"]] * len(body["images"])}})
        return Reply(404, {"detail": f"no route {path}"})

    return route
