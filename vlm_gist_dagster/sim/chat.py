"""The simulated OpenAI-compatible server: ``POST /v1/chat/completions`` (JSON and SSE),
``GET /v1/models``, ``POST /v1/embeddings``; the same under ``/api/v1`` as OpenRouter serves them.

As strict as the providers for what the benchmark and ``nimbro-api`` send:

* **Auth:** ``Authorization: Bearer <key>``; a missing or malformed header, or a wrong key when the
  simulator has one, is OpenAI's 401 with its texts.
* **Requests** are validated by the pydantic models of :mod:`.chat_requests` (types, ranges, roles,
  content parts, ``stream_options`` only with ``stream``): a bad body is a 400 naming the field.
  Images must be ``data:`` URIs (the simulator works offline and cannot fetch URLs).
* **Models:** ``/v1/models`` lists every model the server answers: the simulated VLMs (presets, model
  files, models given controls at run time), the label-matching LLM, the embedding model and the
  validation VLM (:data:`AUXILIARY_MODELS`), and any ``served_models``. Any other model gets the
  provider's 404 (OpenAI's ``model_not_found`` body; vLLM's when the request looks like vLLM's).
* **Choices:** ``n`` > 1 returns ``n`` choices (OpenAI, vLLM and Mistral honour it, each a separate draw);
  OpenRouter's ``/api/v1`` path ignores it and answers one, as OpenRouter does.

What it answers follows the prompt (:mod:`.answers`): the paper's structured description, nimbro-api's
``label``/``description``/``box_2d`` one, scene descriptions, definitions for label matching
(:data:`DEFINITION_PROMPT_ITEM_PREFIX`), the validation VLM's answers (:mod:`.validation`), or a plain
answer. An image that is in none of the datasets is a 400 (``code: "sim_unknown_image"``): the simulator
cannot describe what it has no ground truth for. ``reasoning`` models also return reasoning text
(``message.reasoning``; ``reasoning_content`` for vLLM-style requests).

Every draw depends only on (seed, model, image key, attempt), see :mod:`.faults`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import answers
from . import language as lang
from ._http import (
    AbortableApp,
    FaultPlan,
    RequestTimer,
    SimContext,
    body_digest,
    http_fault_response,
    plan_request,
    settle,
    truncated_json_response,
)
from .chat_requests import (
    ChatRequest,
    EmbeddingsRequest,
    ErrorStyle,
    ValidationError,
    error_body,
    validation_message,
)
from .controls import FAULT_TYPES, ModelControls
from .embeddings import get_embedder
from .faults import hash64
from .validation import validation_answer, validation_invalid_token
from .world import Identified, ImageDecodeError, UnknownImageError

SERVER = "chat"

#: Models every simulator answers besides the simulated VLMs: the label-matching LLM and embedding model
#: of ``settings/label_matching/*.json`` (the paper's), and the validation VLM of
#: ``settings/validation/validation.json``.
AUXILIARY_MODELS: tuple[str, ...] = ("gpt-4o-2024-11-20", "text-embedding-3-large", "google/gemini-2.5-flash")

#: The fixed beginnings of the two definition prompts (docs/protocol/evaluation.md §1.5, exact strings).
DEFINITION_PROMPT_ITEM_PREFIX = (
    "Please define and describe the characteristic properties of the item category of the item described below "
    "in 5 sentences:\n"
)
DEFINITION_PROMPT_ITEM_SUFFIX = "\n\nYour description must not refer to the given task or include the words 'item', 'category' and 'context'."
DEFINITION_PROMPT_LABEL_PREFIX = (
    "Please define and describe the characteristic properties of the following term in 5 sentences: "
)

INVALID_JSON_TEXT = (
    "I'm sorry, but I cannot provide the list in the requested format right now. The image shows several "
    "objects, including furniture and everyday things."
)
KEEPALIVE = b": keep-alive\n\n"
EMBEDDING_FAULTS = frozenset(FAULT_TYPES) - {
    "stall_mid_stream",
    "invalid_json",
    "finish_length",
    "finish_content_filter",
}
_OPENAI_KEYS_URL = "https://platform.openai.com/account/api-keys"


class ChatError(Exception):
    """An error answered with the provider's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def response(self, style: ErrorStyle) -> JSONResponse:
        body = error_body(
            self.status, self.message, style=style, code=self.code, param=self.param, kind=self.kind
        )
        return JSONResponse(body, status_code=self.status)


