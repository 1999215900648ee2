"""Request bodies of the simulated OpenAI-compatible API, as pydantic models, and the providers' error bodies.

What is checked is what OpenAI and vLLM reject with HTTP 400 for the fields the benchmark and
``nimbro-api`` send: types (a string ``"1.0"`` is not a temperature), ranges (``n ≥ 1``,
``temperature`` 0–2, ``top_p`` 0–1, token limits ≥ 1, penalties −2–2), message roles and content
parts, ``response_format`` types, ``stream_options`` without ``stream``. Other fields pass, as vLLM and OpenRouter let unknown ones
through (OpenAI would refuse some; the simulator serves every flavour on one URL).

>>> ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).n
1
>>> try:
...     ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 0})
... except ValidationError as exc:
...     print(validation_message(exc))
('n', "Invalid 'n': Input should be greater than or equal to 1.")
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

__all__ = [
    "ChatRequest",
    "EmbeddingsRequest",
    "ErrorStyle",
    "ImagePart",
    "Message",
    "TextPart",
    "ValidationError",
    "error_body",
    "validation_message",
]

#: A JSON number; a string or a boolean is not one (pydantic's lax mode would take ``"1.0"``).
Number = StrictInt | StrictFloat
_PASS_THROUGH = ConfigDict(extra="allow")


class TextPart(BaseModel):
    model_config = _PASS_THROUGH
    type: Literal["text"]
    text: StrictStr


class ImageUrl(BaseModel):
    model_config = _PASS_THROUGH
    url: StrictStr
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(BaseModel):
    model_config = _PASS_THROUGH
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    """One chat message. ``content`` is a string or a list of text / image parts; only an assistant
    message (with tool calls) may have none."""

    model_config = _PASS_THROUGH
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None

    @model_validator(mode="after")
    def _content_required(self) -> Message:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def texts(self) -> list[str]:
        if isinstance(self.content, str):
            return [self.content]
        return [part.text for part in self.content or () if isinstance(part, TextPart)]

    def image_urls(self) -> list[str]:
        if isinstance(self.content, list):
            return [part.image_url.url for part in self.content if isinstance(part, ImagePart)]
        return []


class StreamOptions(BaseModel):
    model_config = _PASS_THROUGH
    include_usage: StrictBool = False


class ResponseFormat(BaseModel):
    model_config = _PASS_THROUGH
    type: Literal["text", "json_object", "json_schema"]


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``."""

    model_config = _PASS_THROUGH
    model: StrictStr = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = Field(1, ge=1, le=128)
    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, ge=0, le=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    presence_penalty: Number | None = Field(None, ge=-2, le=2)
    frequency_penalty: Number | None = Field(None, ge=-2, le=2)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    reasoning_effort: StrictStr | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> ChatRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        return self

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def json_mode(self) -> bool:
        return self.response_format is not None and self.response_format.type in (
            "json_object",
            "json_schema",
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def vllm_style(self) -> bool:
        """vLLM's flavour is recognisable by ``chat_template_kwargs`` (the simulator answers it as vLLM)."""
        return self.chat_template_kwargs is not None


class EmbeddingsRequest(BaseModel):
    """``POST /v1/embeddings``: text input only (OpenAI also takes token arrays; the simulator cannot)."""

    model_config = _PASS_THROUGH
    model: StrictStr = Field(min_length=1)
    input: StrictStr | list[StrictStr]
    dimensions: StrictInt | None = Field(None, ge=1)
    encoding_format: Literal["float", "base64"] | None = "float"

    @model_validator(mode="after")
    def _non_empty(self) -> EmbeddingsRequest:
        texts = self.texts()
        if not texts:
            raise ValueError("'input' must not be an empty list")
        if any(not t.strip() for t in texts):
            raise ValueError("'input' must not contain empty strings")
        return self

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


#: Names pydantic gives the branches of a union in an error location (not fields of the body).
_BRANCH_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _location(loc: tuple[Any, ...]) -> str:
    out, previous = "", None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _BRANCH_NAMES or "[" in str(part) or part == previous:
            continue  # a union branch, or a content part's tag followed by the field of that name
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out


def validation_message(exc: ValidationError) -> tuple[str | None, str]:
    """``(param, message)`` for the most specific error of a request body, worded like OpenAI's 400s:
    ``Invalid 'messages[0].content[1].image_url.url': Input should be a valid string.``"""
    errors = exc.errors(include_url=False)
    deepest = max(errors, key=lambda e: len(e["loc"]))
    param = _location(tuple(deepest["loc"])) or None
    message = deepest["msg"].removeprefix("Value error, ")
    same_place = {e["type"] for e in errors if _location(tuple(e["loc"])) == param}
    if same_place >= {"int_type", "float_type"}:  # a Number that is neither
        message = "Input should be a valid number"
    message = message if message.endswith(".") else message + "."
    return (param, f"Invalid '{param}': {message}") if param else (None, message)


ErrorStyle = Literal["openai", "vllm"]


def error_body(
    status: int,
    message: str,
    *,
    style: ErrorStyle = "openai",
    code: str | None = None,
    param: str | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """An error body as the provider writes it.

    OpenAI: ``{"error": {"message", "type", "param", "code"}}``; vLLM: ``{"object": "error", "message",
    "type", "param", "code": <status>}``.

    >>> error_body(404, "The model `x` does not exist.", style="vllm")["type"]
    'NotFoundError'
    """
    if style == "vllm":
        vllm_kind = {400: "BadRequestError", 401: "Unauthorized", 404: "NotFoundError", 429: "RateLimitError"}
        return {
            "object": "error",
            "message": message,
            "type": kind or vllm_kind.get(status, "InternalServerError"),
            "param": param,
            "code": status,
        }
    openai_kind = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error"}
    default_kind = "rate_limit_exceeded" if status == 429 else "server_error"
    return {
        "error": {
            "message": message,
            "type": kind or openai_kind.get(status, default_kind),
            "param": param,
            "code": code,
        }
    }
