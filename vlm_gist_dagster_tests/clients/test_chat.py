"""ChatClient against the simulator over real sockets: each flavour's payload on the wire, streaming and
non-streaming, every fault type with exact request counts, the three timeouts, auth and configuration
errors (docs/protocol/pipeline.md §1.3, §1.4, §2.1; issue 6)."""

from __future__ import annotations

import asyncio
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from vlm_gist_dagster.clients.chat import ChatClient, endpoint_env_var, resolve
from vlm_gist_dagster.clients.errors import (
    AuthenticationError,
    ConfigurationError,
    TransportRetriesExhausted,
    redact,
    register_secret,
)
from vlm_gist_dagster.clients.transport import RetryPolicy, parse_retry_after
from vlm_gist_dagster.protocol.images import prepare_image
from vlm_gist_dagster.protocol.structured_description import build_request
from vlm_gist_dagster.sim import run_simulator

from .conftest import (
    ENDPOINT_NAME,
    EPHEMERAL,
    KEY_ENV,
    body_json,
    chat_requests,
    clearing_sleep,
    completion_params,
    description_settings,
    settled_chat_requests,
    sim_env,
    sim_urls,
)

FAST = RetryPolicy(max_retries=2, backoff_base_s=0.001, backoff_max_s=0.001)


def one_attempt(sim, params, image_path, **client_kwargs):
    """Build the paper's request for ``image_path`` and run one attempt; returns (outcome, request, client)."""
    settings = description_settings(params)
    request = build_request(prepare_image(image_path, settings.png_max_pixels), settings)
    client_kwargs.setdefault("env", sim_env())
    client_kwargs.setdefault("endpoint_urls", sim_urls(sim))
    client_kwargs.setdefault("retry", FAST)

    async def main():
        async with ChatClient(**client_kwargs) as chat:
            outcome = await chat.attempt(params, request.payload)
            return outcome, chat

    outcome, chat = asyncio.run(main())
    return outcome, request, chat


