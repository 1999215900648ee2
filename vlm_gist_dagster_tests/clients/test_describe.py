"""The paper's content-retry loop over real sockets (docs/protocol/pipeline.md §1.6, docs/protocol/evaluation.md §2.10):
exact attempt and retry counts, Fail / Ret. / Time, transport retries never counted, the concurrency
and rate limits, the response cache, and a canary key that must not leak anywhere."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest

from vlm_gist_dagster.clients.cache import ResponseCache
from vlm_gist_dagster.clients.chat import ChatClient
from vlm_gist_dagster.clients.describe import (
    BatchIncomplete,
    ProgressEvent,
    ProgressTracker,
    describe_images,
)
from vlm_gist_dagster.clients.errors import AuthenticationError, TransportRetriesExhausted
from vlm_gist_dagster.clients.transport import RetryPolicy
from vlm_gist_dagster.protocol.images import prepare_image
from vlm_gist_dagster.protocol.settings import load_model_settings
from vlm_gist_dagster.sim import run_simulator
from vlm_gist_dagster.sim.chat import INVALID_JSON_TEXT

from .conftest import (
    ENDPOINT_NAME,
    EPHEMERAL,
    REPO,
    chat_requests,
    completion_params,
    description_settings,
    max_overlap,
    sim_env,
    sim_urls,
)

FAST = RetryPolicy(max_retries=10, backoff_base_s=0.001, backoff_max_s=0.001)


async def describe_batch(sim, settings, images, *, env=None, cache=None, concurrency=2, retry=FAST, **kwargs):
    """describe_images in a fresh client; returns (results, client)."""
    async with ChatClient(
        env=env or sim_env(),
        endpoint_urls=sim_urls(sim),
        concurrency=concurrency,
        retry=retry,
        cache=cache,
        **kwargs,
    ) as chat:
        return await describe_images(chat, settings, images), chat


def describe(sim, settings, images, **kwargs):
    return asyncio.run(describe_batch(sim, settings, images, **kwargs))


def comparable(row: dict) -> dict:
    """A result row without what says how it was obtained (from the cache or not)."""
    row = dict(row)
    row["attempt_log"] = [{k: v for k, v in a.items() if k != "from_cache"} for a in row["attempt_log"]]
    return row


# ----------------------------------------------------------------------------- Fail / Ret. / Time


@pytest.mark.parametrize(
    ("fault", "stream", "reason"),
    [
        ("invalid_json", False, "invalid_json"),
        ("finish_length", True, "finish_reason:length"),
        ("truncated_stream", True, "stream_incomplete"),
    ],
)
def test_a_model_that_always_fails_gets_exactly_four_attempts(sim, images, fault, stream, reason):
    sim.set_controls("chat", model="test/model", faults={fault: 1.0})
    settings = description_settings(completion_params(stream=stream), retry=3)
    (result,), chat = describe(sim, settings, images[:1])
    assert len(chat_requests(sim)) == 4  # 1 + retry (docs/protocol/pipeline.md gotcha 2)
    assert not result.success and result.objects is None and result.duration_s is None
    assert [a.error for a in result.attempts] == [reason] * 4
    assert all(a.raw_text is not None for a in result.attempts)  # every failed attempt keeps its output
    if fault == "invalid_json":
        assert result.attempts[0].raw_text == INVALID_JSON_TEXT
    # The paper appends to failed_structured_description_completions only when it re-queues the image
    # (`elif settings['retry'] > retries[i]: ... + [completion]`); the 4th failure goes to the `else`
    # branch (stamp_error, report_error). docs/protocol/evaluation.md §2.10: "Ret. = mean number of failed
    # structured-description attempts per image (0–3 with retry=3; an image that failed completely
    # contributes 3)".
    assert result.failed_attempts == 3 and result.failed_attempts_total == 4
    assert result.error == reason and chat.transport_retries == 0


def test_retry_zero_means_a_single_attempt(sim, images):
    sim.set_controls("chat", model="test/model", faults={"invalid_json": 1.0})
    (result,), _ = describe(sim, description_settings(completion_params(), retry=0), images[:1])
    assert len(result.attempts) == 1 and len(chat_requests(sim)) == 1
    assert (result.success, result.failed_attempts, result.failed_attempts_total) == (False, 0, 1)


def test_attempts_follow_the_servers_faults_and_time_is_the_successful_attempts(sim, images):
    """With an invalid-JSON rate of 0.5 each image sees its own sequence of failures (the simulator
    draws per image and attempt); the loop must mirror exactly what the server sent."""
    sim.set_controls("chat", model="test/model", faults={"invalid_json": 0.5}, latency_mean_s=0.02)
    batch = images[:10]
    results, _ = describe(sim, description_settings(completion_params(), retry=3), batch)
    log = chat_requests(sim)
    mixed = 0
    for result in results:
        served = sorted(
            (r for r in log if r.image_key == f"vlm_gist/{result.image_id}"), key=lambda r: r.attempt
        )
        assert [r.fault for r in served] == [("invalid_json" if a.error else None) for a in result.attempts]
        failures = sum(r.fault is not None for r in served)
        assert result.success is (served[-1].fault is None)
        assert result.failed_attempts == (failures if result.success else 3)
        if result.success:
            assert result.duration_s == result.attempts[-1].duration_s
            mixed += failures > 0
    assert mixed >= 1  # at least one image failed first and then succeeded (else the test proves little)


def test_transport_faults_are_never_counted_as_attempts(sim, images):
    sim.set_controls(
        "chat", model="test/model", faults={"rate_limit": 0.3, "connection_drop": 0.2, "retry_after_s": 0}
    )
    batch = images[:8]
    results, chat = describe(sim, description_settings(completion_params(stream=True)), batch)
    log = chat_requests(sim)
    faulted = sum(r.fault is not None for r in log)
    assert faulted >= 1
    assert all(r.success and len(r.attempts) == 1 and r.failed_attempts == 0 for r in results)
    assert sum(r.http_retries for r in results) == faulted == chat.transport_retries
    assert len(log) == len(batch) + faulted


def test_exhausted_transport_retries_end_the_batch_after_the_other_images(sim, images):
    sim.set_controls("chat", model="test/model", faults={"unavailable": 1.0, "retry_after_s": 0})
    settings = description_settings(completion_params())
    retry = RetryPolicy(max_retries=1, backoff_base_s=0.001, backoff_max_s=0.001)
    with pytest.raises(BatchIncomplete) as info:
        describe(sim, settings, images[:3], retry=retry)
    assert info.value.completed == [] and sorted(info.value.failed) == sorted(i for i, _ in images[:3])
    assert len(chat_requests(sim)) == 3 * 2  # each image: 1 + max_retries tries, no attempt recorded
    assert isinstance(info.value, TransportRetriesExhausted)


def test_an_authentication_error_stops_the_batch(sim_datasets, images):
    sent: list[bytes] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request.content)

    async def main(sim):
        async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
            await describe_batch(
                sim,
                description_settings(completion_params()),
                images[:12],
                env=sim_env("wrong"),
                concurrency=2,
                http_client=http,
            )

    with run_simulator(sim_datasets, ports=EPHEMERAL, servers=["chat"], chat_api_key="right") as sim:
        with pytest.raises(AuthenticationError):
            asyncio.run(main(sim))
        # Counted at the server: the batch stopped at once (the two requests in flight, plus at most one
        # per 401 answered that a freed slot let out before the cancellation landed) ...
        assert 1 <= len(chat_requests(sim)) <= 4
    # ... and at the client: no image was sent twice (a 401 is never retried; each image's body differs).
    # (A request the freed slot let out may be cancelled before the server logs it: sent >= logged.)
    assert len(chat_requests(sim)) <= len(sent) <= 4 and len(set(sent)) == len(sent)


def test_duplicate_image_ids_are_refused(sim, images):
    with pytest.raises(ValueError, match="unique"):
        describe(sim, description_settings(completion_params()), [images[0], images[0]])


# ----------------------------------------------------------------------------- limits


def test_concurrency_limit_is_held(sim, images):
    """The limit is held (never more than 3 in flight, at the client and at the server) and used (3 in
    flight at once). Margins for a loaded machine: the images are prepared beforehand, so the first three
    requests leave together, and each takes 1 s at the server, far longer than any scheduling delay."""
    sim.set_controls("chat", model="test/model", latency_mean_s=1.0, latency_jitter_s=0.0)
    settings = description_settings(completion_params())
    batch = [(i, prepare_image(path, settings.png_max_pixels)) for i, path in images[:9]]
    results, chat = describe(sim, settings, batch, concurrency=3)
    assert all(r.success for r in results)
    log = chat_requests(sim)
    assert len(log) == 9
    # The simulator records a JSON answer's end before sending it, so a request the client sent after
    # the previous answer arrived never overlaps it in the log: an upper bound that cannot flake.
    assert max_overlap(log) <= 3
    assert chat.limits(ENDPOINT_NAME).max_in_flight == 3


def test_requests_per_minute_limit_spaces_request_starts(sim, images):
    """300 per minute = one start every 60/300 = 0.2 s. Lower bounds only, which a loaded machine can
    only make easier: the server sees request k no earlier than the client's k-th token, and that token
    comes no earlier than k · 0.2 s after the test started."""
    started = time.time()
    results, _ = describe(
        sim, description_settings(completion_params()), images[:5], concurrency=5, requests_per_minute=300
    )
    assert all(r.success for r in results)
    starts = sorted(r.time for r in chat_requests(sim))
    assert len(starts) == 5
    for k, start in enumerate(starts):
        assert start - started >= k * 0.2 - 0.01, (k, start - started)


# ----------------------------------------------------------------------------- response cache


def test_rerun_replays_from_the_cache_with_zero_calls_and_identical_results(sim, images, tmp_path):
    sim.set_controls(
        "chat",
        model="test/model",
        faults={"invalid_json": 0.3, "finish_length": 0.2, "rate_limit": 0.2, "retry_after_s": 0},
    )
    settings = description_settings(completion_params(stream=True))
    batch = images[:6]
    first, _ = describe(sim, settings, batch, cache=ResponseCache(tmp_path / "cache"))
    calls = len(chat_requests(sim))
    assert any(r.failed_attempts for r in first)  # failed attempts are replayed too

    cache = ResponseCache(tmp_path / "cache")
    second, chat = describe(sim, settings, batch, cache=cache)
    assert len(chat_requests(sim)) == calls and chat.requests_sent == 0  # zero new calls
    assert all(r.from_cache for r in second)
    assert [comparable(r.as_row()) for r in second] == [comparable(r.as_row()) for r in first]
    assert cache.hits == sum(len(r.attempts) for r in first)

    third, _ = describe(sim, settings, batch, cache=ResponseCache(tmp_path / "cache", mode="bypass"))
    assert len(chat_requests(sim)) >= calls + len(batch)  # bypassed: every image was asked again
    assert not any(r.from_cache for r in third)


def test_cache_files_are_keyed_by_attempt_and_hold_no_secret(sim, images, tmp_path):
    sim.set_controls("chat", model="test/model", faults={"invalid_json": 1.0})
    key = "secret-key-for-cache-test"
    describe(
        sim,
        description_settings(completion_params(), retry=2),
        images[:1],
        env=sim_env(key),
        cache=ResponseCache(tmp_path),
    )
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == 3  # one per attempt (retry 2 → 3 attempts)
    stored = [json.loads(f.read_text()) for f in files]
    assert sorted(s["key"]["attempt"] for s in stored) == [0, 1, 2]
    assert all(key not in f.read_text() and "Authorization" not in f.read_text() for f in files)
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries


# ----------------------------------------------------------------------------- shipped models, progress


@pytest.mark.parametrize("model_file", ["sim_strong", "sim_medium", "sim_weak"])
def test_the_shipped_simulated_models_describe_images(sim, images, model_file):
    """The model files as shipped (OpenRouter SSE / OpenAI JSON / vLLM SSE text mode + json_decoder),
    moved to the test's port by an endpoint URL override."""
    settings = load_model_settings(REPO / "settings" / "models" / f"{model_file}.json").description
    events: list[ProgressEvent] = []

    async def main():
        async with ChatClient(env=sim_env(), endpoint_urls=sim_urls(sim), retry=FAST) as chat:
            return await describe_images(chat, settings, images[:3], progress=events.append)

    results = asyncio.run(main())
    assert [r.image_id for r in results] == [i for i, _ in images[:3]]
    assert all(r.success and r.num_described > 0 for r in results)
    assert all(r.cost_usd is not None and r.cost_usd > 0 for r in results)  # sim/* models are priced
    assert [e.done for e in events] == [1, 2, 3] and events[-1].total == 3