@dataclass(frozen=True)
class Answer:
    """One choice of a completion."""

    text: str
    reasoning: str | None
    finish_reason: str
    completion_tokens: int
    reasoning_tokens: int


@dataclass(frozen=True)
class Completion:
    """All choices of one completion, and whether a client can use them (see :func:`.settle`)."""

    choices: tuple[Answer, ...]
    prompt_tokens: int
    usable: bool

    def usage(self) -> dict[str, Any]:
        completion = sum(a.completion_tokens for a in self.choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": sum(a.reasoning_tokens for a in self.choices)},
        }


def _definition_term(texts: list[str]) -> tuple[str, str | None] | None:
    for text in texts:
        if text.startswith(DEFINITION_PROMPT_ITEM_PREFIX):
            item = text[len(DEFINITION_PROMPT_ITEM_PREFIX) :]
            item = item.removesuffix(DEFINITION_PROMPT_ITEM_SUFFIX)
            return lang.parse_definition_item(item)
        if text.startswith(DEFINITION_PROMPT_LABEL_PREFIX):
            return lang.parse_definition_item(text[len(DEFINITION_PROMPT_LABEL_PREFIX) :])
    return None


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4) if text else 0


def _image_tokens(width: int, height: int) -> int:
    """OpenAI's high-detail estimate: 85 + 170 per 512-px tile after fitting 2048 and a 768-px short side."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def _data_uri_bytes(url: str, where: str) -> bytes:
    if not url.startswith("data:"):
        raise ChatError(
            400,
            f"Invalid '{where}': the simulator works offline and cannot fetch image URLs; send a "
            "data:image/...;base64 URI",
            code="invalid_image_url",
            param=where,
        )
    header, _, payload = url.partition(",")
    try:
        return base64.b64decode(payload, validate=False) if header.endswith(";base64") else payload.encode()
    except (binascii.Error, ValueError) as exc:
        raise ChatError(
            400, f"Invalid '{where}': not valid base64 ({exc})", code="invalid_image_url", param=where
        ) from None


@dataclass(frozen=True)
class _Parsed:
    """What the handlers need from a validated chat request."""

    request: ChatRequest
    texts: list[str]
    assistant_texts: tuple[str, ...]
    images: list[bytes]


def _parse_chat(request: ChatRequest) -> _Parsed:
    texts: list[str] = []
    assistant: list[str] = []
    images: list[bytes] = []
    for i, message in enumerate(request.messages):
        (assistant if message.role == "assistant" else texts).extend(message.texts())
        for j, url in enumerate(message.image_urls()):
            images.append(_data_uri_bytes(url, f"messages[{i}].content[{j}].image_url.url"))
    return _Parsed(request, texts, tuple(assistant), images)


# --------------------------------------------------------------------------------------------------
# The app


class ChatServer:
    """Builds the starlette app of the OpenAI-compatible simulator.

    ``served_models``: model names answered besides the simulated VLMs and :data:`AUXILIARY_MODELS`."""

    def __init__(
        self,
        ctx: SimContext,
        api_key: str | None = None,
        embedding_backend: str = "hashed",
        served_models: Iterable[str] = (),
    ) -> None:
        self.ctx = ctx
        self.api_key = api_key
        self.embedding_backend = embedding_backend
        self.extra_models = frozenset(served_models)

    def app(self) -> AbortableApp:
        # "/v1/..." as OpenAI, Mistral and vLLM serve it; "/api/v1/..." as OpenRouter does, so that a named
        # endpoint moved onto the simulator (``VLM_GIST_ENDPOINT_URL_OPENROUTER``) keeps its path.
        routes = [
            route
            for prefix, openrouter in (("/v1", False), ("/api/v1", True))
            for route in (
                Route(
                    f"{prefix}/chat/completions",
                    partial(self.chat_completions, openrouter=openrouter),
                    methods=["POST"],
                ),
                Route(f"{prefix}/models", self.models, methods=["GET"]),
                Route(f"{prefix}/embeddings", self.embeddings, methods=["POST"]),
            )
        ]
        return AbortableApp(Starlette(routes=routes))

    def served_models(self) -> list[str]:
        """Every model name this server answers (what ``/v1/models`` lists)."""
        return sorted(set(self.ctx.controls.get(SERVER).models) | set(AUXILIARY_MODELS) | self.extra_models)

    def _require_served(self, model: str, style: ErrorStyle) -> None:
        if model in self.served_models():
            return
        if style == "vllm":
            raise ChatError(404, f"The model `{model}` does not exist.")
        raise ChatError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )

    # ---------------------------------------------------------------- auth
    def _auth(self, request: Request) -> None:
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ChatError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
                f"{_OPENAI_KEYS_URL}.",
            )
        token = token.strip()
        if self.api_key is not None and token != self.api_key:
            shown = (
                f"{token[:3]}{'*' * (len(token) - 7)}{token[-4:]}" if len(token) >= 20 else "*" * len(token)
            )
            raise ChatError(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at {_OPENAI_KEYS_URL}.",
                code="invalid_api_key",
            )

    @staticmethod
    async def _body(request: Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ChatError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
                "valid JSON.)",
            ) from None

    # ---------------------------------------------------------------- /v1/models
    async def models(self, request: Request) -> Response:
        timer = RequestTimer(self.ctx, SERVER, request)
        try:
            self._auth(request)
        except ChatError as exc:
            timer.finish(exc.status, exc.message)
            return exc.response("openai")
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "vlm-gist-simulator"}
            for name in self.served_models()
        ]
        timer.finish(200)
        return JSONResponse({"object": "list", "data": data})

    # ---------------------------------------------------------------- /v1/embeddings
    async def embeddings(self, request: Request) -> Response:
        timer = RequestTimer(self.ctx, SERVER, request)
        try:
            self._auth(request)
            try:
                parsed = EmbeddingsRequest.model_validate(await self._body(request))
            except ValidationError as exc:
                param, message = validation_message(exc)
                raise ChatError(400, message, param=param) from None
            timer.model = parsed.model
            self._require_served(parsed.model, "openai")
        except ChatError as exc:
            timer.finish(exc.status, exc.message)
            return exc.response("openai")
        inputs = parsed.texts()
        key = f"text:{hash64(*inputs):016x}"
        timer.image_key = key
        plan = plan_request(
            self.ctx, SERVER, parsed.model, key, content=body_digest(request), allowed=EMBEDDING_FAULTS
        )
        timer.attempt, timer.fault = plan.attempt, plan.fault
        faulted = await http_fault_response(plan, request, lambda s, m: error_body(s, m))
        if faulted is not None:
            timer.finish(None if plan.fault == "connection_drop" else faulted.status_code)
            return faulted
        settle(self.ctx, plan)
        await self._sleep(
            plan.latency_s
            + (plan.controls.faults.stall_seconds if plan.fault == "stall_first_chunk" else 0.0)
        )
        vectors = await asyncio.to_thread(
            get_embedder(self.embedding_backend).embed, inputs, parsed.dimensions
        )
        tokens = sum(_tokens(t) for t in inputs)

        def encoded(vec: np.ndarray) -> list[float] | str:
            if parsed.encoding_format == "base64":  # little-endian float32, as OpenAI sends it
                return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")
            return [float(x) for x in vec]

        content = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encoded(vec)}
                for i, vec in enumerate(vectors)
            ],
            "model": parsed.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        timer.finish(200)
        if plan.fault == "truncated_stream":
            return truncated_json_response(content)
        return JSONResponse(content)

    # ---------------------------------------------------------------- /v1/chat/completions
    async def chat_completions(self, request: Request, *, openrouter: bool = False) -> Response:
        timer = RequestTimer(self.ctx, SERVER, request)
        style: ErrorStyle = "openai"
        try:
            self._auth(request)
            body = await self._body(request)
            if isinstance(body, dict) and "chat_template_kwargs" in body:
                style = "vllm"
            try:
                chat = ChatRequest.model_validate(body)
            except ValidationError as exc:
                param, message = validation_message(exc)
                raise ChatError(400, message, param=param) from None
            timer.model = chat.model
            self._require_served(chat.model, style)
            parsed = _parse_chat(chat)
            identified = await asyncio.to_thread(self._identify, parsed)
        except ChatError as exc:
            timer.finish(exc.status, exc.message)
            return exc.response(style)

        key = identified.image.key if identified is not None else f"text:{hash64(*parsed.texts):016x}"
        timer.image_key = key
        plan = plan_request(self.ctx, SERVER, chat.model, key, content=body_digest(request))
        timer.attempt, timer.fault = plan.attempt, plan.fault
        faulted = await http_fault_response(plan, request, lambda s, m: error_body(s, m, style=style))
        if faulted is not None:
            timer.finish(None if plan.fault == "connection_drop" else faulted.status_code)
            return faulted

        choices = 1 if openrouter else chat.choices  # OpenRouter ignores n
        completion = self._complete(parsed, identified, plan, choices, body_digest(request))
        settle(self.ctx, plan, usable=completion.usable)
        completion_id = f"chatcmpl-sim-{hash64(*plan.parts):016x}"
        created = int(time.time())
        if chat.stream:
            return StreamingResponse(
                self._sse(chat, completion, plan, completion_id, created, timer),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        stall = (
            plan.controls.faults.stall_seconds
            if plan.fault in ("stall_first_chunk", "stall_mid_stream")
            else 0.0
        )
        await self._sleep(plan.latency_s + stall)
        reasoning_key = "reasoning_content" if chat.vllm_style else "reasoning"
        content = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": chat.model,
            "system_fingerprint": "vlm-gist-sim",
            "choices": [
                {
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": answer.text,
                        **({reasoning_key: answer.reasoning} if answer.reasoning is not None else {}),
                    },
                    "finish_reason": answer.finish_reason,
                    "logprobs": None,
                }
                for i, answer in enumerate(completion.choices)
            ],
            "usage": completion.usage(),
        }
        timer.finish(200)
        if plan.fault == "truncated_stream":
            return truncated_json_response(content)
        return JSONResponse(content)

    # ---------------------------------------------------------------- answers
    def _identify(self, parsed: _Parsed) -> Identified | None:
        if not parsed.images:
            return None
        try:
            return self.ctx.world.identify(parsed.images[0])
        except UnknownImageError as exc:
            raise ChatError(400, f"simulator: {exc}", code="sim_unknown_image") from None
        except ImageDecodeError as exc:
            raise ChatError(400, f"simulator: {exc}", code="invalid_image") from None

    def _complete(
        self, parsed: _Parsed, identified: Identified | None, plan: FaultPlan, n: int, digest: str
    ) -> Completion:
        prompt_tokens = sum(_tokens(t) for t in parsed.texts)
        if identified is not None:
            prompt_tokens += _image_tokens(identified.width, identified.height)
        choices, usable = [], True
        for i in range(n):
            parts = plan.parts if i == 0 else (*plan.parts, "choice", i)  # choice 0 is the n = 1 answer
            answer, ok = self._answer(parsed, identified, plan.controls, parts, plan.fault, digest)
            choices.append(answer)
            usable = usable and ok
        return Completion(tuple(choices), prompt_tokens, usable)

    def _answer(
        self,
        parsed: _Parsed,
        identified: Identified | None,
        controls: ModelControls,
        parts: tuple,
        fault: str | None,
        digest: str,
    ) -> tuple[Answer, bool]:
        """One choice, and whether a client can use it (a structured description with no objects cannot)."""
        objects: list[dict[str, Any]] | None = None
        usable = True
        json_mode = parsed.request.json_mode
        definition = _definition_term(parsed.texts)
        invalid = validation_invalid_token(parsed.texts) if len(parsed.images) >= 2 else None
        kind = answers.prompt_kind(parsed.texts, identified is not None)
        if definition is not None:
            text = lang.definition_for(*definition)
            subject = f"the definition of {definition[0]!r}"
        elif identified is not None and invalid is not None:
            # Checked before the description request: the validation conversation repeats that prompt.
            text = validation_answer(
                identified,
                parsed.images[0],
                parsed.images[-1],
                parsed.assistant_texts[-1] if parsed.assistant_texts else None,
                invalid,
                controls,
                (*parts, digest),  # each crop of an image gets its own draws
            )
            subject = "which described object the crop shows"
        elif identified is not None and kind in ("objects", "labelled_boxes"):
            if kind == "objects":
                objects = answers.describe_objects(
                    identified, controls, parts, self.ctx.world.all_class_names()
                )
            else:
                objects = answers.describe_labelled_boxes(identified, controls, parts)
            text = answers.format_objects(objects, json_mode, controls, parts)
            subject = "the objects in the image"
            usable = bool(objects)
        elif identified is not None and kind == "scene":
            text = answers.scene_description(identified, controls, parts)
            subject = "the whole image"
        else:
            text = answers.plain_answer(identified, parsed.request.model, controls, parts)
            if json_mode:
                text = json.dumps({"answer": text})
            subject = "a general question"
        reasoning = answers.reasoning_for(objects, subject) if controls.reasoning else None
        finish = "stop"
        if fault == "invalid_json":
            text = INVALID_JSON_TEXT
        elif fault == "finish_length":
            text = text[: int(len(text) * 0.4)]
            finish = "length"
        elif fault == "finish_content_filter":
            text = ""
            finish = "content_filter"
        reasoning_tokens = _tokens(reasoning or "")
        return Answer(text, reasoning, finish, _tokens(text) + reasoning_tokens, reasoning_tokens), usable

    @staticmethod
    async def _sleep(seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _sse(
        self,
        chat: ChatRequest,
        completion: Completion,
        plan: FaultPlan,
        completion_id: str,
        created: int,
        timer: RequestTimer,
    ) -> AsyncIterator[bytes]:
        controls: ModelControls = plan.controls
        fault = plan.fault

        def chunk(deltas: list[tuple[int, dict[str, Any], str | None]], usage: dict | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": chat.model,
                "system_fingerprint": "vlm-gist-sim",
                "choices": [
                    {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
                    for index, delta, finish in deltas
                ],
            }
            if usage is not None:
                payload["usage"] = usage
            return b"data: " + json.dumps(payload).encode("utf-8") + b"\n\n"

        reasoning_key = "reasoning_content" if chat.vllm_style else "reasoning"
        size = controls.chunk_chars
        streams: list[list[dict[str, Any]]] = []
        for answer in completion.choices:
            pieces: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
            if answer.reasoning:
                pieces += [
                    {reasoning_key: answer.reasoning[i : i + size]}
                    for i in range(0, len(answer.reasoning), size)
                ]
            pieces += [{"content": answer.text[i : i + size]} for i in range(0, len(answer.text), size)]
            streams.append(pieces)
        # The choices' pieces interleaved, as a provider streams n > 1 choices.
        pieces_in_order = [
            (index, stream[k])
            for k in range(max(len(s) for s in streams))
            for index, stream in enumerate(streams)
            if k < len(stream)
        ]
        status = 200
        try:
            if fault == "stall_first_chunk":
                await asyncio.sleep(controls.faults.stall_seconds)  # silence: not even a keep-alive comment
            yield KEEPALIVE
            waited = 0.0
            while waited < plan.latency_s:  # keep-alive comments while "thinking", as OpenRouter sends
                step = min(1.0, plan.latency_s - waited)
                await asyncio.sleep(step)
                waited += step
                if waited < plan.latency_s:
                    yield KEEPALIVE
            half = max(1, len(pieces_in_order) // 2)
            for position, (index, delta) in enumerate(pieces_in_order):
                if position == half and fault == "stall_mid_stream":
                    await asyncio.sleep(controls.faults.stall_seconds)
                if position == half and fault == "truncated_stream":
                    return  # clean end of the HTTP body without finish chunk, usage or [DONE]
                if position and controls.chunk_interval_s > 0:
                    await asyncio.sleep(controls.chunk_interval_s)
                yield chunk([(index, delta, None)])
            usage = completion.usage()
            finishes: list[tuple[int, dict[str, Any], str | None]] = [
                (i, {}, answer.finish_reason) for i, answer in enumerate(completion.choices)
            ]
            if chat.include_usage:
                for finish in finishes:
                    yield chunk([finish])
                yield chunk([], usage=usage)
            else:
                for finish in finishes[:-1]:
                    yield chunk([finish])
                yield chunk([finishes[-1]], usage=usage)
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            status = 499  # the client went away mid-stream (nginx's code for it)
            raise
        finally:
            timer.finish(status)