# ----------------------------------------------------------------------------- the wire


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("flavor", ["openai", "openrouter", "mistral", "vllm"])
def test_each_flavours_payload_as_the_server_received_it(sim, images, flavor, stream):
    params = completion_params(flavor=flavor, stream=stream)
    outcome, request, _ = one_attempt(sim, params, images[0][1])
    assert outcome.ok and outcome.completion.text
    (record,) = settled_chat_requests(sim, 1)
    body = body_json(record)
    assert body == request.payload  # byte-level JSON round trip: nothing added or lost on the way

    # docs/protocol/pipeline.md §1.3 table, checked by hand per flavour.
    assert body["model"] == "test/model" and body["n"] == 1 and body["tools"] is None
    assert body["stream"] is stream and body["temperature"] == 1.0 and body["top_p"] == 1.0
    assert body["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    image_part, text_part = body["messages"][1]["content"]
    assert image_part["type"] == "image_url" and image_part["image_url"]["url"].startswith(
        "data:image/jpeg;base64,"
    )
    assert text_part["type"] == "text" and text_part["text"].startswith("Provide a list in JSON format")
    if flavor == "openai":
        assert body["max_completion_tokens"] == 10000 and "max_tokens" not in body
    else:
        assert body["max_tokens"] == 10000 and "max_completion_tokens" not in body
    if flavor == "mistral":
        assert "presence_penalty" not in body and "frequency_penalty" not in body
        assert body["tool_choice"] == "none" and "stream_options" not in body
    else:
        assert body["presence_penalty"] == 0.0 and body["frequency_penalty"] == 0.0
        assert "tool_choice" not in body
        assert body.get("stream_options") == ({"include_usage": True} if stream else None)
    if flavor == "vllm":
        assert body["chat_template_kwargs"] == {"enable_thinking": False}
        assert "detail" not in image_part["image_url"]
    else:
        assert image_part["image_url"]["detail"] == "high"
        assert "chat_template_kwargs" not in body
    assert "reasoning" not in body and "reasoning_effort" not in body  # effort "none" sends nothing


@pytest.mark.parametrize(
    ("flavor", "field", "value"),
    [
        ("openai", "reasoning_effort", "high"),
        ("openrouter", "reasoning", {"effort": "high", "exclude": False}),
        ("vllm", "chat_template_kwargs", {"enable_thinking": True}),
    ],
)
def test_reasoning_field_per_flavour(sim, images, flavor, field, value):
    outcome, _, _ = one_attempt(sim, completion_params(flavor=flavor, effort="high"), images[0][1])
    assert outcome.ok
    assert body_json(chat_requests(sim)[0])[field] == value


def test_headers_carry_the_key_and_the_papers_referer(sim, images):
    seen: list[httpx.Headers] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request.headers)

    async def main():
        async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
            settings = description_settings(completion_params())
            request = build_request(prepare_image(images[0][1], settings.png_max_pixels), settings)
            async with ChatClient(
                env=sim_env("k-123456"), endpoint_urls=sim_urls(sim), http_client=http
            ) as chat:
                return await chat.attempt(settings.vlm_structured_description, request.payload)

    assert asyncio.run(main()).ok
    (headers,) = seen
    assert headers["authorization"] == "Bearer k-123456"
    assert headers["http-referer"] == "https://github.com/AIS-Bonn/nimbro_api"
    assert headers["x-title"] == "NimbRo-API"
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("flavor", ["openai", "vllm"])
def test_streaming_and_json_give_the_same_completion(sim, images, flavor):
    """Same model, image and attempt number → the simulator draws the same answer; SSE accumulation
    (comments ignored, deltas joined, usage from the final chunk) must equal the JSON body."""
    sim.set_controls("chat", model="test/model", reasoning=True, chunk_chars=7)
    plain, _, _ = one_attempt(sim, completion_params(flavor=flavor, stream=False), images[1][1])
    sim.reset_counters()
    streamed, _, _ = one_attempt(sim, completion_params(flavor=flavor, stream=True), images[1][1])
    assert plain.ok and streamed.ok
    assert streamed.completion.text == plain.completion.text
    assert streamed.completion.reasoning == plain.completion.reasoning and plain.completion.reasoning
    assert streamed.completion.finish_reason == plain.completion.finish_reason == "stop"
    assert streamed.completion.usage == plain.completion.usage and plain.completion.usage.prompt_tokens > 0
    lines = streamed.record["lines"]
    assert lines[0].startswith(":")  # the keep-alive comment was received and ignored
    assert lines[-1] == "data: [DONE]"
    if flavor == "openai":  # include_usage: usage arrives in a last chunk with empty choices
        assert json.loads(lines[-2][len("data: ") :])["choices"] == []


# ----------------------------------------------------------------------------- model-side faults


@pytest.mark.parametrize(
    ("fault", "stream", "reason", "partial_text"),
    [
        ("truncated_stream", True, "stream_incomplete", True),
        ("truncated_stream", False, "invalid_body", False),
        ("finish_length", True, "finish_reason:length", True),
        ("finish_length", False, "finish_reason:length", True),
        ("finish_content_filter", True, "finish_reason:content_filter", False),
        ("finish_content_filter", False, "finish_reason:content_filter", False),
    ],
)
def test_model_side_faults_fail_the_attempt_without_retries(sim, images, fault, stream, reason, partial_text):
    sim.set_controls("chat", model="test/model", faults={fault: 1.0})
    outcome, _, chat = one_attempt(sim, completion_params(stream=stream), images[0][1])
    assert not outcome.ok and outcome.error.reason == reason
    assert outcome.http_retries == 0 and chat.transport_retries == 0
    (record,) = settled_chat_requests(sim, 1)  # exactly one request: a failed attempt is not retried here
    assert record.fault == fault
    text = outcome.error.completion.text if outcome.error.completion else ""
    assert bool(text) is partial_text  # the raw output of the failed attempt is kept