def test_progress_tracker_format():
    clock = iter([100.0, 109.0]).__next__  # created at t=100 s, 37 images done at t=109 s
    line = ProgressTracker(64, clock=clock).update(ProgressEvent(37, 64, 36, 1, "x", True))
    # 37/64 = 57.8 %; 37 / 9 s = 4.11 img/s; (64 - 37) / 4.111 = 6.6 s → "7 s"
    assert line == "37/64 images (57.8%), 4.1 img/s, ETA 7 s"


# ----------------------------------------------------------------------------- the canary


def test_a_canary_key_appears_in_no_file_log_or_exception(sim_datasets, images, tmp_path, caplog):
    canary = "canary-9f8e7d6c5b4a39281706"
    caplog.set_level(logging.DEBUG)
    leaks: list[str] = []
    with run_simulator(sim_datasets, ports=EPHEMERAL, servers=["chat"], chat_api_key=canary) as sim:
        sim.set_controls(
            "chat",
            model="test/model",
            faults={
                "rate_limit": 0.4,
                "server_error": 0.2,
                "invalid_json": 0.2,
                "finish_length": 0.1,
                "retry_after_s": 0,
            },
        )
        settings = description_settings(completion_params(stream=True))
        results, _ = describe(
            sim, settings, images[:8], env=sim_env(canary), cache=ResponseCache(tmp_path / "cache")
        )
        leaks += [json.dumps(r.as_row()) for r in results] + [repr(r) for r in results]
    with run_simulator(sim_datasets, ports=EPHEMERAL, servers=["chat"], chat_api_key="another-key") as sim:
        with pytest.raises(AuthenticationError) as info:
            describe(sim, description_settings(completion_params()), images[:2], env=sim_env(canary))
        leaks += [str(info.value), repr(info.value), repr(info.value.__cause__), repr(info.value.__context__)]

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and caplog.records  # the run did write files and log lines, so the check means something
    assert any("transport retry" in r.getMessage() for r in caplog.records)
    for path in written:
        assert canary.encode() not in path.read_bytes(), path
    for record in caplog.records:
        assert canary not in record.getMessage() and canary not in str(record.args)
    assert canary not in caplog.text
    for text in leaks:
        assert canary not in text
