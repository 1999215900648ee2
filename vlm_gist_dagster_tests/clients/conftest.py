"""Fixtures of the client tests: a fresh simulator per test (ephemeral loopback ports, request bodies
captured) so every test sets its own faults and counts its own requests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vlm_gist_dagster.protocol.settings import CompletionParams, DescriptionSettings, load_model_settings
from vlm_gist_dagster.sim import FAULT_TYPES, SERVER_NAMES, run_simulator

REPO = Path(__file__).resolve().parents[2]
SIM_MODEL_FILE = REPO / "settings" / "models" / "sim_medium.json"
EPHEMERAL = {name: 0 for name in SERVER_NAMES}
KEY_ENV = "VLM_GIST_SIM_API_KEY"
ENDPOINT_NAME = "VLM-GIST simulator"
NO_FAULTS = {name: 0.0 for name in FAULT_TYPES}


@pytest.fixture(scope="session")
def sim_datasets(vlm_gist_dataset):
    return {"vlm_gist": vlm_gist_dataset}


@pytest.fixture()
def sim(sim_datasets):
    # "test/model" is the tests' chat model: the simulator answers only models it lists (others: 404).
    with run_simulator(
        sim_datasets, ports=EPHEMERAL, capture_bodies=True, served_models=["test/model"]
    ) as handle:
        yield handle


@pytest.fixture(scope="session")
def images(vlm_gist_dataset) -> list[tuple[str, str]]:
    """(image id, path) of the VLM-GIST images, in dataset order."""
    return [(str(row.image_id), str(row.path)) for row in vlm_gist_dataset.images.itertuples()]


def sim_env(key: str = "test-key") -> dict[str, str]:
    return {KEY_ENV: key}


def sim_urls(sim) -> dict[str, str]:
    """Moves the simulated models' endpoint (127.0.0.1:8900 in the model files) to the test's port."""
    return {ENDPOINT_NAME: sim.chat_base_url}


def endpoint_dict(flavor: str) -> dict[str, Any]:
    return {
        "name": ENDPOINT_NAME,
        "api_flavor": flavor,
        "completions_url": "http://127.0.0.1:8900/v1/chat/completions",
        "models_url": "http://127.0.0.1:8900/v1/models",
        "key_type": "environment",
        "key_value": KEY_ENV,
    }


def completion_params(
    model: str = "test/model",
    *,
    flavor: str = "openai",
    stream: bool = False,
    first: float = 15.0,
    next_: float = 15.0,
    total: float = 300.0,
    effort: str = "none",
    max_tokens: int = 10000,
) -> CompletionParams:
    return CompletionParams.model_validate(
        {
            "api_endpoint": endpoint_dict(flavor),
            "model_name": model,
            "model_max_tokens": max_tokens,
            "model_reasoning_effort": effort,
            "stream_completion": stream,
            "timeout_chunk_first": first,
            "timeout_chunk_next": next_,
            "timeout_completion": total,
        }
    )


def description_settings(
    params: CompletionParams, *, retry: int = 3, use_json_mode: bool = True
) -> DescriptionSettings:
    """The shipped simulated model's description settings (the benchmark's prompts and validation)
    with the request block replaced."""
    base = load_model_settings(SIM_MODEL_FILE).description
    return base.model_copy(
        update={"vlm_structured_description": params, "retry": retry, "use_json_mode": use_json_mode}
    )


def clearing_sleep(sim, model: str, waits: list[float], *, server: str = "chat") -> Callable[[float], Any]:
    """A backoff sleep that records the wait asked for and then removes every fault of ``model``: the
    first request faults, the retry succeeds (deterministic sequences without timing)."""

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        sim.set_controls(server, model=model, faults=NO_FAULTS)
        await asyncio.sleep(seconds)

    return sleep


def chat_requests(sim, path: str = "/v1/chat/completions") -> list:
    return [r for r in sim.request_log if r.server == "chat" and r.path == path]


def settled_chat_requests(sim, expected: int, limit_s: float = 10.0) -> list:
    """The chat requests once ``expected`` are logged: a stream the client abandoned is logged by the
    server only when its generator ends (after the simulated stall), so wait for it, bounded."""
    deadline = time.monotonic() + limit_s
    while len(chat_requests(sim)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return chat_requests(sim)


def body_json(record) -> dict[str, Any]:
    assert record.body is not None, "the simulator must run with capture_bodies=True"
    return json.loads(record.body)


def max_overlap(records) -> int:
    """Largest number of requests the server handled at the same time (from start times and durations)."""
    events = []
    for r in records:
        events.append((r.time, 1))
        events.append((r.time + r.duration_s, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end at the same instant as a start comes first
    current = best = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best