@pytest.mark.parametrize(
    ("fault", "stream", "timeouts", "reason"),
    [
        # docs/protocol/pipeline.md §1.4: first/next chunk limits only when streaming; timeout_completion caps both modes.
        ("stall_first_chunk", True, {"first": 0.5}, "timeout_first_chunk"),
        ("stall_mid_stream", True, {"next_": 0.5}, "timeout_next_chunk"),
        ("stall_first_chunk", False, {"first": 0.1, "next_": 0.1, "total": 0.5}, "timeout_completion"),
    ],
)
def test_timeouts_fail_the_attempt(sim, images, fault, stream, timeouts, reason):
    sim.set_controls("chat", model="test/model", faults={fault: 1.0, "stall_seconds": 2.0})
    outcome, _, _ = one_attempt(sim, completion_params(stream=stream, **timeouts), images[0][1])
    assert not outcome.ok and outcome.error.reason == reason
    assert len(settled_chat_requests(sim, 1)) == 1
    if fault == "stall_mid_stream":  # about half the content chunks arrived before the stall
        assert outcome.error.completion is not None and outcome.error.completion.text


def test_keep_alive_comments_do_not_reset_the_first_chunk_timer(sim, images):
    """OpenRouter-style keep-alives while the model "thinks" (the simulator sends one at once and one
    every second of its 4 s latency): only data lines move the timers, as in the paper's client, so the
    attempt fails after timeout_chunk_first = 1.5 s although a comment arrived every second."""
    sim.set_controls("chat", model="test/model", latency_mean_s=4.0, latency_jitter_s=0.0)
    outcome, _, _ = one_attempt(sim, completion_params(stream=True, first=1.5, next_=15.0), images[0][1])
    assert not outcome.ok and outcome.error.reason == "timeout_first_chunk"
    assert outcome.record["lines"] and all(line.startswith(":") for line in outcome.record["lines"])
    assert outcome.duration_s >= 1.5 - 0.01  # the comments did not end it early either


def _sse_server(lines: list[tuple[float, str]]) -> httpx.MockTransport:
    """A stub chat server streaming ``lines`` (each after its delay in seconds) as an SSE body."""

    async def body():
        for delay, line in lines:
            await asyncio.sleep(delay)
            yield (line + "\n\n").encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    return httpx.MockTransport(handler)


def _stub_attempt(transport: httpx.MockTransport, params):
    async def main():
        async with httpx.AsyncClient(transport=transport) as http:
            async with ChatClient(env=sim_env(), http_client=http, retry=FAST) as chat:
                return await chat.attempt(params, {"model": "test/model", "stream": True, "messages": []})

    return asyncio.run(main())


def test_data_lines_that_are_not_json_are_ignored_and_do_not_reset_the_timers():
    chunk = {"choices": [{"delta": {"content": "[]"}, "finish_reason": "stop"}]}
    ok = _stub_attempt(
        _sse_server(
            [
                (0, ": OPENROUTER PROCESSING"),
                (0, "data: not json"),
                (0, "data: " + json.dumps(chunk)),
                (0, "data: [DONE]"),
            ]
        ),
        completion_params(stream=True),
    )
    assert ok.ok and ok.completion.text == "[]"  # the broken line was skipped, as the paper's reader does
    stalled = _stub_attempt(
        _sse_server([(0.2, "data: {broken")] * 10 + [(0, "data: " + json.dumps(chunk)), (0, "data: [DONE]")]),
        completion_params(stream=True, first=1.0, next_=15.0),
    )
    assert not stalled.ok and stalled.error.reason == "timeout_first_chunk"
    assert stalled.record["lines"][0] == "data: {broken"


