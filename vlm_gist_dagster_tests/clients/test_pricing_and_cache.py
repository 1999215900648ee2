"""The price table (cost per request, unknown → None, overrides) and the response cache's key, modes and
atomic files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlm_gist_dagster.clients.cache import (
    SIMULATOR,
    CacheKey,
    CacheMode,
    ResponseCache,
    Subject,
    decode_vector,
    encode_vector,
    sha256_json,
)
from vlm_gist_dagster.clients.errors import ConfigurationError
from vlm_gist_dagster.clients.pricing import ModelPrice, PriceTable, load_price_table
from vlm_gist_dagster.protocol.completions import TokenUsage

from .conftest import REPO


def test_cost_splits_cached_and_uncached_input():
    table = PriceTable({"m": ModelPrice(input=1.25, cached_input=0.125, output=10.0)})
    cost = table.cost("m", TokenUsage(prompt_tokens=2000, cached_prompt_tokens=1500, completion_tokens=300))
    # input: (2000 − 1500) · 1.25 + 1500 · 0.125 = 625 + 187.5 = 812.5 per 1e6 → 0.0008125 USD
    # output: 300 · 10 = 3000 per 1e6 → 0.003 USD
    assert (cost.input_usd, cost.output_usd) == (0.0008125, 0.003)
    assert cost.total_usd == pytest.approx(0.0038125, abs=1e-15)


def test_unknown_model_or_missing_usage_costs_none_not_zero():
    table = PriceTable({"m": ModelPrice(input=1.0, output=2.0)})
    assert table.cost("other", TokenUsage(prompt_tokens=10, completion_tokens=10)) is None
    assert table.cost("m", None) is None
    # No cached_input price: cached tokens cost the input price. 10 · 1 + 5 · 2 = 20 per 1e6.
    cost = table.cost("m", TokenUsage(prompt_tokens=10, cached_prompt_tokens=4, completion_tokens=5))
    assert cost.total_usd == pytest.approx(20e-6, abs=1e-18)


def test_shipped_table_and_override_file(tmp_path):
    shipped = load_price_table(env={})
    assert shipped.get("gpt-5-2025-08-07") == ModelPrice(input=1.25, output=10.0, cached_input=0.125)
    assert "sim/strong" in shipped and "sim/medium" in shipped and "sim/weak" in shipped
    override = tmp_path / "prices.json"
    override.write_text(
        json.dumps(
            {
                "models": {
                    "gpt-5-2025-08-07": {"input": 9.0, "output": 9.0},
                    "new/model": {"input": 1, "output": 1},
                }
            }
        )
    )
    merged = load_price_table(env={"VLM_GIST_PRICES": str(override)})
    assert merged.get("gpt-5-2025-08-07") == ModelPrice(input=9.0, output=9.0)
    assert merged.get("new/model") == ModelPrice(input=1.0, output=1.0)
    assert merged.get("sim/strong") == shipped.get("sim/strong")
    override.write_text(json.dumps({"models": {"x": {"input": -1, "output": 1}}}))
    with pytest.raises(ConfigurationError, match=r"models\.x\.input"):
        load_price_table(override, env={})
    assert json.loads((REPO / "settings" / "prices.json").read_text())["models"]  # valid JSON as shipped


def test_cache_key_material_and_modes(tmp_path):
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    url = "https://api.openai.com/v1/chat/completions"
    key = CacheKey.for_request("chat", url, "m", payload, subject=Subject.image("ab"), attempt=2)
    # Keyed by who answers (the origin) and the route, not by the full URL or the endpoint's name.
    assert (key.service, key.route) == ("https://api.openai.com", "/v1/chat/completions")
    assert key.material()["subject"] == "image:ab"
    # The payload is hashed canonically: key order does not matter.
    assert key.payload_sha256 == sha256_json({"messages": payload["messages"], "model": "m"})
    assert key != CacheKey.for_request("chat", url, "m", payload, subject=Subject.image("ab"), attempt=3)
    # The same request answered by the simulator is another entry.
    simulated = CacheKey.for_request(
        "chat", url, "m", payload, service=SIMULATOR, subject=Subject.image("ab"), attempt=2
    )
    assert simulated.service == "simulator" and simulated.digest != key.digest
    # Two subjects with one payload (e.g. two detections with identical crops) keep their own entries.
    assert (
        key.digest
        != CacheKey.for_request("chat", url, "m", payload, subject=Subject.definition("ab"), attempt=2).digest
    )

    ResponseCache(tmp_path).put(key, {"kind": "json", "status": 200, "body_text": "{}"})
    assert ResponseCache(tmp_path).get(key)["kind"] == "json"
    assert ResponseCache(tmp_path).get(simulated) is None
    assert ResponseCache(tmp_path, mode="refresh").get(key) is None  # refresh: no reads …
    refreshed = ResponseCache(tmp_path, mode=CacheMode.REFRESH)
    refreshed.put(key, {"kind": "json", "status": 200, "body_text": "[]"})  # … but writes
    assert ResponseCache(tmp_path).get(key)["body_text"] == "[]"
    bypass = ResponseCache(tmp_path, mode=CacheMode.BYPASS)
    bypass.put(key, {"kind": "json", "status": 200, "body_text": "null"})  # bypass: neither
    assert bypass.get(key) is None and ResponseCache(tmp_path).get(key)["body_text"] == "[]"
    with pytest.raises(ValueError, match="use"):
        ResponseCache(tmp_path, mode="sometimes")

    path = ResponseCache(tmp_path).path_for(key)
    path.write_text("{ torn")  # an unreadable file is a miss, not a crash
    assert ResponseCache(tmp_path).get(key) is None


def test_vectors_round_trip_exactly():
    vector = np.random.default_rng(0).normal(size=3072)
    answer = json.loads(json.dumps(encode_vector(vector)))  # through the cache file's JSON
    np.testing.assert_array_equal(decode_vector(answer), vector)
    assert decode_vector({"kind": "json"}) is None
    assert decode_vector({**answer, "dim": 7}) is None  # a torn or foreign entry is a miss
