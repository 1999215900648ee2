"""Each fault type appears on the wire at its configured rate, reproducibly per seed.

Rates are checked with a binomial tolerance: for n requests at rate p the count has mean n·p and
standard deviation sqrt(n·p·(1−p)); we accept mean ± 4 sd. The counts are deterministic per seed, so
the tolerance only guards against a wrong rate, never against chance between runs. Each of the n
requests is a different request (its own text): an identical request after a usable answer is attempt 0
again and gets the same draw (sim/faults.py), so n copies of one request would test nothing.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from vlm_gist_dagster.sim import FaultControls, ModelControls

from .conftest import AUTH

MODEL = "sim/faulty"
N = 200
RATE = 0.3
# n = 200, p = 0.3: mean 60, sd = sqrt(200 · 0.3 · 0.7) = sqrt(42) ≈ 6.48 → [60 − 25.9, 60 + 25.9]
LOW, HIGH = 35, 85


def _chat_body(stream: bool, number: int = 0) -> dict:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": f"Say something about chair {number}."}]}
        ],
        "stream": stream,
        "response_format": {"type": "json_object"},
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def classify_non_streaming(client: httpx.Client, url: str, number: int = 0) -> str:
    """What a client observes for one non-streaming chat request."""
    try:
        r = client.post(url, json=_chat_body(False, number))
    except httpx.TransportError:
        return "connection_drop"
    if r.status_code == 429:
        assert r.headers["retry-after"] == "2"
        return "rate_limit"
    if r.status_code in (500, 503):
        assert "error" in r.json()
        return {500: "server_error", 503: "unavailable"}[r.status_code]
    assert r.status_code == 200
    try:
        body = r.json()
    except json.JSONDecodeError:
        return "truncated_stream"
    choice = body["choices"][0]
    if choice["finish_reason"] == "length":
        return "finish_length"
    if choice["finish_reason"] == "content_filter":
        assert choice["message"]["content"] == ""
        return "finish_content_filter"
    assert choice["finish_reason"] == "stop"
    content = choice["message"]["content"]
    if "{" not in content and "[" not in content:
        return "invalid_json"
    json.loads(content)
    return "ok"


NON_STREAMING_FAULTS = [
    "rate_limit",
    "server_error",
    "unavailable",
    "connection_drop",
    "truncated_stream",
    "invalid_json",
    "finish_length",
    "finish_content_filter",
]


def _set_fault(simulator, fault: str, rate: float, seed: int = 0, **extra) -> None:
    simulator.set_controls("chat", seed=seed)
    faults = {
        name: 0.0 for name in FaultControls.model_fields if name not in ("retry_after_s", "stall_seconds")
    }
    faults.update({fault: rate, "retry_after_s": 2, **extra})
    simulator.set_controls("chat", model=MODEL, latency_mean_s=0.0, faults=faults)


@pytest.mark.parametrize("fault", NON_STREAMING_FAULTS)
def test_fault_rate_non_streaming(simulator, fault):
    _set_fault(simulator, fault, RATE)
    before = len(simulator.request_log)
    with httpx.Client(headers=AUTH, timeout=10.0) as client:
        outcomes = [classify_non_streaming(client, simulator.chat_completions_url, i) for i in range(N)]
    assert set(outcomes) <= {"ok", fault}
    count = outcomes.count(fault)
    assert LOW <= count <= HIGH, count
    # every request is logged, with the fault it carried (a dropped connection has no status)
    records = simulator.request_log.snapshot()[before:]
    assert len(records) == N
    assert sum(r.fault == fault for r in records) == count
    if fault == "connection_drop":
        assert all(r.status is None for r in records if r.fault == fault)


def test_faults_are_reproducible_per_seed_and_retries_can_succeed(simulator):
    def run(seed: int) -> list[str]:
        _set_fault(simulator, "server_error", RATE, seed=seed)
        with httpx.Client(headers=AUTH) as client:
            return [classify_non_streaming(client, simulator.chat_completions_url, i) for i in range(60)]

    first, second, other = run(3), run(3), run(4)
    assert first == second
    assert first != other
    # The same request repeated after a fault is the next attempt, with a fresh draw: every request
    # succeeds eventually (P(5 faults in a row) = 0.3**5), and the log numbers its attempts 0, 1, ...
    failed = [i for i, outcome in enumerate(first) if outcome == "server_error"]
    assert failed
    _set_fault(simulator, "server_error", RATE, seed=3)
    with httpx.Client(headers=AUTH) as client:
        for number in failed[:5]:
            before = len(simulator.request_log)
            outcomes = []
            while not outcomes or outcomes[-1] != "ok":
                outcomes.append(classify_non_streaming(client, simulator.chat_completions_url, number))
            assert outcomes[0] == "server_error" and 2 <= len(outcomes) <= 6
            attempts = [r.attempt for r in simulator.request_log.snapshot()[before:]]
            assert attempts == list(range(len(outcomes)))
            # after the usable answer the run of attempts is over: the next identical request is attempt 0
            assert classify_non_streaming(client, simulator.chat_completions_url, number) == "server_error"


def test_streaming_truncation_and_finish_reasons(simulator):
    for fault in ("truncated_stream", "finish_length", "finish_content_filter"):
        _set_fault(simulator, fault, 1.0)
        with (
            httpx.Client(headers=AUTH, timeout=10.0) as client,
            client.stream("POST", simulator.chat_completions_url, json=_chat_body(True)) as r,
        ):
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        if fault == "truncated_stream":
            assert lines and "data: [DONE]" not in lines
            assert all(json.loads(line[6:])["choices"][0]["finish_reason"] is None for line in lines)
        else:
            assert lines[-1] == "data: [DONE]"
            reasons = [
                json.loads(x[6:])["choices"][0]["finish_reason"]
                for x in lines[:-1]
                if json.loads(x[6:])["choices"]
            ]
            assert (
                reasons[-1] == {"finish_length": "length", "finish_content_filter": "content_filter"}[fault]
            )


@pytest.mark.parametrize("fault", ["stall_first_chunk", "stall_mid_stream"])
def test_stall_rate_streaming(simulator, fault):
    """Stalls of 12 s against a client read timeout of 3 s (wide margins both ways, so a loaded
    machine cannot blur the two), 60 concurrent requests at rate 0.3 → mean 18,
    sd sqrt(60 · 0.3 · 0.7) ≈ 3.55, accept [4, 32]. Each request is a different one (attempt 0 with its
    own draw), so concurrency cannot change the count."""
    _set_fault(simulator, fault, RATE, stall_seconds=12.0)
    timeout = httpx.Timeout(30.0, read=3.0)

    async def one(client: httpx.AsyncClient, semaphore: asyncio.Semaphore, number: int) -> str:
        saw_data = done = False
        async with semaphore:
            try:
                async with client.stream(
                    "POST", simulator.chat_completions_url, json=_chat_body(True, number)
                ) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        saw_data = saw_data or line.startswith("data: ")
                        done = done or line == "data: [DONE]"
            except httpx.ReadTimeout:
                return "stall_mid_stream" if saw_data else "stall_first_chunk"
        return "ok" if done else "truncated_stream"

    async def run() -> list[str]:
        semaphore = asyncio.Semaphore(30)
        async with httpx.AsyncClient(headers=AUTH, timeout=timeout) as client:
            return await asyncio.gather(*(one(client, semaphore, i) for i in range(60)))

    outcomes = asyncio.run(run())
    assert set(outcomes) <= {"ok", fault}
    assert 4 <= outcomes.count(fault) <= 32


def test_latency_controls_delay_without_failing(simulator):
    """A latency far below the timeout only delays; the stream still ends with [DONE] (keep-alive
    comments are sent while waiting)."""
    _set_fault(simulator, "rate_limit", 0.0)
    simulator.set_controls("chat", model=MODEL, latency_mean_s=1.2, latency_jitter_s=0.0)
    with (
        httpx.Client(headers=AUTH, timeout=10.0) as client,
        client.stream("POST", simulator.chat_completions_url, json=_chat_body(True)) as r,
    ):
        lines = list(r.iter_lines())
    assert lines.count(": keep-alive") >= 2  # one at once, one after the first second of waiting
    assert [line for line in lines if line][-1] == "data: [DONE]"


@pytest.mark.parametrize("fault", ["rate_limit", "unavailable", "connection_drop", "truncated_stream"])
def test_vision_fault_rate(simulator, coco_dataset, fault):
    """The GDINO server injects the HTTP-level faults too (n = 100, p = 0.3: mean 30,
    sd sqrt(21) ≈ 4.58, accept [12, 48])."""
    from .conftest import b64_file, image_path

    url = simulator.vision_urls["mmgroundingdino"]
    faults = {
        name: 0.0 for name in FaultControls.model_fields if name not in ("retry_after_s", "stall_seconds")
    }
    faults.update({fault: RATE, "retry_after_s": 1})
    simulator.set_controls("mmgroundingdino", model="large", faults=faults)
    image = b64_file(image_path(coco_dataset, "000000037777"))

    def body(number: int) -> dict:  # a different request each time (see the module docstring)
        return {"images": [image], "inference_parameters": [{"prompts": [f"a chair {number}"], "min_confidence": 0.0,
                                                             "nms_iou": None, "overdetect_factor": 1.0}]}  # fmt: skip

    async def run() -> list[str]:
        async with httpx.AsyncClient(headers=AUTH, timeout=10.0) as client:
            await client.post(url + "/load", json={"flavor": "large"})
            semaphore = asyncio.Semaphore(8)

            async def one(number: int) -> str:
                async with semaphore:
                    try:
                        r = await client.post(url + "/infer", json=body(number))
                    except httpx.TransportError:
                        return "connection_drop"
                if r.status_code == 429:
                    assert r.headers["retry-after"] == "1" and "detail" in r.json()
                    return "rate_limit"
                if r.status_code == 503:
                    return "unavailable"
                try:
                    r.json()
                except json.JSONDecodeError:
                    return "truncated_stream"
                return "ok"

            return await asyncio.gather(*(one(i) for i in range(100)))

    outcomes = asyncio.run(run())
    assert set(outcomes) <= {"ok", fault}
    assert 12 <= outcomes.count(fault) <= 48
    simulator.set_controls("mmgroundingdino", model="large", faults={fault: 0.0})


def test_controls_validation():
    with pytest.raises(ValueError, match="sum to"):
        FaultControls(rate_limit=0.6, server_error=0.6)
    with pytest.raises(ValueError):
        ModelControls(recall=1.5)