def test_timeout_completion_caps_a_slow_but_steady_stream(sim, images):
    """Chunks keep coming (every 0.05 s, below timeout_chunk_next) but the whole stream takes longer
    than timeout_completion: the cap fires."""
    sim.set_controls("chat", model="test/model", chunk_chars=4, chunk_interval_s=0.05)
    outcome, _, _ = one_attempt(
        sim, completion_params(stream=True, first=5.0, next_=5.0, total=0.6), images[0][1]
    )
    assert not outcome.ok and outcome.error.reason == "timeout_completion"
    assert outcome.error.completion.text  # the partial text is kept


def test_a_status_the_model_is_blamed_for_is_a_failed_attempt(sim):
    """HTTP 400 (here: an image the simulator does not know) fails the attempt like the paper's
    "HTTP status must be 200" check; it is not retried at the transport level."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    outcome, _, chat = one_attempt(sim, completion_params(), buffer.getvalue())
    assert outcome.error.reason == "http_status:400" and chat.transport_retries == 0
    assert len(chat_requests(sim)) == 1


# ----------------------------------------------------------------------------- transport faults


@pytest.mark.parametrize(
    ("fault", "status"),
    [("rate_limit", 429), ("server_error", 500), ("unavailable", 503), ("connection_drop", None)],
)
@pytest.mark.parametrize("stream", [False, True])
def test_transport_faults_are_retried_and_not_attempts(sim, images, fault, status, stream):
    waits: list[float] = []
    sim.set_controls("chat", model="test/model", faults={fault: 1.0, "retry_after_s": 0})
    outcome, _, chat = one_attempt(
        sim, completion_params(stream=stream), images[0][1], sleep=clearing_sleep(sim, "test/model", waits)
    )
    assert outcome.ok and outcome.http_retries == 1 and chat.transport_retries == 1 and len(waits) == 1
    first, second = settled_chat_requests(sim, 2)
    assert (first.fault, first.status) == (fault, status)
    assert (second.fault, second.status) == (None, 200)


def test_transport_retries_are_bounded(sim, images):
    sim.set_controls("chat", model="test/model", faults={"server_error": 1.0})
    with pytest.raises(TransportRetriesExhausted) as info:
        one_attempt(sim, completion_params(), images[0][1])
    assert info.value.tries == 3 and info.value.status == 500  # 1 + FAST.max_retries
    assert len(chat_requests(sim)) == 3


def test_retry_after_is_honoured(sim, images):
    waits: list[float] = []
    sim.set_controls("chat", model="test/model", faults={"rate_limit": 1.0, "retry_after_s": 1})
    outcome, _, _ = one_attempt(
        sim,
        completion_params(),
        images[0][1],
        sleep=clearing_sleep(sim, "test/model", waits),
        retry=RetryPolicy(max_retries=3, backoff_base_s=0.001, backoff_max_s=0.001),
    )
    assert outcome.ok
    assert waits[0] >= 1.0  # Retry-After: 1, while the jittered backoff alone would be ≤ 0.001 s
    first, second = settled_chat_requests(sim, 2)
    assert second.time - first.time >= 1.0  # lower bound only: the retry did not start earlier


# ----------------------------------------------------------------------------- auth and configuration


def test_401_stops_at_once_with_a_clear_error(sim_datasets, images):
    canary = "canary-key-7d1f0c9e"
    with run_simulator(sim_datasets, ports=EPHEMERAL, servers=["chat"], chat_api_key="the-right-key") as sim:
        with pytest.raises(AuthenticationError) as info:
            one_attempt(sim, completion_params(), images[0][1], env=sim_env(canary))
        assert len(chat_requests(sim)) == 1  # zero retries
    assert info.value.status == 401 and KEY_ENV in str(info.value)
    assert canary not in str(info.value) and canary not in repr(info.value)


def test_missing_key_variable_is_a_configuration_error(sim, images):
    with pytest.raises(ConfigurationError, match=KEY_ENV):
        one_attempt(sim, completion_params(), images[0][1], env={})
    assert len(sim.request_log) == 0


def test_endpoint_resolution_errors():
    with pytest.raises(ConfigurationError, match="unknown endpoint name"):
        resolve("No Such Provider", env={})
    with pytest.raises(ConfigurationError, match="environment variable"):
        resolve(
            {
                "name": "x",
                "api_flavor": "vllm",
                "completions_url": "http://h/v1/chat/completions",
                "key_type": "plain",
                "key_value": "secret",
            },
            env={},
        )
    with pytest.raises(ConfigurationError, match="without a path"):
        resolve("vLLM", endpoint_urls={"vLLM": "http://gpu:8000/v1"}, env={"VLLM_API_KEY": "k"})


def test_papers_named_endpoints_and_their_key_variables():
    env = {
        "OPENAI_API_KEY": "a",
        "OPENROUTER_API_KEY": "b",
        "MISTRAL_API_KEY": "c",
        "VLLM_API_KEY": "d",
        "AIS_API_KEY": "e",
    }
    got = {name: resolve(name, env=env) for name in ("OpenAI", "OpenRouter", "Mistral AI", "vLLM", "AIS")}
    assert {n: r.completions_url for n, r in got.items()} == {
        "OpenAI": "https://api.openai.com/v1/chat/completions",
        "OpenRouter": "https://openrouter.ai/api/v1/chat/completions",
        "Mistral AI": "https://api.mistral.ai/v1/chat/completions",
        "vLLM": "http://localhost:8000/v1/chat/completions",
        "AIS": "https://api-code.ais.uni-bonn.de/v1/chat/completions",
    }
    assert {n: r.api_key for n, r in got.items()} == {
        "OpenAI": "a",
        "OpenRouter": "b",
        "Mistral AI": "c",
        "vLLM": "d",
        "AIS": "e",
    }
    assert "api_key" not in repr(got["OpenAI"])


def test_url_override_from_the_environment_and_the_explicit_option_wins(sim, images):
    variable = endpoint_env_var(ENDPOINT_NAME)
    assert variable == "VLM_GIST_ENDPOINT_URL_VLM_GIST_SIMULATOR"
    env = {**sim_env(), variable: sim.chat_base_url}
    outcome, _, _ = one_attempt(sim, completion_params(), images[0][1], env=env, endpoint_urls={})
    assert outcome.ok and len(chat_requests(sim)) == 1
    dead = {**sim_env(), variable: "http://127.0.0.1:9"}  # nothing listens there
    outcome, _, _ = one_attempt(sim, completion_params(), images[0][1], env=dead, endpoint_urls=sim_urls(sim))
    assert outcome.ok and len(chat_requests(sim)) == 2


# ----------------------------------------------------------------------------- small pure parts


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    # 2015-10-21 07:28:00 UTC is 1445412480 s after the epoch; 30 s before it → 30 s to wait.
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412450.0) == 30.0


def test_backoff_is_full_jitter_and_at_least_retry_after():
    policy = RetryPolicy(backoff_base_s=0.5, backoff_max_s=4.0, retry_after_max_s=60.0)
    top = lambda a, b: b  # noqa: E731 - the jitter's upper end
    assert [policy.delay(k, None, top) for k in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]  # 0.5·2^k, capped at 4
    assert policy.delay(0, None, lambda a, b: a) == 0.0
    assert policy.delay(0, 7.0, top) == 7.0 and policy.delay(3, 1.0, top) == 4.0  # max(Retry-After, jitter)
    assert policy.delay(0, 3600.0, top) == 60.0  # capped


def test_redaction():
    register_secret("plain-secret-value")
    message = "key plain-secret-value, header 'Authorization: Bearer abc.def', stray sk-proj-ABCDEFGHIJ123"
    assert redact(message) == "key ***, header 'Authorization: Bearer ***', stray ***"
