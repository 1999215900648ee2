"""The simulated OpenAI-compatible server: ``POST /v1/chat/completions`` (JSON and SSE),
``GET /v1/models``, ``POST /v1/embeddings``.

What it answers (spec/pipeline.md §1.3–1.4, spec/evaluation.md §1.5):

* **Structured description** — a request with an image and a prompt that asks for ``object_name`` /
  ``description`` fields (the paper's ``dict_prompt``). The image is recognised (:mod:`.world`); each
  GT instance is described with probability ``recall`` plus about ``hallucinations`` invented objects.
  With ``response_format: {"type": "json_object"}`` the text is ``{"objects": [...]}``; otherwise the
  bare JSON list, or with probability ``fenced_rate`` prose around a ```` ```json ```` fence (both are
  what real models send, and both survive the client's longest-first JSON extraction). An unknown
  image is answered with HTTP 400 (``code: "sim_unknown_image"``): the simulator cannot describe
  what it has no ground truth for, and a clear error beats a silent random answer.
* **Definition** — a prompt starting with one of the two definition prompts of spec/evaluation.md
  §1.5: a deterministic 5-sentence definition of the term (:func:`.language.definition_for`).
* Anything else — a short generic text.

Every draw depends only on (seed, model, image key, attempt), see :mod:`.faults`. ``reasoning``
models also return reasoning text (``message.reasoning``; ``reasoning_content`` when the request
looks like vLLM's, i.e. carries ``chat_template_kwargs``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

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
from .controls import FAULT_TYPES, ModelControls
from .embeddings import get_embedder
from .faults import hash64, rng, uniform
from .validation import validation_answer, validation_invalid_token
from .world import Identified, ImageDecodeError, UnknownImageError

SERVER = "chat"
#: Share of the invented objects on a class dataset (COCO) that are scene stuff outside its classes.
SCENE_STUFF_SHARE = 0.5

#: The fixed beginnings of the two definition prompts (spec/evaluation.md §1.5, exact strings).
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


def openai_error(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        429: "rate_limit_exceeded",
        500: "server_error",
        503: "server_error",
    }.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code or kind}}


class BadRequest(Exception):
    def __init__(self, message: str, code: str = "invalid_request_error", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class ParsedChat:
    model: str
    texts: list[str]
    images: list[bytes]
    stream: bool
    include_usage: bool
    json_mode: bool
    vllm_style: bool
    #: Text of the assistant turns (a validation conversation carries the structured description there).
    assistant_texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    text: str
    reasoning: str | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int


def _parse_chat(body: Any) -> ParsedChat:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string", "missing_model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "invalid_messages")
    texts: list[str] = []
    assistant_texts: list[str] = []
    images: list[bytes] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in (
            "system",
            "user",
            "assistant",
            "developer",
            "tool",
        ):
            raise BadRequest(f"messages[{i}] must be an object with a valid 'role'", "invalid_messages")
        content = message.get("content")
        if isinstance(content, str):
            (assistant_texts if message["role"] == "assistant" else texts).append(content)
            continue
        if not isinstance(content, list):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts", "invalid_messages")
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise BadRequest(f"messages[{i}].content[{j}] must be an object", "invalid_messages")
            if part.get("type") == "text":
                (assistant_texts if message["role"] == "assistant" else texts).append(
                    str(part.get("text", ""))
                )
            elif part.get("type") == "image_url":
                url = (
                    (part.get("image_url") or {}).get("url")
                    if isinstance(part.get("image_url"), dict)
                    else None
                )
                if not isinstance(url, str):
                    raise BadRequest(
                        f"messages[{i}].content[{j}].image_url.url must be a string", "invalid_image"
                    )
                if not url.startswith("data:"):
                    raise BadRequest(
                        f"messages[{i}].content[{j}]: the simulator works offline and cannot fetch image URLs; "
                        "send a data:image/...;base64 URI",
                        "invalid_image",
                    )
                try:
                    images.append(decode_b64_image(url, f"messages[{i}].content[{j}].image_url.url"))
                except ValueError as exc:
                    raise BadRequest(str(exc), "invalid_image") from None
            else:
                raise BadRequest(
                    f"messages[{i}].content[{j}]: unsupported part type {part.get('type')!r}",
                    "invalid_messages",
                )
    response_format = body.get("response_format") or {}
    json_mode = isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )
    stream_options = body.get("stream_options") or {}
    return ParsedChat(
        model=model,
        texts=texts,
        images=images,
        stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
        json_mode=json_mode,
        vllm_style="chat_template_kwargs" in body,
        assistant_texts=tuple(assistant_texts),
    )


def _definition_term(texts: list[str]) -> tuple[str, str | None] | None:
    for text in texts:
        if text.startswith(DEFINITION_PROMPT_ITEM_PREFIX):
            item = text[len(DEFINITION_PROMPT_ITEM_PREFIX) :]
            item = item.removesuffix(DEFINITION_PROMPT_ITEM_SUFFIX)
            return lang.parse_definition_item(item)
        if text.startswith(DEFINITION_PROMPT_LABEL_PREFIX):
            return lang.parse_definition_item(text[len(DEFINITION_PROMPT_LABEL_PREFIX) :])
    return None


def _asks_for_objects(texts: list[str]) -> bool:
    joined = " ".join(texts).lower()
    return "object_name" in joined and "description" in joined


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4) if text else 0


def _image_tokens(width: int, height: int) -> int:
    """OpenAI's high-detail estimate: 85 + 170 per 512-px tile after fitting 2048 and a 768-px short side."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


