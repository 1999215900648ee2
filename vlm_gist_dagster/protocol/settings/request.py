"""The nimbro_api request block (``vlm_structured_description``, ``llm``, ``vlm``, …): one chat model's
completion parameters, as the paper's settings files spell them (docs/protocol/pipeline.md §1.1, §1.3).

>>> block = CompletionParams.model_validate({"model_max_tokens": "10000", "stream_completion": "False"})
>>> block.model_max_tokens, block.stream_completion, block.to_paper_dict()["stream_completion"]
(10000, False, 'False')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import Field, StrictStr, field_validator

from ..endpoints import Endpoint, EndpointError, resolve_endpoint
from .coercion import (
    PaperBool,
    PaperFloat,
    PaperInt,
    PaperOptFloat,
    PaperOptInt,
    PaperStrTuple,
    SettingsModel,
    refuse_io_keys,
)

#: Completion parsers the paper's nimbro_api ships and we implement (docs/protocol/pipeline.md §1.4, §2.2).
KNOWN_COMPLETION_PARSERS: tuple[str, ...] = ("json_decoder.py", "reasoning_extractor.py")


class CompletionParams(SettingsModel):
    """One nimbro_api completion-parameter block (``vlm_structured_description``, ``llm``, ``vlm``, …).

    Defaults are the StructuredDescription module defaults (docs/protocol/pipeline.md §1.1). A block given in a
    file is merged over the default block of its context (see ``fill_blocks``), so a partial block
    keeps the context's defaults for the keys it leaves out.
    """

    probe_api_connection: PaperBool = False
    #: An endpoint name of docs/protocol/pipeline.md §2.1 or the endpoint-dict form (see ``protocol.endpoints``).
    api_endpoint: str | dict[str, Any] = "OpenRouter"
    model_name: StrictStr = "google/gemini-2.5-flash"
    model_temperature: PaperFloat = 1.0
    model_top_p: PaperFloat = 1.0
    #: None: no token-limit field is sent (the provider default applies).
    model_max_tokens: PaperOptInt = Field(default=5000, gt=0)
    model_presence_penalty: PaperFloat = 0.0
    model_frequency_penalty: PaperFloat = 0.0
    #: ``"none"`` (or ``""``) sends **no** reasoning field: the provider default, not "reasoning off"
    #: (docs/protocol/pipeline.md §1.3).
    model_reasoning_effort: StrictStr = "none"
    completion_parsers: PaperStrTuple = ()
    stream_completion: PaperBool = True
    normalize_text_completion: PaperBool = False
    correction_attempts: PaperInt = Field(default=0, ge=0)
    timeout_chunk_first: PaperOptFloat = Field(default=10.0, gt=0)
    timeout_chunk_next: PaperOptFloat = Field(default=5.0, gt=0)
    timeout_completion: PaperOptFloat = Field(default=30.0, gt=0)

    @field_validator("api_endpoint", mode="before")
    @classmethod
    def _check_endpoint(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"endpoint dict is not valid JSON: {exc}") from None
        if not isinstance(value, (str, dict)):
            raise ValueError(f"expected an endpoint name or an endpoint dict, got {type(value).__name__}")
        try:
            resolve_endpoint(value)
        except EndpointError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("completion_parsers")
    @classmethod
    def _check_parsers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [p for p in value if p not in KNOWN_COMPLETION_PARSERS]
        if unknown:
            known = list(KNOWN_COMPLETION_PARSERS)
            raise ValueError(f"unknown completion parser(s) {unknown}; known: {known}")
        return value

    @property
    def endpoint(self) -> Endpoint:
        """The resolved endpoint (URLs, flavour, key variable name)."""
        return resolve_endpoint(self.api_endpoint)

    @property
    def api_flavor(self) -> str:
        return self.endpoint.api_flavor

    @property
    def reasoning_requested(self) -> bool:
        """True when a reasoning field is sent: effort ∉ {"", "none"} (docs/protocol/pipeline.md §1.3)."""
        return self.model_reasoning_effort not in ("", "none")

    def to_paper_dict(self) -> dict[str, str]:
        """The block in the paper's string-valued form (``"True"``, ``"1.0"``, ``"[]"``)."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "completion_parsers":
                out[name] = json.dumps(list(value))
            elif name == "api_endpoint" and isinstance(value, dict):
                out[name] = json.dumps(value)
            else:
                out[name] = str(value)
        return out


def request_block(**overrides: Any) -> dict[str, Any]:
    return CompletionParams(**overrides).model_dump()


def fill_blocks(data: Any, defaults: Mapping[str, Mapping[str, Any]]) -> Any:
    """The raw settings ``data`` (the paper's file-handling keys refused) with every request block
    named in ``defaults`` filled from its default block where the file gives a partial one (ours: the
    paper would leave the missing parameters at whatever the nimbro_api node had; every shipped file
    gives complete blocks)."""
    refuse_io_keys(data)
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for key, default in defaults.items():
        if isinstance(data.get(key), Mapping):
            data[key] = {**default, **data[key]}
    return data
