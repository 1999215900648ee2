"""What the simulator can be told to do: model quality, latency and faults, per server and per model.

Every simulated server (``chat``, ``mmgroundingdino``, ``sam2_realtime``, ``florence2``, ``kosmos2``, ``sam3``)
has one :class:`ServerControls`: a seed, default :class:`ModelControls`, and overrides per model name
(chat: the request's ``model``; vision servers: the loaded flavor, e.g. ``large``; embeddings: the
embedding model name). Model settings files may carry a ``simulator`` block in their header
(``{"model": {..., "simulator": {...}}}``), which :func:`controls_from_model_files` turns into chat
overrides.

>>> c = ServerControls(default=ModelControls(recall=0.5))
>>> c.for_model("sim/strong").recall
0.5
>>> c = c.with_model("sim/strong", recall=0.9, faults={"rate_limit": 0.1})
>>> c.for_model("sim/strong").recall, c.for_model("sim/strong").faults.rate_limit
(0.9, 0.1)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: Names of the simulated servers, in start-up order.
SERVER_NAMES: tuple[str, ...] = ("chat", "mmgroundingdino", "sam2_realtime", "florence2", "kosmos2", "sam3")
VISION_FAMILIES: tuple[str, ...] = SERVER_NAMES[1:]

#: Fault types in the order in which they partition the unit interval (see :mod:`.faults`).
FAULT_TYPES: tuple[str, ...] = (
    "rate_limit",
    "server_error",
    "unavailable",
    "connection_drop",
    "stall_first_chunk",
    "stall_mid_stream",
    "truncated_stream",
    "invalid_json",
    "finish_length",
    "finish_content_filter",
)
#: Faults that only make sense for a chat completion (the vision and embeddings routes ignore them).
CHAT_ONLY_FAULTS: frozenset[str] = frozenset(
    {"stall_mid_stream", "invalid_json", "finish_length", "finish_content_filter"}
)


class SimControlsError(ValueError):
    """Invalid simulator controls; the message names the file or field."""


class FaultControls(BaseModel):
    """Probability of each fault per request (they are mutually exclusive, so the rates must sum to ≤ 1).

    What each does on the wire is documented in :mod:`vlm_gist_dagster.sim.faults`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_limit: float = Field(0.0, ge=0, le=1, description="HTTP 429 with a Retry-After header")
    server_error: float = Field(0.0, ge=0, le=1, description="HTTP 500")
    unavailable: float = Field(0.0, ge=0, le=1, description="HTTP 503")
    connection_drop: float = Field(0.0, ge=0, le=1, description="socket closed without a response")
    stall_first_chunk: float = Field(
        0.0, ge=0, le=1, description="silence of stall_seconds before the first byte/chunk"
    )
    stall_mid_stream: float = Field(
        0.0, ge=0, le=1, description="silence of stall_seconds between two chunks"
    )
    truncated_stream: float = Field(
        0.0, ge=0, le=1, description="stream ends without [DONE] / body cut short"
    )
    invalid_json: float = Field(0.0, ge=0, le=1, description="completion text without any parseable JSON")
    finish_length: float = Field(0.0, ge=0, le=1, description="cut-off completion, finish_reason 'length'")
    finish_content_filter: float = Field(
        0.0, ge=0, le=1, description="empty completion, finish_reason 'content_filter'"
    )
    retry_after_s: int = Field(1, ge=0, description="value of the Retry-After header on 429")
    stall_seconds: float = Field(
        30.0, ge=0, description="length of a stall (past the client's chunk timeouts)"
    )

    @model_validator(mode="after")
    def _rates_partition_unit_interval(self) -> FaultControls:
        total = sum(getattr(self, name) for name in FAULT_TYPES)
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {total:.3f} > 1 (they are mutually exclusive per request)")
        return self

    def rates(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in FAULT_TYPES}