# --------------------------------------------------------------------------------------------------
# Descriptions


def describe_objects(
    identified: Identified, controls: ModelControls, parts: tuple, all_class_names: tuple[str, ...]
) -> list[dict[str, str]]:
    """The simulated structured description of an image: a list of ``{object_name, description}``."""
    image = identified.image
    variants = image.variants()
    gen = rng(*parts, "describe")
    n = len(image.instances)
    keep = gen.random(n) < controls.recall
    choice = gen.integers(0, 2, size=n)
    synonym_draw = gen.random(n)
    objects: list[dict[str, str]] = []
    for index in np.flatnonzero(keep):
        options = variants[index]
        variant = options[int(choice[index]) % len(options)]
        name = variant.object_name
        synonyms = lang.SYNONYMS.get(name, ())
        if image.mode == "class" and synonyms and synonym_draw[index] < controls.synonym_rate:
            name = synonyms[int(gen.integers(0, len(synonyms)))]
        objects.append({"object_name": name, "description": variant.description})

    count = int(controls.hallucinations) + int(
        gen.random() < controls.hallucinations - int(controls.hallucinations)
    )
    for _ in range(count):
        objects.insert(int(gen.integers(0, len(objects) + 1)), _invented_object(image, gen, all_class_names))
    return objects


def _invented_object(image, gen: np.random.Generator, all_class_names: tuple[str, ...]) -> dict[str, str]:
    if image.mode == "class":
        present = {inst.label for inst in image.instances}
        pool = [c for c in all_class_names if c not in present and c != "person"] or list(all_class_names)
        # Half of what a model invents on a class dataset is scene "stuff" outside its classes (a wall, a
        # window): real VLMs list those, and label matching rejects them (Mat. < 1); the other half are
        # classes of the dataset that are not in the image (false positives if grounded).
        if gen.random() < SCENE_STUFF_SHARE:
            pool = [c for c in lang.SCENE_STUFF if c not in all_class_names] or pool
        name = pool[int(gen.integers(0, len(pool)))]
        colour = ("black", "white", "red", "blue", "green", "gray", "brown", "yellow")[
            int(gen.integers(0, 8))
        ]
        where = lang.position_phrase(float(gen.random()), float(gen.random()))
        return {"object_name": name, "description": lang.with_article(f"{colour} {name} {where}")}
    name, description = lang.INVENTED_OBJECTS[int(gen.integers(0, len(lang.INVENTED_OBJECTS)))]
    return {"object_name": name, "description": description[:1].upper() + description[1:] + "."}