class ModelControls(BaseModel):
    """Quality, latency and faults of one simulated model (or vision server flavor)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int | None = Field(None, description="this model's own seed (None: the server's seed)")
    recall: float = Field(
        0.85, ge=0, le=1, description="probability that a GT instance is described / detected"
    )
    hallucinations: float = Field(
        0.5,
        ge=0,
        description="expected number of invented objects per image (integer part always, fraction as a coin flip)",
    )
    synonym_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability that an object_name is a synonym instead of the dataset's class name",
    )
    box_jitter: float = Field(
        0.06,
        ge=0,
        description="std. dev. of each box edge's shift as a fraction of the box's width/height (vision)",
    )
    distractors: int = Field(2, ge=0, description="lower-scored wrong boxes per prompt (mmgroundingdino)")
    fenced_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="text mode only: probability of answering with prose around a ```json fence",
    )
    reasoning: bool = Field(False, description="a 'thinking' model: also return reasoning text")
    latency_mean_s: float = Field(0.0, ge=0, description="mean delay before the first byte")
    latency_jitter_s: float = Field(0.0, ge=0, description="std. dev. of that delay (normal, clipped at 0)")
    chunk_chars: int = Field(24, ge=1, description="characters per SSE content chunk")
    chunk_interval_s: float = Field(0.0, ge=0, description="delay between SSE chunks")
    faults: FaultControls = Field(default_factory=FaultControls)

    def updated(self, **changes: Any) -> ModelControls:
        """A copy with ``changes`` applied (``faults`` may be a partial dict) and re-validated."""
        data = self.model_dump()
        faults = changes.pop("faults", None)
        if faults is not None:
            data["faults"] = {
                **data["faults"],
                **(faults.model_dump() if isinstance(faults, FaultControls) else faults),
            }
        data.update(changes)
        return ModelControls.model_validate(data)


class ServerControls(BaseModel):
    """Controls of one simulated server: a seed, defaults, per-model overrides, and the server-wide
    behaviours below (the vision ones are ignored by the chat server)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    default: ModelControls = Field(default_factory=ModelControls)
    models: dict[str, ModelControls] = Field(default_factory=dict)
    cuda_available: bool = Field(
        True,
        description="vision servers: what GET /health reports; a healthy GPU server says true, and "
        "nimbro-api refuses every vision call when it is false",
    )
    thin_mask_error: bool = Field(
        True,
        description="sam2_realtime: a mask one pixel wide or tall fails the whole request with HTTP 500, as "
        "on the real server (its crop is empty and cv2.imencode raises); false: such masks grow to two pixels",
    )
    status_reports_flavor: bool = Field(
        False,
        description="sam2_realtime: once loaded, /status reports {flavor, tracker_initialized}, as nimbro-api "
        "expects; the public server never records its flavor and always reports status null",
    )

    def for_model(self, model: str | None) -> ModelControls:
        if model is not None and model in self.models:
            return self.models[model]
        return self.default

    def with_model(self, model: str | None, **changes: Any) -> ServerControls:
        """A copy where ``model`` (None: the defaults) has ``changes`` applied on top of its current controls."""
        if model is None:
            return self.model_copy(update={"default": self.default.updated(**changes)})
        models = dict(self.models)
        models[model] = self.for_model(model).updated(**changes)
        return self.model_copy(update={"models": models})


#: Fields of :class:`ServerControls` that ``set_controls(server, **changes)`` without a model changes.
SERVER_WIDE_CONTROLS: frozenset[str] = frozenset(
    {"seed", "cuda_available", "thin_mask_error", "status_reports_flavor"}
)


def default_controls(seed: int = 0) -> dict[str, ServerControls]:
    """Defaults for every server. The detector's recall is higher than a VLM's (it only has to find what
    was described); the SAM2 server ignores recall."""
    return {
        "chat": ServerControls(seed=seed),
        "mmgroundingdino": ServerControls(seed=seed, default=ModelControls(recall=1.0, box_jitter=0.06)),
        "sam2_realtime": ServerControls(seed=seed, default=ModelControls(recall=1.0, box_jitter=0.0)),
        "florence2": ServerControls(seed=seed, default=ModelControls(recall=0.6, box_jitter=0.06)),
        "kosmos2": ServerControls(seed=seed, default=ModelControls(recall=0.35, box_jitter=0.12)),
        "sam3": ServerControls(seed=seed, default=ModelControls(recall=0.9, box_jitter=0.05, distractors=1)),
    }


def read_model_header(path: Path) -> dict[str, Any]:
    """The ``model`` header of a model settings file, ``{}`` when absent."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SimControlsError(f"{path}: cannot read model settings ({exc})") from exc
    if not isinstance(raw, dict):
        raise SimControlsError(f"{path}: a model settings file must hold a JSON object")
    header = raw.get("model") or {}
    if not isinstance(header, dict):
        raise SimControlsError(f"{path}: field 'model' must be an object")
    return header


def _served_model_names(raw: Mapping[str, Any]) -> list[str]:
    names = []
    for block in ("vlm_structured_description", "vlm_scene_description", "vlm_decoupled_attribution"):
        name = (raw.get(block) or {}).get("model_name") if isinstance(raw.get(block), dict) else None
        if isinstance(name, str) and name not in names:
            names.append(name)
    return names


def controls_from_model_files(
    paths: Iterable[Path], base: ModelControls | None = None
) -> dict[str, ModelControls]:
    """Chat model name → controls, from the ``model.simulator`` block of each simulated model file.

    Files without ``"simulated": true`` or without a simulator block are skipped (real models). The
    model names are the ``model_name`` values of the file's ``vlm_*`` blocks.
    """
    base = base or ModelControls()
    out: dict[str, ModelControls] = {}
    for path in sorted(Path(p) for p in paths):
        header = read_model_header(path)
        block = header.get("simulator")
        if not header.get("simulated") or block is None:
            continue
        if header.get("kind", "vlm") != "vlm":
            continue
        raw = json.loads(path.read_text())
        try:
            controls = base.updated(**block)
        except (ValidationError, TypeError) as exc:
            raise SimControlsError(f"{path}: field 'model.simulator' is invalid: {exc}") from exc
        for name in _served_model_names(raw):
            out[name] = controls
    return out


SimTarget = Literal["chat", "mmgroundingdino", "sam2_realtime", "florence2", "kosmos2", "sam3"]