def _format_objects(
    objects: list[dict[str, str]], json_mode: bool, controls: ModelControls, parts: tuple
) -> str:
    if json_mode:
        return json.dumps({"objects": objects}, indent=2)
    listing = json.dumps(objects, indent=2)
    if uniform(*parts, "fence") < controls.fenced_rate:
        return f"Here is the list of objects visible in the image:\n\n```json\n{listing}\n```\n"
    return listing


def _reasoning_for(objects: list[dict[str, str]] | None, subject: str) -> str:
    if objects is None:
        return f"The user asks about {subject}. I will answer concisely and factually."
    names = ", ".join(o["object_name"] for o in objects[:12]) or "nothing recognisable"
    return (
        f"I need to list every object in the image as JSON. Scanning the image from left to right, I can see: "
        f"{names}. Each gets a short, distinct description starting with 'a' or 'an'."
    )


# --------------------------------------------------------------------------------------------------
# The app


class ChatServer:
    """Builds the starlette app of the OpenAI-compatible simulator."""

    def __init__(
        self, ctx: SimContext, api_key: str | None = None, embedding_backend: str = "hashed"
    ) -> None:
        self.ctx = ctx
        self.api_key = api_key
        self.embedding_backend = embedding_backend

    def app(self) -> AbortableApp:
        # "/v1/..." as OpenAI, Mistral and vLLM serve it; "/api/v1/..." as OpenRouter does, so that a named
        # endpoint moved onto the simulator (``VLM_GIST_ENDPOINT_URL_OPENROUTER``) keeps its path.
        routes = [
            route
            for prefix in ("/v1", "/api/v1")
            for route in (
                Route(f"{prefix}/chat/completions", self.chat_completions, methods=["POST"]),
                Route(f"{prefix}/models", self.models, methods=["GET"]),
                Route(f"{prefix}/embeddings", self.embeddings, methods=["POST"]),
            )
        ]
        return AbortableApp(Starlette(routes=routes))

    # ---------------------------------------------------------------- auth
    def _auth_error(self, request: Request) -> JSONResponse | None:
        header = request.headers.get("authorization")
        if not header:
            return JSONResponse(
                openai_error(401, "Missing bearer authentication in header", "missing_api_key"),
                status_code=401,
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return JSONResponse(
                openai_error(401, "Authorization header must be 'Bearer <key>'", "invalid_api_key"),
                status_code=401,
            )
        if self.api_key is not None and token.strip() != self.api_key:
            return JSONResponse(
                openai_error(401, "Incorrect API key provided (simulator)", "invalid_api_key"),
                status_code=401,
            )
        return None

    # ---------------------------------------------------------------- /v1/models
    async def models(self, request: Request) -> Response:
        timer = RequestTimer(self.ctx, SERVER, request)
        error = self._auth_error(request)
        if error is not None:
            timer.finish(error.status_code)
            return error
        names = sorted(self.ctx.controls.get(SERVER).models)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "vlm-gist-simulator"} for name in names
        ]
        timer.finish(200)
        return JSONResponse({"object": "list", "data": data})

    # ---------------------------------------------------------------- /v1/embeddings
    async def embeddings(self, request: Request) -> Response:
        timer = RequestTimer(self.ctx, SERVER, request)
        error = self._auth_error(request)
        if error is not None:
            timer.finish(error.status_code)
            return error
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            timer.finish(400, "body is not JSON")
            return JSONResponse(openai_error(400, "request body is not valid JSON"), status_code=400)
        inputs = body.get("input") if isinstance(body, dict) else None
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        problem = None
        if not isinstance(model, str) or not model:
            problem = "'model' must be a non-empty string"
        elif not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            problem = "'input' must be a string or a non-empty list of strings"
        elif any(not t.strip() for t in inputs):
            problem = "'input' must not contain empty strings"
        dimensions = body.get("dimensions") if isinstance(body, dict) else None
        if problem is None and dimensions is not None and (not isinstance(dimensions, int) or dimensions < 1):
            problem = "'dimensions' must be a positive integer"
        if problem is not None:
            timer.finish(400, problem)
            return JSONResponse(openai_error(400, problem), status_code=400)
        timer.model = model
        key = f"text:{hash64(*inputs):016x}"
        timer.image_key = key
        plan = plan_request(self.ctx, SERVER, model, key, allowed=EMBEDDING_FAULTS)
        timer.attempt, timer.fault = plan.attempt, plan.fault
        faulted = await http_fault_response(plan, request, lambda s, m: openai_error(s, m))
        if faulted is not None:
            timer.finish(None if plan.fault == "connection_drop" else faulted.status_code)
            return faulted
        await self._sleep(
            plan.latency_s
            + (plan.controls.faults.stall_seconds if plan.fault == "stall_first_chunk" else 0.0)
        )
        vectors = await asyncio.to_thread(get_embedder(self.embedding_backend).embed, inputs, dimensions)
        tokens = sum(_tokens(t) for t in inputs)
        content = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": [float(x) for x in vec]}
                for i, vec in enumerate(vectors)
            ],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        if plan.fault == "truncated_stream":
            timer.finish(200)
            return truncated_json_response(content)
        timer.finish(200)
        return JSONResponse(content)

    # ---------------------------------------------------------------- /v1/chat/completions
    async def chat_completions(self, request: Request) -> Response:
        timer = RequestTimer(self.ctx, SERVER, request)
        error = self._auth_error(request)
        if error is not None:
            timer.finish(error.status_code)
            return error
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            timer.finish(400, "body is not JSON")
            return JSONResponse(openai_error(400, "request body is not valid JSON"), status_code=400)
        try:
            parsed = _parse_chat(body)
            timer.model = parsed.model
            identified = await asyncio.to_thread(self._identify, parsed)
        except BadRequest as exc:
            timer.finish(exc.status, str(exc))
            return JSONResponse(openai_error(exc.status, str(exc), exc.code), status_code=exc.status)

        definition = _definition_term(parsed.texts)
        if identified is not None:
            key = identified.image.key
        else:
            key = f"text:{hash64(*parsed.texts):016x}"
        timer.image_key = key
        plan = plan_request(self.ctx, SERVER, parsed.model, key)
        timer.attempt, timer.fault = plan.attempt, plan.fault

        faulted = await http_fault_response(plan, request, lambda s, m: openai_error(s, m))
        if faulted is not None:
            timer.finish(None if plan.fault == "connection_drop" else faulted.status_code)
            return faulted

        answer = self._answer(parsed, identified, definition, plan.controls, plan.parts, plan.fault)
        completion_id = f"chatcmpl-sim-{hash64(*plan.parts):016x}"
        created = int(time.time())
        if parsed.stream:
            return StreamingResponse(
                self._sse(parsed, answer, plan, completion_id, created, timer),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )

        stall = (
            plan.controls.faults.stall_seconds
            if plan.fault in ("stall_first_chunk", "stall_mid_stream")
            else 0.0
        )
        await self._sleep(plan.latency_s + stall)
        message: dict[str, Any] = {"role": "assistant", "content": answer.text}
        if answer.reasoning is not None:
            message["reasoning_content" if parsed.vllm_style else "reasoning"] = answer.reasoning
        content = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": parsed.model,
            "system_fingerprint": "vlm-gist-sim",
            "choices": [
                {"index": 0, "message": message, "finish_reason": answer.finish_reason, "logprobs": None}
            ],
            "usage": self._usage(answer),
        }
        timer.finish(200)
        if plan.fault == "truncated_stream":
            return truncated_json_response(content)
        return JSONResponse(content)

    # ---------------------------------------------------------------- helpers
    def _identify(self, parsed: ParsedChat) -> Identified | None:
        if not parsed.images:
            return None
        try:
            return self.ctx.world.identify(parsed.images[0])
        except UnknownImageError as exc:
            raise BadRequest(f"simulator: {exc}", "sim_unknown_image") from None
        except ImageDecodeError as exc:
            raise BadRequest(f"simulator: {exc}", "invalid_image") from None

    def _answer(
        self,
        parsed: ParsedChat,
        identified: Identified | None,
        definition: tuple[str, str | None] | None,
        controls: ModelControls,
        parts: tuple,
        fault: str | None,
    ) -> Answer:
        objects = None
        invalid = validation_invalid_token(parsed.texts) if len(parsed.images) >= 2 else None
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
                parts,
            )
            subject = "which described object the crop shows"
        elif identified is not None and _asks_for_objects(parsed.texts):
            objects = describe_objects(identified, controls, parts, self.ctx.world.all_class_names())
            text = _format_objects(objects, parsed.json_mode, controls, parts)
            subject = "the objects in the image"
        else:
            text = f"This is a simulated answer from {parsed.model}."
            if parsed.json_mode:
                text = json.dumps({"answer": text})
            subject = "a general question"
        reasoning = _reasoning_for(objects, subject) if controls.reasoning else None
        finish = "stop"
        if fault == "invalid_json":
            text = INVALID_JSON_TEXT
        elif fault == "finish_length":
            text = text[: int(len(text) * 0.4)]
            finish = "length"
        elif fault == "finish_content_filter":
            text = ""
            finish = "content_filter"
        prompt_tokens = sum(_tokens(t) for t in parsed.texts)
        if identified is not None:
            prompt_tokens += _image_tokens(identified.width, identified.height)
        reasoning_tokens = _tokens(reasoning or "")
        return Answer(
            text, reasoning, finish, prompt_tokens, _tokens(text) + reasoning_tokens, reasoning_tokens
        )

    @staticmethod
    def _usage(answer: Answer) -> dict[str, Any]:
        return {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
        }

    @staticmethod
    async def _sleep(seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _sse(
        self, parsed: ParsedChat, answer: Answer, plan, completion_id: str, created: int, timer: RequestTimer
    ) -> AsyncIterator[bytes]:
        controls: ModelControls = plan.controls
        fault = plan.fault

        def chunk(
            delta: dict[str, Any] | None, finish: str | None = None, usage: dict | None = None
        ) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": parsed.model,
                "system_fingerprint": "vlm-gist-sim",
                "choices": []
                if delta is None
                else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
            if usage is not None:
                payload["usage"] = usage
            return b"data: " + json.dumps(payload).encode("utf-8") + b"\n\n"

        reasoning_key = "reasoning_content" if parsed.vllm_style else "reasoning"
        size = controls.chunk_chars
        pieces: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if answer.reasoning:
            pieces += [
                {reasoning_key: answer.reasoning[i : i + size]} for i in range(0, len(answer.reasoning), size)
            ]
        pieces += [{"content": answer.text[i : i + size]} for i in range(0, len(answer.text), size)]
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
            half = max(1, len(pieces) // 2)
            for index, delta in enumerate(pieces):
                if index == half and fault == "stall_mid_stream":
                    await asyncio.sleep(controls.faults.stall_seconds)
                if index == half and fault == "truncated_stream":
                    return  # clean end of the HTTP body without finish chunk, usage or [DONE]
                if index and controls.chunk_interval_s > 0:
                    await asyncio.sleep(controls.chunk_interval_s)
                yield chunk(delta)
            usage = self._usage(answer)
            if parsed.include_usage:
                yield chunk({}, answer.finish_reason)
                yield chunk(None, usage=usage)
            else:
                yield chunk({}, answer.finish_reason, usage=usage)
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            status = 499  # the client went away mid-stream (nginx's code for it)
            raise
        finally:
            timer.finish(status)
